"""A Llama-family decoder (SmolLM2, Llama 2/3 style) in plain PyTorch: RMSNorm, rotary position
embeddings, SwiGLU feed-forward, grouped-query attention, optionally tied embeddings.

It exposes the same surface as `gpt2.GPTModel` (`embed`, `trf_blocks`, `final_norm`, `out_head`, blocks
taking `lengths`/`causal`/`query_pos`), so the classifier, training and generation treat both alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import attention, gather_positions, init_weights, project_real_tokens


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
    arch: str = "llama"


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


class GroupedQueryAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv = cfg.n_heads, cfg.n_kv_groups
        self.head_dim = cfg.emb_dim // cfg.n_heads
        self.drop_rate = cfg.drop_rate
        self.W_query = nn.Linear(cfg.emb_dim, self.n_heads * self.head_dim, bias=False)
        self.W_key = nn.Linear(cfg.emb_dim, self.n_kv * self.head_dim, bias=False)
        self.W_value = nn.Linear(cfg.emb_dim, self.n_kv * self.head_dim, bias=False)
        self.out_proj = nn.Linear(self.n_heads * self.head_dim, cfg.emb_dim, bias=False)

    def forward(self, x, cos, sin, lengths=None, causal=True, query_pos=None, positions=None, tree_mask=None):
        B, T, _ = x.shape
        x_q = x if query_pos is None else gather_positions(x, query_pos)
        Tq = x_q.shape[1]
        q = self.W_query(x_q).view(B, Tq, self.n_heads, self.head_dim).transpose(1, 2)
        real = lengths if query_pos is not None else None  # one query per row: K/V at real tokens only
        k = project_real_tokens(self.W_key, x, real).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = project_real_tokens(self.W_value, x, real).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        if positions is None:
            cos_t, sin_t = cos[:T], sin[:T]
        else:  # packed prefix trees: each token rotates by its own position (its depth in the tree)
            cos_t, sin_t = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
        k = apply_rope(k, cos_t, sin_t)
        if query_pos is None:
            q = apply_rope(q, cos_t, sin_t)
        else:  # each row's single query rotates by its own position
            q = apply_rope(q, cos[query_pos].view(B, 1, 1, -1), sin[query_pos].view(B, 1, 1, -1))
        out = attention(q, k, v, lengths=lengths, causal=causal, query_pos=query_pos,
                        dropout_p=self.drop_rate if self.training else 0.0, tree_mask=tree_mask)
        return self.out_proj(out.transpose(1, 2).reshape(B, Tq, -1))


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
    def __init__(self, cfg: LlamaConfig, rope):
        super().__init__()
        self.att = GroupedQueryAttention(cfg)
        self.ff = FeedForward(cfg)
        self.norm1 = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.norm2 = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)
        self._rope = rope  # the model's shared cos/sin tables (a plain list: not a submodule)

    def forward(self, x, lengths=None, causal=True, query_pos=None, positions=None, tree_mask=None):
        cos, sin = self._rope[0](x)
        shortcut = x if query_pos is None else gather_positions(x, query_pos)
        x = shortcut + self.drop_shortcut(self.att(self.norm1(x), cos, sin, lengths, causal, query_pos,
                                                   positions, tree_mask))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        cos, sin = rope_tables(cfg.emb_dim // cfg.n_heads, cfg.context_length, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # derived from the config: not saved
        self.register_buffer("rope_sin", sin, persistent=False)
        rope = [self._rope_for]
        self.trf_blocks = nn.ModuleList(TransformerBlock(cfg, rope) for _ in range(cfg.n_layers))
        self.final_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.apply(init_weights)
        if cfg.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight

    def _rope_for(self, x):
        """The cos/sin tables, in x's dtype (rope_tables builds them in float32)."""
        return self.rope_cos.to(x.dtype), self.rope_sin.to(x.dtype)

    def embed(self, in_idx, positions=None):
        """Token embeddings (positions enter later, by rotation in attention)."""
        return self.drop_emb(self.tok_emb(in_idx))

    def forward(self, in_idx, lengths=None):
        x = self.embed(in_idx)
        for block in self.trf_blocks:
            x = block(x, lengths)
        return self.out_head(self.final_norm(x))
