"""LoRA: only the adapters, the class head and the final norm train; the base weights never move."""

from __future__ import annotations

import pytest
import torch

from llmclf.classifier import TextClassifier, count_parameters, set_trainable
from llmclf.lora import LinearWithLoRA
from llmclf.metrics import calc_loss_batch
from llmclf.models import MODELS, build_model


def _tiny_lora(arch):
    """A tiny classifier with rank-4 adapters (alpha 8: scaling 2)."""
    torch.manual_seed(0)
    model = TextClassifier(build_model(MODELS[f"{arch}-tiny"].config), 2, "last_nonpad", True)
    return set_trainable(model, "lora", lora_rank=4, lora_alpha=8.0)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_lora_trains_only_adapters_head_and_final_norm(arch):
    model = _tiny_lora(arch)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora." in n or n.startswith(("backbone.out_head", "backbone.final_norm"))
                             for n in trainable), trainable
    wrapped = [m for m in model.modules() if isinstance(m, LinearWithLoRA)]
    adapters = sum(m.lora.A.numel() + m.lora.B.numel() for m in wrapped)
    expected = adapters + sum(p.numel() for p in model.backbone.out_head.parameters()) \
        + sum(p.numel() for p in model.backbone.final_norm.parameters())
    assert wrapped and count_parameters(model) == expected
    assert all(m.lora.A.shape[1] == 4 and m.lora.scaling == 2.0 for m in wrapped)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_lora_leaves_base_weights_unchanged_by_training(arch):
    model = _tiny_lora(arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids = torch.randint(0, 1000, (4, 12), generator=g)
        batch = {"input_ids": ids, "lengths": torch.tensor([12, 9, 5, 12]), "labels": torch.tensor([0, 1, 1, 0])}
        calc_loss_batch(batch, model).backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    adapters_b = {n for n, _ in model.named_parameters() if n.endswith(".lora.B")}
    assert adapters_b <= changed  # B starts at zero and moves
    assert "backbone.out_head.weight" in changed
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not (frozen & changed), sorted(frozen & changed)[:5]
