"""GPT-2 in plain PyTorch, with the module names of the book's chapter 4 (`GPTModel`, `trf_blocks`, ...).

The one addition to the book's model is in the block's forward: `lengths` masks right padding and
`query_pos` computes a block's output at one position per row, which is all a classifier needs from
its last block (about 1/T of that block's attention and feed-forward work).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import attention, gather_positions, init_weights, project_real_tokens


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

    def _heads(self, x):
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x, lengths=None, causal=True, query_pos=None, tree_mask=None):
        x_q = x if query_pos is None else gather_positions(x, query_pos)
        real = lengths if query_pos is not None else None  # one query per row: K/V at real tokens only
        k = self._heads(project_real_tokens(self.W_key, x, real))
        v = self._heads(project_real_tokens(self.W_value, x, real))
        q = self._heads(self.W_query(x_q))
        out = attention(q, k, v, lengths=lengths, causal=causal, query_pos=query_pos,
                        dropout_p=self.drop_rate if self.training else 0.0, tree_mask=tree_mask)
        B, _, Tq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, Tq, -1))


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

    def forward(self, x, lengths=None, causal=True, query_pos=None, positions=None, tree_mask=None):
        # positions (B, T) matter only to the embedding in GPT-2; blocks accept them to match Llama's blocks.
        shortcut = x if query_pos is None else gather_positions(x, query_pos)
        x = shortcut + self.drop_shortcut(self.att(self.norm1(x), lengths, causal, query_pos, tree_mask))
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

    def forward(self, in_idx, lengths=None):
        x = self.embed(in_idx)
        for block in self.trf_blocks:
            x = block(x, lengths)
        return self.out_head(self.final_norm(x))
