"""Fine-tuning: the book's `train_classifier_simple` loop, fed either token ids or a frozen-prefix cache.

Frozen-prefix cache, and why it is exact: with the default recipe every block below the last is frozen
and dropout is off, so those blocks map a text to the same hidden states in every epoch. We run them
once per distinct text (in length-sorted batches, so little padding is computed) and train the top on
the stored states. Right padding plus the causal mask means a real token never sees padding, so a text's
states do not depend on what it was batched with: the cached path computes the same numbers as the
uncached one, only once instead of once per step and per evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch.nn.utils.rnn import pad_sequence

from .data import BatchLoader, length_sorted_chunks, pad_batch
from .metrics import calc_accuracy_loader, calc_loss_batch, calc_loss_loader


# ---------------------------------------------------------------- batches

def token_loader(dataset, batch_size, device, *, shuffle=False, drop_last=False, seed=123, fixed_length=None):
    """Batches of padded token ids (pads to the batch's longest text, or to fixed_length in "last" mode)."""
    targets = torch.tensor(dataset.targets)

    def collate(idx):
        ids, lengths = pad_batch([dataset.encoded[i] for i in idx], dataset.pad_id, fixed_length)
        return {"input_ids": ids.to(device), "lengths": lengths.to(device), "labels": targets[idx].to(device)}

    return BatchLoader(len(dataset), batch_size, collate, shuffle=shuffle, drop_last=drop_last, seed=seed)


@torch.inference_mode()
def compute_prefix_cache(model, encoded, start, device, pad_id, fixed_length=None, max_tokens=8192):
    """Hidden states entering block `start` for every text (pooled vectors when start == n_layers).
    Identical token sequences are computed once."""
    slot_of, seqs, slots = {}, [], []
    for e in encoded:
        key = tuple(e)
        if key not in slot_of:
            slot_of[key] = len(seqs)
            seqs.append(e)
        slots.append(slot_of[key])
    lengths = [fixed_length or len(s) for s in seqs]
    blocks = list(model.blocks)[:start]
    out = [None] * len(seqs)
    was_training = model.training
    model.eval()
    for chunk in length_sorted_chunks(lengths, max_tokens):
        ids, lens = pad_batch([seqs[i] for i in chunk], pad_id, fixed_length)
        ids, lens = ids.to(device), lens.to(device)
        x = model.backbone.embed(ids)
        attn_lengths = None if model.causal else lens  # causal + right padding: real tokens never see pads
        for block in blocks:
            x = block(x, attn_lengths, model.causal)
        if start == len(model.blocks):
            x = model.pool(x, lens)
            for j, i in enumerate(chunk):
                out[i] = x[j].clone()
        else:
            for j, i in enumerate(chunk):
                out[i] = x[j, : lens[j]].clone()
    model.train(was_training)
    return [out[s] for s in slots]


def cached_loader(cache, targets, start, batch_size, device, *, shuffle=False, drop_last=False, seed=123):
    targets = torch.tensor(targets)

    def collate(idx):
        states = [cache[i] for i in idx]
        if states[0].dim() == 1:  # pooled vectors
            return {"hidden": torch.stack(states).to(device), "start": start, "labels": targets[idx].to(device)}
        hidden = pad_sequence(states, batch_first=True).to(device)
        lengths = torch.tensor([s.shape[0] for s in states], device=device)
        return {"hidden": hidden, "lengths": lengths, "start": start, "labels": targets[idx].to(device)}

    return BatchLoader(len(cache), batch_size, collate, shuffle=shuffle, drop_last=drop_last, seed=seed)


def make_loaders(model, datasets: dict, batch_size: int, device, *, seed=123, cache="auto", log=print):
    """Train/validation/test loaders; cached when `cache` is "on", or "auto" and the cache is exact.
    Returns (loaders, info) where info says whether the cache is used, from which block, and its time."""
    fixed = datasets["train"].max_length if model.pooling == "last" else None
    start = model.frozen_prefix()
    use_cache = cache != "off" and start > 0
    info = {"cache": use_cache, "cache_start_block": start if use_cache else None, "cache_seconds": 0.0}
    loaders = {}
    t0 = time.perf_counter()
    for name, ds in datasets.items():
        kw = dict(shuffle=name == "train", drop_last=name == "train", seed=seed)
        if use_cache:
            states = compute_prefix_cache(model, ds.encoded, start, device, ds.pad_id, fixed)
            loaders[name] = cached_loader(states, ds.targets, start, batch_size, device, **kw)
        else:
            loaders[name] = token_loader(ds, batch_size, device, fixed_length=fixed, **kw)
    if use_cache:
        info["cache_seconds"] = time.perf_counter() - t0
        log(f"cached the frozen blocks 0..{start - 1} once for all splits in {info['cache_seconds']:.1f}s")
    return loaders, info


# ---------------------------------------------------------------- the training loop

@dataclass
class TrainState:
    """Where a run is: enough to resume it exactly (see checkpoint.py)."""
    epoch: int = 0
    batch: int = 0                     # next micro-batch within the epoch
    global_step: int = -1              # optimizer steps taken, minus one (the book's convention)
    examples_seen: int = 0
    order: list | None = None          # this epoch's example order
    history: list = field(default_factory=list)


def train_classifier_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter,
                            *, grad_accum=1, class_weight=None, state=None, on_step=None, log=print, progress=True):
    """Chapter 6's loop: AdamW steps on the cross-entropy of the pooled token's logits, an evaluation of
    train/validation loss every eval_freq steps on eval_iter batches, accuracy on eval_iter batches at
    each epoch end. Returns the book's (train_losses, val_losses, train_accs, val_accs, examples_seen);
    every evaluation is also recorded in state.history. on_step(state, epoch_end) is called after each
    optimizer step and epoch end (for checkpoints); it may raise to stop."""
    from tqdm import tqdm

    state = state or TrainState()
    bs, nb = train_loader.batch_size, len(train_loader)
    total = num_epochs * nb
    bar = tqdm(total=total, initial=state.epoch * nb + state.batch, desc="train", unit="batch",
               disable=not progress, leave=False)
    for epoch in range(state.epoch, num_epochs):
        if state.order is None:
            state.order = train_loader.order()
        model.train()
        for b in range(state.batch, nb):
            batch = train_loader.collate(state.order[b * bs:(b + 1) * bs])
            loss = calc_loss_batch(batch, model, class_weight) / grad_accum
            loss.backward()
            state.batch = b + 1
            state.examples_seen += len(batch["labels"])
            bar.update(1)
            if (b + 1) % grad_accum and b + 1 < nb:
                continue
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            if state.global_step % eval_freq == 0:
                tl = calc_loss_loader(train_loader, model, eval_iter, class_weight)
                vl = calc_loss_loader(val_loader, model, eval_iter, class_weight)
                state.history.append({"epoch": epoch + 1, "step": state.global_step,
                                      "examples_seen": state.examples_seen, "train_loss": tl, "val_loss": vl})
                log(f"Ep {epoch + 1} (Step {state.global_step:06d}): Train loss {tl:.3f}, Val loss {vl:.3f}")
            if on_step:
                on_step(state, False)
        ta = calc_accuracy_loader(train_loader, model, eval_iter)
        va = calc_accuracy_loader(val_loader, model, eval_iter)
        state.history.append({"epoch": epoch + 1, "step": state.global_step, "examples_seen": state.examples_seen,
                              "train_acc": ta, "val_acc": va})
        log(f"Training accuracy: {ta * 100:.2f}% | Validation accuracy: {va * 100:.2f}%")
        state.epoch, state.batch, state.order = epoch + 1, 0, None
        if on_step:
            on_step(state, True)
    bar.close()
    losses = [h for h in state.history if "train_loss" in h]
    accs = [h for h in state.history if "train_acc" in h]
    return ([h["train_loss"] for h in losses], [h["val_loss"] for h in losses],
            [h["train_acc"] for h in accs], [h["val_acc"] for h in accs], state.examples_seen)
