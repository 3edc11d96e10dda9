"""A Llama-family decoder (SmolLM2, Llama 2/3 style, Qwen2.5, Qwen3) in plain PyTorch: RMSNorm, rotary
position embeddings, SwiGLU feed-forward, grouped-query attention, optionally tied embeddings. Two switches
make the Qwen variants: `qkv_bias` (Qwen2.5: a bias on the query, key and value projections) and `qk_norm`
(Qwen3: an RMSNorm over each head's query and key, before RoPE); Qwen3 also sets `head_dim` apart from
emb_dim / n_heads.

It exposes the same surface as `gpt2.GPTModel` (`embed`, `trf_blocks`, `run_blocks`, `final_norm`,
`out_head`), so the classifier, training and generation treat both alike. A block is called as
`block(x, mask, rope)`: the `Attend` of models/common.py, and the model's RoPE tables, handed to every block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import Attend, attention, init_weights, merge_heads, project_real_tokens, split_heads


@dataclass
class LlamaConfig:
    vocab_size: int = 49152
    context_length: int = 8192
    emb_dim: int = 576
    n_heads: int = 9
    n_kv_groups: int = 3
    hidden_dim: int = 1536
    n_layers: int = 30
    rope_base: float = 100000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    drop_rate: float = 0.0
    qkv_bias: bool = False
    qk_norm: bool = False
    head_dim: int | None = None  # None: emb_dim // n_heads
    arch: str = "llama"

    @property
    def head_size(self) -> int:
        return self.head_dim or self.emb_dim // self.n_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)


def rope_tables(head_dim: int, length: int, base: float):
    """cos and sin of shape (length, head_dim) for the "rotate half" form of rotary embeddings."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """x: (B, H, T, hd); cos, sin: (T, hd) or (B, 1, T, hd)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Rope(NamedTuple):
    """The rotary tables for positions 0..L-1, computed by the model and handed to every block."""

    cos: torch.Tensor  # (L, hd)
    sin: torch.Tensor  # (L, hd)

    def at(self, pos):
        """The tables at positions pos (B, T): (B, 1, T, hd) each, broadcasting over heads."""
        return self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)

    def rotate(self, q, k, mask: Attend):
        """q (B, H, Tq, hd) and k (B, Hkv, T, hd), each rotated by its token's position."""
        T = k.shape[2]
        if mask.positions is None:
            cos_k, sin_k = self.cos[:T], self.sin[:T]  # (T, hd): positions 0..T-1
        else:  # packed prefix trees: each token rotates by its own position (its depth in the tree)
            cos_k, sin_k = self.at(mask.positions)
        if mask.query_pos is None:
            cos_q, sin_q = cos_k, sin_k
        else:  # each row's single query rotates by its own position
            cos_q, sin_q = self.at(mask.query_pos.view(-1, 1))
        return apply_rope(q, cos_q, sin_q), apply_rope(k, cos_k, sin_k)


class GroupedQueryAttention(nn.Module):
    scale: float | None = None  # None: 1/sqrt(head_dim); Gemma 3 sets its own
    window: int | None = None   # a sliding window (Gemma 3's local layers); None: every earlier position

    def __init__(self, cfg: LlamaConfig, norm=RMSNorm):
        super().__init__()
        self.n_heads, self.n_kv = cfg.n_heads, cfg.n_kv_groups
        self.head_dim = cfg.head_size
        self.drop_rate = cfg.drop_rate
        self.W_query = nn.Linear(cfg.emb_dim, self.n_heads * self.head_dim, bias=cfg.qkv_bias)
        self.W_key = nn.Linear(cfg.emb_dim, self.n_kv * self.head_dim, bias=cfg.qkv_bias)
        self.W_value = nn.Linear(cfg.emb_dim, self.n_kv * self.head_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(self.n_heads * self.head_dim, cfg.emb_dim, bias=False)
        if cfg.qk_norm:  # Qwen3, Gemma 3: one RMSNorm weight per head dimension, shared by all heads
            self.q_norm = norm(self.head_dim, cfg.norm_eps)
            self.k_norm = norm(self.head_dim, cfg.norm_eps)

    def forward(self, x, mask: Attend, rope: Rope):
        """x (B, T, D) -> (B, Tq, D) at mask's query positions."""
        q = split_heads(self.W_query(mask.queries(x)), self.n_heads)  # (B, H, Tq, hd)
        k = split_heads(project_real_tokens(self.W_key, x, mask.kv_lengths), self.n_kv)  # (B, Hkv, T, hd)
        v = split_heads(project_real_tokens(self.W_value, x, mask.kv_lengths), self.n_kv)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)  # padded keys are normalised zeros: still masked
        q, k = rope.rotate(q, k, mask)
        out = attention(q, k, v, mask, self.drop_rate if self.training else 0.0, self.scale, self.window)  # (B, H, Tq, hd)
        return self.out_proj(merge_heads(out))


class FeedForward(nn.Module):
    """SwiGLU: fc2(silu(fc1(x)) * fc3(x))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)
        self.fc2 = nn.Linear(cfg.hidden_dim, cfg.emb_dim, bias=False)
        self.fc3 = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)

    def forward(self, x):
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.att = GroupedQueryAttention(cfg)
        self.ff = FeedForward(cfg)
        self.norm1 = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.norm2 = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)
        self.rope_args = (self.att.head_dim, cfg.context_length, cfg.rope_base)  # for a block called on its own

    def forward(self, x, mask: Attend = Attend(), rope: Rope | None = None):
        """x (B, T, D) -> (B, Tq, D): Tq == T, or 1 for a single query per row. rope: the model's tables
        (`LlamaModel.rope`); a block called on its own builds the same tables itself."""
        if rope is None:
            rope = Rope(*(t.to(x) for t in rope_tables(*self.rope_args)))  # x's dtype and device
        shortcut = mask.queries(x)  # (B, Tq, D)
        x = shortcut + self.drop_shortcut(self.att(self.norm1(x), mask, rope))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        cos, sin = rope_tables(cfg.head_size, cfg.context_length, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # derived from the config: not saved
        self.register_buffer("rope_sin", sin, persistent=False)
        self.trf_blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.apply(init_weights)
        if cfg.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight

    def rope(self, dtype) -> Rope:
        """The cos/sin tables in the given dtype (rope_tables builds them in float32)."""
        return Rope(self.rope_cos.to(dtype), self.rope_sin.to(dtype))

    def embed(self, in_idx, positions=None):
        """Token embeddings (positions enter later, by rotation in attention)."""
        return self.drop_emb(self.tok_emb(in_idx))

    def run_blocks(self, x, mask: Attend, start: int = 0, stop: int | None = None):
        """Blocks start..stop-1 on x (B, T, D), the hidden states entering block start."""
        rope = self.rope(x.dtype)
        for block in self.trf_blocks[start:stop]:
            x = block(x, mask, rope)
        return x

    def forward(self, in_idx, lengths=None):
        """in_idx (B, T) token ids -> (B, T, vocab_size) logits."""
        x = self.run_blocks(self.embed(in_idx), Attend.full(lengths))
        return self.out_head(self.final_norm(x))
