"""What both backbones share: the `Attend` object that tells a block what each query may attend and where
the tokens sit, and one attention function (a single SDPA call whose mask handles padding, causality,
"only these query positions" and prefix trees)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def init_weights(module):
    """GPT-2's initialisation, N(0, 0.02) and zero biases, for --weights random (a pretrained load overwrites it)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def gather_positions(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x[b, pos[b]] for every row b: (B, T, D), (B,) -> (B, 1, D)."""
    index = pos.view(-1, 1, 1).expand(-1, 1, x.shape[-1])
    return x.gather(1, index)


@dataclass(frozen=True, eq=False)
class Attend:
    """Everything attention needs besides the tokens: which keys each query may attend, and at which
    positions the queries and tokens sit. One is built per forward, with one of three constructors:

    - `Attend.full(lengths, causal)`: every position is a query (a plain forward; frozen-prefix chunks);
    - `Attend.single_query(query_pos, lengths, causal)`: one query per row, at query_pos (the classifier's
      last block, whose output is needed at the pooled position only: about 1/T of that block's work);
    - `Attend.prefix_tree(positions, tree)`: rows of packed prefix trees (`data.pack_prefix_trees`).

    `Attend()` is a plain causal forward over unpadded rows.
    """

    lengths: torch.Tensor | None = None    # (B,) real tokens per row (right padding); None: no row is padded
    causal: bool = True                    # a query attends keys at or before its own position only
    query_pos: torch.Tensor | None = None  # (B,) the one query position per row; None: every position queries
    positions: torch.Tensor | None = None  # (B, T) each token's position (its depth in a prefix tree); None: 0..T-1
    tree: torch.Tensor | None = None       # (B, T, T) bool, True where a query may attend a key

    @classmethod
    def full(cls, lengths: torch.Tensor | None = None, causal: bool = True) -> Attend:
        return cls(lengths=lengths, causal=causal)

    @classmethod
    def single_query(cls, query_pos: torch.Tensor, lengths: torch.Tensor | None = None, causal: bool = True) -> Attend:
        return cls(lengths=lengths, causal=causal, query_pos=query_pos)

    @classmethod
    def prefix_tree(cls, positions: torch.Tensor, tree: torch.Tensor) -> Attend:
        """The tree mask replaces lengths and the causal mask; positions place each token for RoPE."""
        return cls(positions=positions, tree=tree)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """x at the query positions: (B, T, D) -> (B, Tq, D), Tq being 1 for a single query per row."""
        return x if self.query_pos is None else gather_positions(x, self.query_pos)

    @property
    def kv_lengths(self) -> torch.Tensor | None:
        """Lengths for `project_real_tokens` of keys and values: with one query per row, K/V are projected at
        real tokens only; with every position a query, at all of them."""
        return self.lengths if self.query_pos is not None else None

    def sdpa_mask(self, B: int, Tq: int, Tk: int, device, window: int | None = None) -> torch.Tensor:
        """(B, 1, Tq, Tk) boolean, True where a query may attend a key, from lengths, causality and a sliding
        window (a query attends the `window` latest positions, its own included)."""
        if self.tree is not None:  # the tree says who attends whom; the window acts on the tokens' depths
            mask = self.tree.unsqueeze(1)
            return mask if window is None else mask & _within(self.positions, self.positions, window).unsqueeze(1)
        keys = torch.arange(Tk, device=device)
        if self.lengths is None:
            mask = torch.ones(B, 1, 1, Tk, dtype=torch.bool, device=device)
        else:
            mask = (keys.view(1, Tk) < self.lengths.view(B, 1)).view(B, 1, 1, Tk)
        qpos = torch.arange(Tq, device=device).view(1, Tq) if self.query_pos is None else self.query_pos.view(B, 1)
        if self.causal:
            mask = mask & (keys.view(1, 1, Tk) <= qpos.unsqueeze(-1)).unsqueeze(1)
        if window is not None:
            mask = mask & _within(qpos, keys.view(1, Tk), window).unsqueeze(1)
        return mask


def _within(qpos: torch.Tensor, kpos: torch.Tensor, window: int) -> torch.Tensor:
    """(B, Tq, Tk): True where key and query sit fewer than `window` positions apart (Gemma 3's sliding window:
    q - k < window, and the same distance the other way when the causal mask is off)."""
    return (qpos.unsqueeze(-1) - kpos.unsqueeze(-2)).abs() < window


def project_real_tokens(linear, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """linear(x) computed at real tokens only (position < length); padded positions stay zero. For keys and
    values: attention masks padded keys, so their values are never read. In the classifier's last block,
    which computes one query per row, the K/V projections are most of the work, and in a shuffled training
    batch padded to its longest text about half of the positions are padding."""
    B, T, _ = x.shape
    # A graph being exported (ONNX) cannot have shapes that depend on the data: it projects every position,
    # which gives the same attention output since padded keys are masked.
    if lengths is None or torch.compiler.is_exporting() or int(lengths.min()) == T:
        return linear(x)
    real = torch.arange(T, device=x.device)[None, :] < lengths[:, None]
    y = linear(x[real])
    out = y.new_zeros(B, T, y.shape[-1])
    out[real] = y
    return out


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, H * hd) -> (B, H, T, hd)."""
    B, T, _ = x.shape
    return x.view(B, T, n_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, hd) -> (B, T, H * hd)."""
    B, H, T, hd = x.shape
    return x.transpose(1, 2).reshape(B, T, H * hd)


def attention(q, k, v, mask: Attend, dropout_p: float = 0.0, scale: float | None = None,
              window: int | None = None) -> torch.Tensor:
    """Scaled-dot-product attention over heads: q (B, H, Tq, hd); k, v (B, Hkv, Tk, hd), Hkv dividing H
    (grouped-query attention) -> (B, H, Tq, hd). Keys at or past a row's length are masked, so right padding
    never changes a real token's output. scale: None for 1/sqrt(hd); window: a sliding window (Gemma 3)."""
    kw = {"dropout_p": dropout_p, "scale": scale, **({"enable_gqa": True} if k.shape[1] != q.shape[1] else {})}
    if window is not None and k.shape[2] <= window and not torch.compiler.is_exporting():
        window = None  # positions (and tree depths) differ by less than Tk: the window hides nothing
        # (a graph being exported keeps the window: it must hold for every length, not the example's)
    if mask.lengths is None and mask.query_pos is None and mask.tree is None and window is None:
        # Fast path: the fused kernel's own causal mask (or none at all).
        return F.scaled_dot_product_attention(q, k, v, is_causal=mask.causal, **kw)
    attn_mask = mask.sdpa_mask(q.shape[0], q.shape[2], k.shape[2], q.device, window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, **kw)
