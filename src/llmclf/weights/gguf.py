"""Load a llama.cpp GGUF file (Llama architecture, e.g. SmolLM2) as our `LlamaModel` plus its tokenizer.

Every tensor is dequantized to float32 and renamed to its Hugging Face name, so GGUF and safetensors
checkpoints go through the same `llama_state_from_hf` mapping and the same strict loading check.
The tokenizer is rebuilt from the file's metadata (a GGUF carries no tokenizer.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import LlmclfError
from ..models.llama import LlamaConfig, LlamaModel

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# GGUF tensor name -> Hugging Face Llama name ("blk.N.<key>.weight" for the per-layer ones).
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}

# llama.cpp pre-tokenizer types whose regex splits every digit off on its own before the GPT-2 regex
# (llama-vocab.cpp: "\p{N}" then the GPT-2 pattern); SmolLM2's tokenizer.json does the same with `Digits`.
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"}
_GPT2_PRE = {"default", "gpt-2", "gpt2", "mpt", "olmo", "jais"}

CONTROL, USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values
_REQUIRED = object()


def _why(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {msg[:120]}" if msg else type(e).__name__


class _Gguf:
    """A parsed GGUF file: metadata lookups that fail with a one-line LlmclfError."""

    def __init__(self, path):
        import gguf

        self.path = Path(path)
        if not self.path.is_file():
            raise LlmclfError(f"{self.path}: no such GGUF file")
        try:
            self.reader = gguf.GGUFReader(self.path)  # parses header, metadata and tensor table (data is memory-mapped)
        except Exception as e:  # truncated or not GGUF at all: the reader raises ValueError and friends
            raise LlmclfError(f"{self.path}: not a readable GGUF file ({_why(e)})") from None

    def get(self, key: str, default=_REQUIRED):
        field = self.reader.fields.get(key)
        if field is None:
            if default is _REQUIRED:
                raise LlmclfError(f"{self.path}: GGUF metadata has no {key!r}")
            return default
        try:
            return field.contents()
        except Exception as e:
            raise LlmclfError(f"{self.path}: unreadable GGUF metadata {key!r} ({_why(e)})") from None


def _f32(x) -> float:
    """A float32 metadata value as the decimal it was written from (9.99999975e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


def _config(g: _Gguf, vocab_size: int, tensor_names: set[str]) -> LlamaConfig:
    arch = g.get("general.architecture")
    if arch != "llama":
        raise LlmclfError(f"{g.path}: GGUF architecture {arch!r} is not supported (only 'llama', e.g. SmolLM2)")
    scaling = g.get("llama.rope.scaling.type", "none")
    if scaling not in ("none", "") or "rope_freqs.weight" in tensor_names:
        raise LlmclfError(f"{g.path}: RoPE scaling ({scaling}) is not supported")
    n_heads = int(g.get("llama.attention.head_count"))
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        context_length=int(g.get("llama.context_length")),
        emb_dim=int(g.get("llama.embedding_length")),
        n_heads=n_heads,
        n_kv_groups=int(g.get("llama.attention.head_count_kv", n_heads)),
        hidden_dim=int(g.get("llama.feed_forward_length")),
        n_layers=int(g.get("llama.block_count")),
        rope_base=_f32(g.get("llama.rope.freq_base", 10000.0)),
        norm_eps=_f32(g.get("llama.attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in tensor_names,
    )
    head_dim = cfg.emb_dim // cfg.n_heads
    if int(g.get("llama.rope.dimension_count", head_dim)) != head_dim:
        raise LlmclfError(f"{g.path}: partial rotary embeddings are not supported")
    return cfg


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of q/k rows.

    convert_hf_to_gguf.py turns each head's rows from HF's "rotate half" order (first half, second half)
    into interleaved pairs for GGML's RoPE: w.reshape(n_head, 2, hd // 2, dim).swapaxes(1, 2).
    Reading the rows back as (n_head, hd // 2, 2, dim) and swapping the same axes restores HF's order.
    """
    rows, dim = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, dim).transpose(1, 2).reshape(rows, dim)


def _hf_name(name: str) -> str | None:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".")  # blk.N.attn_q.weight
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES \
            and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.weight"
    return None


def _hf_tensors(g: _Gguf, cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to float32 in torch's (out, in) layout, under its Hugging Face name."""
    from gguf.quants import dequantize

    out = {}
    for t in g.reader.tensors:
        name = _hf_name(t.name)
        if name is None:
            raise LlmclfError(f"{g.path}: unexpected tensor {t.name!r} for a Llama model")
        try:
            # GGUF lists dimensions fastest-first (ne0 = input features), the reverse of torch's order.
            arr = dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        except Exception as e:
            raise LlmclfError(f"{g.path}: cannot dequantize {t.name} ({t.tensor_type.name}; {_why(e)})") from None
        w = torch.from_numpy(np.array(arr, dtype=np.float32))  # a copy: the reader's arrays are read-only mmaps
        if t.name.endswith(".attn_q.weight"):
            w = _unpermute(w, cfg.n_heads)
        elif t.name.endswith(".attn_k.weight"):
            w = _unpermute(w, cfg.n_kv_groups)
        out[name] = w
    return out


def _tokenizer(g: _Gguf) -> tuple[Tokenizer, dict]:
    """(tokenizers.Tokenizer, special ids) from the tokenizer.ggml.* metadata; encodes without adding BOS."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = g.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise LlmclfError(f"{g.path}: tokenizer type {kind!r} is not supported (only byte-level BPE, 'gpt2')")
    pre = g.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRE:
        pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in _GPT2_PRE:
        pre_tokenizer = byte_level
    else:
        raise LlmclfError(f"{g.path}: pre-tokenizer {pre!r} is not supported")

    tokens = list(g.get("tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in g.get("tokenizer.ggml.merges")]
    types = list(g.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    # Tokens are stored in GPT-2's byte-to-unicode spelling ("Ġthe"), which is what BPE's vocabulary expects.
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, <|endoftext|>, ...) stay whole and are special; user-defined ones stay whole.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == USER_DEFINED])

    def token_id(key):
        v = g.get(f"tokenizer.ggml.{key}", None)
        return None if v is None else int(v)

    eos = token_id("eos_token_id")
    pad = token_id("padding_token_id")
    special = {"eos_id": eos, "pad_id": pad if pad is not None else eos, "bos_id": token_id("bos_token_id")}
    return tok, special


def load_gguf_tokenizer(path) -> tuple[Tokenizer, dict]:
    """(tokenizers.Tokenizer, {"eos_id", "pad_id", "bos_id"}) of a GGUF file, without loading its weights."""
    return _tokenizer(_Gguf(path))


def load_gguf(path) -> tuple[LlamaModel, LlamaConfig, Tokenizer, dict]:
    """(model in float32, config, tokenizers.Tokenizer, {"eos_id", "pad_id", "bos_id"}) from a GGUF file."""
    from .hf import Checkpoint, llama_state_from_hf, model_from_state

    g = _Gguf(path)
    tokenizer, special = _tokenizer(g)
    names = {t.name for t in g.reader.tensors}
    cfg = _config(g, len(g.reader.fields["tokenizer.ggml.tokens"].data), names)  # .data: one entry per token
    try:
        state = llama_state_from_hf(Checkpoint(_hf_tensors(g, cfg)), cfg)  # _hf_tensors refuses unknown names
    except KeyError as e:
        raise LlmclfError(f"{g.path}: GGUF file lacks a tensor ({e.args[0]} in Hugging Face naming)") from None
    model = model_from_state(cfg, state, str(g.path))
    return model, cfg, tokenizer, special


__all__ = ["load_gguf", "load_gguf_tokenizer"]
