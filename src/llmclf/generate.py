"""Greedy text generation: the book's "is the model loaded right?" check."""

from __future__ import annotations

import torch


@torch.inference_mode()
def generate_greedy(model, token_ids: list[int], max_new_tokens: int = 20, eos_id: int | None = None) -> list[int]:
    """Append the most likely next token max_new_tokens times (or until eos_id); returns the new tokens only."""
    model.eval()
    device = next(model.parameters()).device
    ids = torch.tensor([token_ids], device=device)
    new = []
    for _ in range(max_new_tokens):
        ids = ids[:, -model.cfg.context_length:]
        next_id = int(model(ids)[0, -1].argmax())
        if eos_id is not None and next_id == eos_id:
            break
        new.append(next_id)
        ids = torch.cat([ids, torch.tensor([[next_id]], device=device)], dim=1)
    return new


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 20) -> str:
    return tokenizer.decode(generate_greedy(model, tokenizer.encode(prompt), max_new_tokens, tokenizer.eos_id))
