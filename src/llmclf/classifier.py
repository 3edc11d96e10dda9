"""A backbone turned into a classifier: pooling, a class head, and which parameters train.

As in chapter 6, the output layer is replaced by `Linear(emb_dim, num_classes)`, everything is frozen,
then the last block and the final norm are made trainable again, and the class comes from one token's
logits. Why one token: in a causal model only the last token has attended to the whole text.

Pooling (the position whose hidden state is classified):
- last_nonpad: the last real token of each text (default; padding never changes a prediction);
- last: the last position of the sequence padded to a fixed length, exactly the book's setting;
- first: position 0 (with the causal mask it sees only the first token);
- mean: the mean over real tokens;
- mean_last: the mean and the last real token side by side (the head reads 2 x emb_dim): the mean
  carries what the whole text is about, the last token what the model concluded having read it all.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .models.common import Attend, gather_positions

POOLINGS = ("last_nonpad", "last", "first", "mean", "mean_last")
TRAINABLE = ("last_layer", "last_block", "last_two_blocks", "all", "lora")


class TextClassifier(nn.Module):
    """head_bias None: the head the backbone's transformers classifier can hold exactly. GPT-2: with a bias (its
    final LayerNorm's shift absorbs it on export); the Llama family: none, as LlamaForSequenceClassification's
    `score`, since RMSNorm has no shift that could absorb one."""

    def __init__(self, backbone: nn.Module, num_classes: int, pooling: str = "last_nonpad", causal: bool = True,
                 head_bias: bool | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}")
        self.backbone = backbone
        self.pooling, self.causal, self.num_classes = pooling, causal, num_classes
        self.head_bias = backbone.cfg.arch == "gpt2" if head_bias is None else head_bias
        width = backbone.cfg.emb_dim * (2 if pooling == "mean_last" else 1)
        backbone.out_head = nn.Linear(width, num_classes, bias=self.head_bias)  # the class head

    @property
    def blocks(self):
        return self.backbone.trf_blocks

    def pool_positions(self, lengths: torch.Tensor) -> torch.Tensor | None:
        """Index of the pooled token per row, or None when every position is read (mean, mean_last)."""
        if self.pooling == "first":
            return torch.zeros_like(lengths)
        if self.pooling in ("mean", "mean_last"):
            return None
        return lengths - 1  # last real token; in "last" mode every row is full length, so T - 1

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Final norm and class head on pooled hidden states (B, k * D): the norm acts on each of the k
        pooled vectors alone, as it acts per position in the language model."""
        normed = self.backbone.final_norm(pooled.unflatten(-1, (-1, self.backbone.cfg.emb_dim)))
        return self.backbone.out_head(normed.flatten(-2))

    def from_hidden(self, x: torch.Tensor, lengths: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Class logits from the hidden states x (B, T, D) entering block `start` (the frozen-prefix cache
        enters here)."""
        pos, n, bb = self.pool_positions(lengths), len(self.blocks), self.backbone
        full = Attend.full(lengths, self.causal)
        if pos is None or start == n:  # mean poolings read every position of the last block (or none is left)
            return self.head(self.pool(bb.run_blocks(x, full, start), lengths))
        x = bb.run_blocks(x, full, start, n - 1)
        # Only the pooled position of the last block is ever used, so compute just that query.
        x = bb.run_blocks(x, Attend.single_query(pos, lengths, self.causal), n - 1)  # (B, 1, D)
        return self.head(x[:, 0])

    def pool(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pos = self.pool_positions(lengths)
        if pos is not None:
            return gather_positions(x, pos)[:, 0]
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1).to(x.dtype)
        mean = (x * mask).sum(1) / lengths[:, None].to(x.dtype)
        if self.pooling == "mean":
            return mean
        return torch.cat([mean, gather_positions(x, lengths - 1)[:, 0]], dim=-1)  # mean_last

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            lengths = torch.full((input_ids.shape[0],), input_ids.shape[1], device=input_ids.device)
        return self.from_hidden(self.backbone.embed(input_ids), lengths, 0)

    def forward_batch(self, batch: dict) -> torch.Tensor:
        """Logits for a batch from `data.BatchLoader`: token ids, or cached hidden states entering block `start`."""
        if "hidden" in batch:
            if batch["start"] == len(self.blocks):
                return self.head(batch["hidden"])  # cache holds pooled vectors: only the head is left
            return self.from_hidden(batch["hidden"], batch["lengths"], batch["start"])
        return self(batch["input_ids"], batch["lengths"])

    # ------------------------------------------------------------ what trains

    def frozen_prefix(self) -> int:
        """Number of leading blocks whose output cannot change during training: they are frozen, the
        embeddings are frozen, and no dropout acts in them. Their outputs can be computed once and cached."""
        bb = self.backbone
        if any(p.requires_grad for n, p in bb.named_parameters() if n.startswith(("tok_emb", "pos_emb"))):
            return 0
        if getattr(bb.cfg, "drop_rate", 0.0) > 0:
            return 0
        for i, block in enumerate(self.blocks):
            if any(p.requires_grad for p in block.parameters()):
                return i
        return len(self.blocks)


def set_trainable(model: TextClassifier, trainable: str = "last_block", lora_rank: int = 8, lora_alpha: float = 16.0):
    """Freeze everything, then unfreeze per the book's options. The class head always trains."""
    if trainable not in TRAINABLE:
        raise ValueError(f"trainable must be one of {TRAINABLE}")
    bb = model.backbone
    for p in model.parameters():
        p.requires_grad = trainable == "all"
    if trainable == "lora":
        from .lora import replace_linear_with_lora
        replace_linear_with_lora(bb.trf_blocks, lora_rank, lora_alpha)
    n_top = {"last_block": 1, "last_two_blocks": 2}.get(trainable, 0)
    for block in list(bb.trf_blocks)[len(bb.trf_blocks) - n_top:]:
        for p in block.parameters():
            p.requires_grad = True
    if trainable in ("last_block", "last_two_blocks", "lora"):
        for p in bb.final_norm.parameters():
            p.requires_grad = True
    for p in bb.out_head.parameters():
        p.requires_grad = True
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
