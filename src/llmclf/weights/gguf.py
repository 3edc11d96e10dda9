"""Load a llama.cpp GGUF file as our model plus its tokenizer: architecture `llama` (e.g. SmolLM2) as
`LlamaModel`, `gemma3` (Gemma 3 270M) as `Gemma3Model`.

Every tensor is dequantized to float32 and renamed to its Hugging Face name, so GGUF and safetensors
checkpoints go through the same `*_state_from_hf` mapping and the same strict loading check.
The tokenizer is rebuilt from the file's metadata (a GGUF carries no tokenizer.json): byte-level BPE
(`gpt2`) with its merges, or Gemma's SentencePiece vocabulary (`llama`), whose merges are recovered from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import LlmclfError
from ..models.gemma3 import Gemma3Config
from ..models.llama import LlamaConfig, LlamaModel

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# GGUF tensor name -> Hugging Face Llama name ("blk.N.<key>.weight" for the per-layer ones).
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_COMMON_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
}
_LAYER_NAMES = {
    "llama": {**_COMMON_LAYER_NAMES, "ffn_norm": "post_attention_layernorm"},
    "gemma3": {**_COMMON_LAYER_NAMES, "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
               "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
               "post_ffw_norm": "post_feedforward_layernorm"},
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


def _config(g: _Gguf, vocab_size: int, tensor_names: set[str]) -> LlamaConfig | Gemma3Config:
    arch = g.get("general.architecture")
    if arch not in _LAYER_NAMES:
        raise LlmclfError(f"{g.path}: GGUF architecture {arch!r} is not supported (only 'llama', e.g. SmolLM2, "
                          "and 'gemma3')")
    scaling = g.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "") or "rope_freqs.weight" in tensor_names:
        raise LlmclfError(f"{g.path}: RoPE scaling ({scaling}) is not supported")
    return (_llama_config if arch == "llama" else _gemma3_config)(g, vocab_size, tensor_names)


def _llama_config(g: _Gguf, vocab_size: int, tensor_names: set[str]) -> LlamaConfig:
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


def _gemma3_config(g: _Gguf, vocab_size: int, tensor_names: set[str]) -> Gemma3Config:
    """What llama.cpp reads from a gemma3 GGUF, plus what it hard-codes for the architecture: local layers'
    RoPE base 10,000, every 6th layer global, and the query scale 1/sqrt(head_dim) (27B, 62 blocks, alone
    scales by 1/sqrt(emb_dim / n_heads))."""
    n_heads, n_layers = int(g.get("gemma3.attention.head_count")), int(g.get("gemma3.block_count"))
    emb_dim, head_dim = int(g.get("gemma3.embedding_length")), int(g.get("gemma3.attention.key_length", 256))
    if int(g.get("gemma3.attention.value_length", head_dim)) != head_dim:
        raise LlmclfError(f"{g.path}: key and value heads of different sizes are not supported")
    return Gemma3Config(
        vocab_size=vocab_size, context_length=int(g.get("gemma3.context_length")), emb_dim=emb_dim,
        n_heads=n_heads, n_kv_groups=int(g.get("gemma3.attention.head_count_kv", n_heads)), head_dim=head_dim,
        hidden_dim=int(g.get("gemma3.feed_forward_length")), n_layers=n_layers,
        rope_base=_f32(g.get("gemma3.rope.freq_base", 1e6)), rope_local_base=10_000.0,
        sliding_window=int(g.get("gemma3.attention.sliding_window")), sliding_pattern=6,
        query_pre_attn_scalar=float(emb_dim // n_heads if n_layers == 62 else head_dim),
        norm_eps=_f32(g.get("gemma3.attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in tensor_names)


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of q/k rows.

    convert_hf_to_gguf.py turns each head's rows from HF's "rotate half" order (first half, second half)
    into interleaved pairs for GGML's RoPE: w.reshape(n_head, 2, hd // 2, dim).swapaxes(1, 2).
    Reading the rows back as (n_head, hd // 2, 2, dim) and swapping the same axes restores HF's order.
    """
    rows, dim = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, dim).transpose(1, 2).reshape(rows, dim)


def _hf_name(name: str, arch: str) -> str | None:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts, layer_names = name.split("."), _LAYER_NAMES[arch]  # blk.N.attn_q.weight
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in layer_names \
            and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{layer_names[parts[2]]}.weight"
    return None


def _hf_tensors(g: _Gguf, cfg: LlamaConfig | Gemma3Config) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to float32 in torch's (out, in) layout, under its Hugging Face name."""
    from gguf.quants import dequantize

    out = {}
    for t in g.reader.tensors:
        name = _hf_name(t.name, cfg.arch)
        if name is None:
            raise LlmclfError(f"{g.path}: unexpected tensor {t.name!r} for a {cfg.arch} model")
        try:
            # GGUF lists dimensions fastest-first (ne0 = input features), the reverse of torch's order.
            arr = dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        except Exception as e:
            raise LlmclfError(f"{g.path}: cannot dequantize {t.name} ({t.tensor_type.name}; {_why(e)})") from None
        w = torch.from_numpy(np.array(arr, dtype=np.float32))  # a copy: the reader's arrays are read-only mmaps
        if cfg.arch == "gemma3" and t.name.endswith("norm.weight"):
            w = w - 1  # llama.cpp stores Gemma's (1 + weight) so that GGML's plain RMSNorm applies it
        elif cfg.arch == "llama" and t.name.endswith(".attn_q.weight"):  # Gemma's q/k rows keep HF's order
            w = _unpermute(w, cfg.n_heads)
        elif cfg.arch == "llama" and t.name.endswith(".attn_k.weight"):
            w = _unpermute(w, cfg.n_kv_groups)
        out[name] = w
    return out


