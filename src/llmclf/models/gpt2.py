"""GPT-2 in plain PyTorch, with the module names of the book's chapter 4 (`GPTModel`, `trf_blocks`, ...).

The one addition to the book's model is the block's second argument, an `Attend` (models/common.py): it
masks right padding, and can ask a block for its output at one position per row only, which is all a
classifier needs from its last block (about 1/T of that block's attention and feed-forward work).
A block is called as `block(x, mask)`; `GPTModel.run_blocks` runs a range of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import Attend, attention, init_weights, merge_heads, project_real_tokens, split_heads


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.0
    qkv_bias: bool = True
    arch: str = "gpt2"


class LayerNorm(nn.Module):
    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.scale, self.shift, self.eps)


class MultiHeadAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.emb_dim
        self.n_heads, self.head_dim, self.drop_rate = cfg.n_heads, d // cfg.n_heads, cfg.drop_rate
        self.W_query = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.W_key = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.W_value = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x, mask: Attend):
        """x (B, T, D) -> (B, Tq, D) at mask's query positions."""
        x_q = mask.queries(x)  # (B, Tq, D)
        k = split_heads(project_real_tokens(self.W_key, x, mask.kv_lengths), self.n_heads)  # (B, H, T, hd)
        v = split_heads(project_real_tokens(self.W_value, x, mask.kv_lengths), self.n_heads)
        q = split_heads(self.W_query(x_q), self.n_heads)  # (B, H, Tq, hd)
        out = attention(q, k, v, mask, dropout_p=self.drop_rate if self.training else 0.0)  # (B, H, Tq, hd)
        return self.out_proj(merge_heads(out))


class GELU(nn.Module):
    """GPT-2's tanh approximation, 0.5 x (1 + tanh(z)) with z = sqrt(2/pi) (x + 0.044715 x^3), computed as the
    equal x * sigmoid(2z): torch's sigmoid is about 4x faster than its tanh on a CPU (measured here), and
    outside autograd the steps run in place, in one buffer."""

    C = 2 * (2 / torch.pi) ** 0.5

    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            return x * torch.sigmoid(self.C * (x + 0.044715 * x * x * x))
        t = x * x
        t.mul_(0.044715 * self.C).add_(self.C).mul_(x).sigmoid_()
        return t.mul_(x)


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim),
            GELU(),
            nn.Linear(4 * cfg.emb_dim, cfg.emb_dim),
        )

    def forward(self, x):
        return self.layers(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.att = MultiHeadAttention(cfg)
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg.emb_dim)
        self.norm2 = LayerNorm(cfg.emb_dim)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x, mask: Attend = Attend()):
        """x (B, T, D) -> (B, Tq, D): Tq == T, or 1 for a single query per row. Token positions (prefix
        trees) matter only to the embedding in GPT-2 (`GPTModel.embed`)."""
        shortcut = mask.queries(x)  # (B, Tq, D)
        x = shortcut + self.drop_shortcut(self.att(self.norm1(x), mask))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = LayerNorm(cfg.emb_dim)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.apply(init_weights)

    def embed(self, in_idx, positions=None):
        """Token plus position embeddings: the input of the first block. positions (B, T) defaults to 0..T-1."""
        pos = torch.arange(in_idx.shape[1], device=in_idx.device) if positions is None else positions
        return self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(pos))

    def run_blocks(self, x, mask: Attend, start: int = 0, stop: int | None = None):
        """Blocks start..stop-1 on x (B, T, D), the hidden states entering block start."""
        for block in self.trf_blocks[start:stop]:
            x = block(x, mask)
        return x

    def forward(self, in_idx, lengths=None):
        """in_idx (B, T) token ids -> (B, T, vocab_size) logits."""
        x = self.run_blocks(self.embed(in_idx), Attend.full(lengths))
        return self.out_head(self.final_norm(x))
