"""Gemma 3 (text) in plain PyTorch, as the Llama-family model of llama.py plus what Gemma changes:

- RMSNorm scales by (1 + weight), its weight stored zero-centred, and is computed in float32;
- four norms per block: before and after attention, before and after the feed-forward;
- QK-norm (an RMSNorm over each head's query and key, before RoPE), and a query scale of
  query_pre_attn_scalar ** -0.5 instead of 1 / sqrt(head_dim);
- GeGLU feed-forward: down(gelu_tanh(gate(x)) * up(x));
- token embeddings multiplied by sqrt(emb_dim), and tied to the output head;
- local and global layers interleaved: every `sliding_pattern`-th layer attends the whole context with RoPE
  base `rope_base`; the others attend a sliding window of `sliding_window` positions with base
  `rope_local_base`.

It exposes the surface of `llama.LlamaModel` (`embed`, `trf_blocks`, `run_blocks`, `final_norm`,
`out_head`), so the classifier, the frozen-prefix cache, prefix trees and LoRA treat it alike. The cache stays
exact with sliding windows: it stores every position's hidden state, and each block applies its own window
when it reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import Attend, init_weights
from .llama import FeedForward, GroupedQueryAttention, Rope, rope_tables


@dataclass
class Gemma3Config:
    vocab_size: int = 262144
    context_length: int = 32768
    emb_dim: int = 640
    n_heads: int = 4
    n_kv_groups: int = 1
    head_dim: int = 256
    hidden_dim: int = 2048
    n_layers: int = 18
    rope_base: float = 1_000_000.0      # global layers
    rope_local_base: float = 10_000.0   # sliding-window layers
    sliding_window: int = 512
    sliding_pattern: int = 6            # layers 5, 11, 17, ... are global; the rest slide
    query_pre_attn_scalar: float = 256.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    drop_rate: float = 0.0
    arch: str = "gemma3"
    qkv_bias: ClassVar[bool] = False    # what GroupedQueryAttention reads: no q/k/v bias, QK-norm on
    qk_norm: ClassVar[bool] = True

    @property
    def head_size(self) -> int:
        return self.head_dim

    def sliding(self, layer: int) -> bool:
        return (layer + 1) % self.sliding_pattern != 0


class GemmaRMSNorm(nn.Module):
    """x / rms(x) * (1 + weight), in float32 whatever x's dtype (as Gemma was trained)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return (F.rms_norm(x.float(), x.shape[-1:], eps=self.eps) * (1.0 + self.weight.float())).to(x.dtype)


class GeGLU(FeedForward):
    """fc2(gelu_tanh(fc1(x)) * fc3(x)): SwiGLU's layers with GELU (tanh approximation) for SiLU."""

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh") * self.fc3(x))


class Gemma3Attention(GroupedQueryAttention):
    def __init__(self, cfg: Gemma3Config, sliding: bool):
        super().__init__(cfg, norm=GemmaRMSNorm)
        self.scale = cfg.query_pre_attn_scalar ** -0.5
        self.window = cfg.sliding_window if sliding else None


class Gemma3Block(nn.Module):
    def __init__(self, cfg: Gemma3Config, layer: int):
        super().__init__()
        self.sliding = cfg.sliding(layer)
        self.att = Gemma3Attention(cfg, self.sliding)
        self.ff = GeGLU(cfg)
        self.norm1, self.post_att_norm = GemmaRMSNorm(cfg.emb_dim, cfg.norm_eps), GemmaRMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.norm2, self.post_ff_norm = GemmaRMSNorm(cfg.emb_dim, cfg.norm_eps), GemmaRMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)
        self.rope_base = cfg.rope_local_base if self.sliding else cfg.rope_base

    def forward(self, x, mask: Attend = Attend(), rope: Rope | None = None):
        """x (B, T, D) -> (B, Tq, D). rope: this layer's tables (local or global); built here if not given."""
        if rope is None:
            rope = Rope(*(t.to(x) for t in rope_tables(self.att.head_dim, x.shape[1], self.rope_base)))
        shortcut = mask.queries(x)
        x = shortcut + self.drop_shortcut(self.post_att_norm(self.att(self.norm1(x), mask, rope)))
        return x + self.drop_shortcut(self.post_ff_norm(self.ff(self.norm2(x))))


class Gemma3Model(nn.Module):
    def __init__(self, cfg: Gemma3Config):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.ModuleList(Gemma3Block(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = GemmaRMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.apply(init_weights)
        if cfg.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight

    def ropes(self, length: int, dtype) -> dict[float, Rope]:
        """Both layer kinds' tables for positions 0..length-1, by RoPE base. Built per forward for the length at
        hand: a table over the whole 32K context would be 4 x 32 MB, and position p's row is the same either way."""
        bases = {self.cfg.rope_base, self.cfg.rope_local_base}
        return {b: Rope(*(t.to(dtype) for t in rope_tables(self.cfg.head_dim, length, b))) for b in bases}

    def embed(self, in_idx, positions=None):
        """Token embeddings times sqrt(emb_dim) (positions enter later, by rotation in attention)."""
        return self.drop_emb(self.tok_emb(in_idx) * self.cfg.emb_dim ** 0.5)

    def run_blocks(self, x, mask: Attend, start: int = 0, stop: int | None = None):
        """Blocks start..stop-1 on x (B, T, D), the hidden states entering block start."""
        ropes = self.ropes(x.shape[1], x.dtype)
        for block in self.trf_blocks[start:stop]:
            x = block(x, mask, ropes[block.rope_base])
        return x

    def forward(self, in_idx, lengths=None):
        """in_idx (B, T) token ids -> (B, T, vocab_size) logits."""
        x = self.run_blocks(self.embed(in_idx), Attend.full(lengths))
        return self.out_head(self.final_norm(x))