def _tokenizer(g: _Gguf) -> tuple[Tokenizer, dict]:
    """(tokenizers.Tokenizer, special ids) from the tokenizer.ggml.* metadata. The Tokenizer adds no BOS;
    `add_bos` says whether the model expects one (Gemma: yes; SmolLM2: no), which `HFTokenizer` then adds."""
    from tokenizers import AddedToken

    kind = g.get("tokenizer.ggml.model")
    tokens = list(g.get("tokenizer.ggml.tokens"))
    types = list(g.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    if kind == "gpt2":
        tok = _byte_level_bpe(g, tokens)
    elif kind == "llama" and g.get("general.architecture") == "gemma3":
        tok = _gemma_sentencepiece(g, tokens)
    else:
        raise LlmclfError(f"{g.path}: tokenizer type {kind!r} is not supported (byte-level BPE, 'gpt2', and "
                          "Gemma's SentencePiece, 'llama' in a gemma3 file)")
    # Control tokens (<|im_start|>, <bos>, ...) stay whole and are special; user-defined ones stay whole.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == CONTROL])
    vocab = tok.get_vocab()  # Gemma's tokens of spaces are respelled in it: their raw spelling is no token
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == USER_DEFINED and t in vocab])

    def token_id(key):
        v = g.get(f"tokenizer.ggml.{key}", None)
        return None if v is None else int(v)

    eos, pad, bos = token_id("eos_token_id"), token_id("padding_token_id"), token_id("bos_token_id")
    add_bos = bool(g.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    return tok, {"eos_id": eos, "pad_id": pad if pad is not None else eos, "bos_id": bos, "add_bos": add_bos}


def _byte_level_bpe(g: _Gguf, tokens: list[str]) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    pre = g.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRE:
        pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in _GPT2_PRE:
        pre_tokenizer = byte_level
    else:
        raise LlmclfError(f"{g.path}: pre-tokenizer {pre!r} is not supported")
    merges = [tuple(m.split(" ", 1)) for m in g.get("tokenizer.ggml.merges")]
    # Tokens are stored in GPT-2's byte-to-unicode spelling ("Ġthe"), which is what BPE's vocabulary expects.
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    return tok


def _gemma_sentencepiece(g: _Gguf, tokens: list[str]) -> Tokenizer:
    """Gemma's SentencePiece BPE: spaces become "▁" (no prefix space is added), no pre-tokenizer splits the
    text, bytes outside the vocabulary fall back to <0xNN> tokens. The file lists no merges: `_merges_from_vocab`
    recovers them."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    # A token of two or more spaces is stored with real spaces; the normalizer's text spells them "▁".
    tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(tokens)}
    unk = tokens[int(g.get("tokenizer.ggml.unknown_token_id", 3))]
    tok = Tokenizer(models.BPE(vocab, _merges_from_vocab(tokens, vocab), unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


def _merges_from_vocab(tokens: list[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every way to write a token as two tokens, ranked by the token's id: Gemma's ids follow the order its
    merges were learned in (its scores do not). Within a token, the longer left piece first (transformers'
    order, which this must match)."""
    merges = []
    for t in sorted(vocab, key=vocab.__getitem__):  # each spelling once, at its id in vocab (its last)
        splits = [(t[:i], t[i:]) for i in range(len(t) - 1, 0, -1) if t[:i] in vocab and t[i:] in vocab]
        merges.extend(splits)
    return merges


def load_gguf_tokenizer(path) -> tuple[Tokenizer, dict]:
    """(tokenizers.Tokenizer, {"eos_id", "pad_id", "bos_id", "add_bos"}) of a GGUF file, without its weights."""
    return _tokenizer(_Gguf(path))


def load_gguf(path) -> tuple[LlamaModel, LlamaConfig, Tokenizer, dict]:
    """(model in float32, config, tokenizers.Tokenizer, special ids as load_gguf_tokenizer) from a GGUF file."""
    from .hf import STATE_FROM_HF, Checkpoint, model_from_state

    g = _Gguf(path)
    tokenizer, special = _tokenizer(g)
    names = {t.name for t in g.reader.tensors}
    cfg = _config(g, len(g.reader.fields["tokenizer.ggml.tokens"].data), names)  # .data: one entry per token
    try:
        state = STATE_FROM_HF[cfg.arch](Checkpoint(_hf_tensors(g, cfg)), cfg)  # _hf_tensors refuses unknown names
    except KeyError as e:
        raise LlmclfError(f"{g.path}: GGUF file lacks a tensor ({e.args[0]} in Hugging Face naming)") from None
    model = model_from_state(cfg, state, str(g.path))
    return model, cfg, tokenizer, special


__all__ = ["load_gguf", "load_gguf_tokenizer"]
