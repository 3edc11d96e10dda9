"""Attention shared by both backbones: one SDPA call whose mask handles padding, causality and
"only these query positions" (the classifier needs the last block's output at one position only)."""

from __future__ import annotations

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


def project_real_tokens(linear, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """linear(x) computed at real tokens only (position < length); padded positions stay zero. For keys and
    values: attention masks padded keys, so their values are never read. In the classifier's last block,
    which computes one query per row, the K/V projections are most of the work, and in a shuffled training
    batch padded to its longest text about half of the positions are padding."""
    B, T, _ = x.shape
    if lengths is None or int(lengths.min()) == T:
        return linear(x)
    real = torch.arange(T, device=x.device)[None, :] < lengths[:, None]
    y = linear(x[real])
    out = y.new_zeros(B, T, y.shape[-1])
    out[real] = y
    return out


def attention(q, k, v, *, lengths=None, causal=True, query_pos=None, dropout_p=0.0, tree_mask=None):
    """Scaled-dot-product attention over heads.

    q: (B, H, Tq, hd); k, v: (B, Hkv, Tk, hd), Hkv dividing H (grouped-query attention).
    lengths: (B,) number of real tokens per row, or None when no row is padded. Keys at or past a row's
    length are masked, so right padding never changes a real token's output.
    query_pos: (B,) the one position each row's single query sits at (Tq == 1), or None for Tq == Tk.
    tree_mask: (B, T, T) boolean, True where a query may attend a key; given for rows of packed prefix
    trees (`data.pack_prefix_trees`), where it replaces lengths and the causal mask.
    """
    B, _, Tq, _ = q.shape
    Tk = k.shape[2]
    gqa = {"enable_gqa": True} if k.shape[1] != q.shape[1] else {}
    if tree_mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=tree_mask.unsqueeze(1), dropout_p=dropout_p, **gqa)
    if lengths is None and query_pos is None:
        # Fast path: the fused kernel's own causal mask (or none at all).
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout_p, **gqa)
    keys = torch.arange(Tk, device=q.device)
    if lengths is None:
        mask = torch.ones(B, 1, 1, Tk, dtype=torch.bool, device=q.device)
    else:
        mask = (keys.view(1, Tk) < lengths.view(B, 1)).view(B, 1, 1, Tk)
    if causal:
        qpos = query_pos.view(B, 1) if query_pos is not None else torch.arange(Tq, device=q.device).view(1, Tq)
        mask = mask & (keys.view(1, 1, Tk) <= qpos.unsqueeze(-1)).unsqueeze(1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, **gqa)
