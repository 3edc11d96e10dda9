"""Low-rank adaptation (LoRA, appendix E of the book): W x + (alpha / rank) * B(A(x)), with W frozen."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class LoRALayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(in_dim, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(rank, out_dim))  # zero: training starts from the base model exactly
        self.scaling = alpha / rank

    def forward(self, x):
        return self.scaling * (x @ self.A @ self.B)


class LinearWithLoRA(nn.Module):
    def __init__(self, linear: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)

    def forward(self, x):
        return self.linear(x) + self.lora(x)

    def merged(self) -> nn.Linear:
        """The plain Linear with the adapter folded into its weight."""
        with torch.no_grad():
            self.linear.weight.copy_(fold_lora(self.linear.weight, self.lora.A, self.lora.B, self.lora.scaling))
        return self.linear


def fold_lora(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """W + scaling * (A B)^T: the adapter folded into its base weight. Merging for saving and rebuilding a
    compact classifier both call this, so the two give the same bits."""
    return weight + (scaling * (A @ B)).T.to(weight.dtype)


def replace_linear_with_lora(module: nn.Module, rank: int, alpha: float) -> None:
    """Wrap every nn.Linear below `module` with a trainable adapter; the wrapped weights stay frozen."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            for p in child.parameters():
                p.requires_grad = False
            setattr(module, name, LinearWithLoRA(child, rank, alpha))
        else:
            replace_linear_with_lora(child, rank, alpha)


def merge_lora(module: nn.Module) -> None:
    """Replace every LinearWithLoRA by its merged Linear (for saving a plain checkpoint)."""
    for name, child in module.named_children():
        if isinstance(child, LinearWithLoRA):
            setattr(module, name, child.merged())
        else:
            merge_lora(child)
