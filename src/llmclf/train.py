"""Fine-tuning: the book's `train_classifier_simple` loop, fed either token ids or a frozen-prefix cache.

Frozen-prefix cache, and why it is exact: with the default recipe every block below the last is frozen
and dropout is off, so those blocks map a text to the same hidden states in every epoch. We run them
once per distinct text (in length-sorted batches, so little padding is computed) and train the top on
the stored states. Right padding plus the causal mask means a real token never sees padding, so a text's
states do not depend on what it was batched with: the cached path computes the same numbers as the
uncached one, only once instead of once per step and per evaluation.

Under torchrun (see distributed.py) the same loop runs data-parallel: every rank draws the same global
batches and trains on its slice of each (`BatchLoader.shard`); DDP (or FSDP) averages the gradients, so N
ranks take the optimizer steps one process would. Evaluations run each rank's slice and all-gather the
logits, so every rank computes the same history and metrics as one process. The prefix cache is split by
chunks across ranks and all-gathered (see `compute_prefix_cache`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from . import distributed
from .blend import macro_f1
from .cache_states import GIB, CachedStates, StateStore
from .data import (BatchLoader, balanced_weights, combine_windows, distinct_sequences, length_sorted_chunks,
                   pack_prefix_trees, pad_batch)
from .errors import LlmclfError
from .parallel import map_batches
from .metrics import (calc_accuracy_loader, calc_loss_batch, calc_loss_loader, classification_loss,
                      classification_metrics, correct, predict_loader)
from .models.common import Attend


# ---------------------------------------------------------------- batches

def token_loader(dataset, batch_size, device, *, shuffle=False, drop_last=False, seed=123, fixed_length=None,
                 weights=None):
    """Batches of padded token ids (pads to the batch's longest text, or to fixed_length in "last" mode)."""
    targets = torch.tensor(dataset.targets)

    def collate(idx):
        ids, lengths = pad_batch([dataset.encoded[i] for i in idx], dataset.pad_id, fixed_length)
        return {"input_ids": ids.to(device), "lengths": lengths.to(device), "labels": targets[idx].to(device)}

    loader = BatchLoader(len(dataset), batch_size, collate, shuffle=shuffle, drop_last=drop_last, seed=seed,
                         rank=distributed.rank(), world=distributed.world(), weights=weights)
    loader.targets = targets
    return loader


def _prefix_tree_batch(rows, pad_id, device):
    """Token ids (B, T) of packed prefix-tree rows, right padded, and the `Attend` of their forward: each
    token's position (its depth in its tree) and the (B, T, T) tree mask."""
    ids, _ = pad_batch([t.tokens for t in rows], pad_id)
    T = ids.shape[1]
    positions = torch.zeros_like(ids)
    mask = torch.eye(T, dtype=torch.bool).repeat(len(rows), 1, 1)  # a pad node sees itself only
    for b, t in enumerate(rows):
        n = len(t.tokens)
        positions[b, :n] = torch.tensor(t.positions)
        mask[b, :n, :n] = torch.from_numpy(t.mask())
    return ids.to(device), Attend.prefix_tree(positions.to(device), mask.to(device))


@torch.inference_mode()
def compute_prefix_cache(model, encoded, start, device, pad_id, fixed_length=None, max_tokens=1024, progress=False,
                         memory_budget: float = 4 * GIB) -> CachedStates:
    """Hidden states entering block `start` for every text (pooled vectors when start == n_layers).

    Each distinct token sequence is computed once, and with the causal mask so is each shared prefix: texts
    are packed into rows of prefix trees (`data.pack_prefix_trees`), where a token's states depend only on
    the tokens before it, exactly as in a row of its own. Without the causal mask, or with the book's
    fixed-length padding, texts go in length-sorted padded chunks instead. Chunks of about max_tokens
    tokens keep the activations in cache (measured here: 1024 runs ~1.5x faster than 8192).

    Under torchrun the chunks are dealt round-robin (rank r computes chunks r, r+N, ...) and the states
    all-gathered, so every rank holds the whole cache for 1/N of the work. Each text is computed in the very
    chunk one process would compute it in, so the cache is the same as in a one-process run.
    progress: a bar of the tokens computed (padded, as the chunks run them), with tokens/s and time left.
    memory_budget: bytes of states held in memory; the rest go to a temporary file (cache_states.py)."""
    from tqdm import tqdm

    seqs, slots = distinct_sequences(encoded)
    pooled = start == len(model.blocks)
    out = StateStore(len(seqs), memory_budget)
    was_training = model.training
    model.eval()

    def keep(i, states):
        """Store text i's states (T_i, D), or its pooled vector when every block is frozen."""
        if pooled:
            states = model.pool(states[None], torch.tensor([states.shape[0]], device=states.device))[0]
        out.put(i, states)

    if model.causal and fixed_length is None:
        plan = _prefix_tree_plan(model, seqs, start, device, pad_id, max_tokens, keep)
    else:
        plan = _padded_plan(model, seqs, start, device, pad_id, fixed_length, max_tokens, keep)
    w, r = distributed.world(), distributed.rank()
    mine = plan.chunks[r::w]  # rank r's chunks: r, r+N, ...
    with tqdm(total=sum(map(plan.cost, mine)), desc="frozen pass", unit="tok", unit_scale=True, leave=False,
              disable=not progress) as bar:
        map_batches(lambda chunk: (plan.run(chunk), bar.update(plan.cost(chunk))), mine, device, cost=plan.cost)
    model.train(was_training)
    if w > 1:
        _gather_cache(out, plan, device)
    return CachedStates(out, slots)


@dataclass
class _CachePlan:
    """How the frozen prefix is computed: the chunks, and for a chunk how to run it (storing each text's
    states through `keep`), which texts it holds, and what it costs (for balancing chunks over CPU cores)."""
    chunks: list
    run: Callable
    members: Callable
    cost: Callable


def _prefix_tree_plan(model, seqs, start, device, pad_id, max_tokens, keep) -> _CachePlan:
    """Causal mask: texts packed into prefix-tree rows, so a shared prefix is computed once."""
    rows = pack_prefix_trees(seqs, row_tokens=128)
    chunks = [[rows[i] for i in c] for c in length_sorted_chunks([len(t.tokens) for t in rows], max_tokens)]

    def run(chunk):
        ids, attend = _prefix_tree_batch(chunk, pad_id, device)
        x = model.backbone.run_blocks(model.backbone.embed(ids, attend.positions), attend, 0, start)
        for b, t in enumerate(chunk):
            for i, path in zip(t.members, t.paths):
                keep(i, x[b, path])

    return _CachePlan(chunks, run, lambda chunk: [i for t in chunk for i in t.members],
                      lambda chunk: len(chunk) * max(len(t.tokens) for t in chunk))


def _padded_plan(model, seqs, start, device, pad_id, fixed_length, max_tokens, keep) -> _CachePlan:
    """No causal mask, or the book's fixed length: length-sorted padded chunks."""
    lengths = [fixed_length or len(s) for s in seqs]

    def run(chunk):
        ids, lens = pad_batch([seqs[i] for i in chunk], pad_id, fixed_length)
        ids, lens = ids.to(device), lens.to(device)
        attn_lengths = None if model.causal else lens  # causal + right padding: real tokens never see pads
        x = model.backbone.run_blocks(model.backbone.embed(ids), Attend.full(attn_lengths, model.causal), 0, start)
        for j, (i, n) in enumerate(zip(chunk, lens.tolist())):
            keep(i, x[j, :n])

    return _CachePlan(list(length_sorted_chunks(lengths, max_tokens)), run, lambda chunk: chunk,
                      lambda chunk: len(chunk) * max(lengths[i] for i in chunk))


def _gather_cache(out: StateStore, plan: _CachePlan, device) -> None:
    """torchrun: every rank computed chunks r, r+N, ...; all-gather them so each rank holds the whole cache."""
    w, r = distributed.world(), distributed.rank()
    owners = [[i for c in plan.chunks[q::w] for i in plan.members(c)] for q in range(w)]
    gathered = distributed.all_gather_tensors([out[i] for i in owners[r]], device)
    for q in range(w):
        for i, t in zip(owners[q], gathered[q]):
            if q != r:
                out.put(i, t)


def states_bytes(states) -> tuple[int, int]:
    """(bytes in memory, bytes in a spill file) of a cache: CachedStates, or a plain list of tensors."""
    if isinstance(states, CachedStates):
        return states.memory_bytes, states.disk_bytes
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in states}.values()), 0


class PrefixCacheStore:
    """Frozen-prefix caches kept for later runs in one process (`llmclf experiment`). Two rows whose frozen
    blocks hold the same weights and read the same token ids get the same states, so the second reuses the
    first's instead of recomputing them (the book table's unbalanced rows differ only in the loss, and five
    rows read the same unpadded texts). The key digests everything the states depend on: the frozen weights
    with their dtype and device (all but the trainable blocks and the class head), the token ids, the pad id
    and padding mode, the causal mask, the pooling when the cache holds pooled vectors, and the autocast
    precision the frozen pass runs under (the caller's, as make_loaders is called). The oldest
    entries are dropped once the stored states pass `max_bytes`."""

    def __init__(self, max_bytes: int = 4 << 30):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[list, int]] = OrderedDict()

    @staticmethod
    def key(model, encoded, start: int, pad_id: int, fixed_length: int | None) -> str:
        h = hashlib.blake2b(digest_size=20)
        blocks = list(model.blocks)
        trained = {id(t) for b in blocks[start:] for t in itertools.chain(b.parameters(), b.buffers())}
        trained |= {id(t) for t in model.backbone.out_head.parameters()}
        pooling = model.pooling if start == len(blocks) else None
        # the frozen pass's precision too: a bfloat16 pass (--dtype bfloat16/auto) gives other states
        amp = [(d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]
        h.update(repr((type(model.backbone).__name__, start, pad_id, fixed_length, model.causal, pooling, amp)).encode())
        for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
            if id(t) in trained:
                continue
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}:{t.device};".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        h.update(np.array([len(e) for e in encoded], dtype=np.int64).tobytes())
        h.update(np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64).tobytes())
        return h.hexdigest()

    def get(self, key: str) -> list | None:
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key][0]

    def put(self, key: str, states) -> None:
        """Keep `states` under `key`; their memory counts towards max_bytes, a spill file does not."""
        size = states_bytes(states)[0]
        if size > self.max_bytes:
            return
        self._entries[key] = (states, size)
        while sum(n for _, n in self._entries.values()) > self.max_bytes:
            self._entries.popitem(last=False)


def cached_loader(cache, targets, start, batch_size, device, *, shuffle=False, drop_last=False, seed=123, weights=None):
    targets = torch.tensor(targets)

    def collate(idx):
        states = [cache[i] for i in idx]
        if states[0].dim() == 1:  # pooled vectors
            return {"hidden": torch.stack(states).to(device), "start": start, "labels": targets[idx].to(device)}
        hidden = pad_sequence(states, batch_first=True).to(device)
        lengths = torch.tensor([s.shape[0] for s in states], device=device)
        return {"hidden": hidden, "lengths": lengths, "start": start, "labels": targets[idx].to(device)}

    loader = BatchLoader(len(cache), batch_size, collate, shuffle=shuffle, drop_last=drop_last, seed=seed,
                         rank=distributed.rank(), world=distributed.world(), weights=weights)
    loader.targets = targets
    return loader


def make_loaders(model, datasets: dict, batch_size: int, device, *, seed=123, cache="auto", log=print,
                 store: PrefixCacheStore | None = None, progress: bool = False, sampler: str = "shuffle",
                 memory_budget: float = 4 * GIB):
    """Train/validation/test loaders; cached when `cache` is "on", or "auto" and the cache is exact; `sampler`
    "balanced" draws the training batches class-balanced (`balanced_weights`).
    Returns (loaders, info) where info says whether the cache is used, from which block, and its time.
    With a `store`, a cache an earlier run computed for the same frozen weights and texts is reused.
    memory_budget: bytes of cached states held in memory, the rest in a temporary file (cache_states.py)."""
    fixed = datasets["train"].max_length if model.pooling == "last" else None
    start = model.frozen_prefix()
    if cache == "on" and start == 0:
        raise LlmclfError("cache on: no block below the trainable part is frozen (or dropout is on), so there is "
                          "nothing exact to cache; use cache auto or off")
    use_cache = cache != "off" and start > 0
    info = {"cache": use_cache, "cache_start_block": start if use_cache else None, "cache_seconds": 0.0}
    loaders = {}
    t0 = time.perf_counter()
    if use_cache:
        # One pass over all splits, so a text that sits in two splits is computed once.
        pad_id = next(iter(datasets.values())).pad_id
        encoded = [e for ds in datasets.values() for e in ds.encoded]
        key = store.key(model, encoded, start, pad_id, fixed) if store is not None else None
        states = store.get(key) if store is not None else None
        info["cache_reused"] = states is not None
        if states is None:
            states = compute_prefix_cache(model, encoded, start, device, pad_id, fixed, progress=progress,
                                          memory_budget=memory_budget)
            if store is not None:
                store.put(key, states)
    offset = 0
    for name, ds in datasets.items():
        balanced = name == "train" and sampler == "balanced"
        kw = dict(shuffle=name == "train", drop_last=name == "train", seed=seed,
                  weights=balanced_weights(ds.targets) if balanced else None)
        if use_cache:
            mine, offset = states[offset:offset + len(ds)], offset + len(ds)
            loaders[name] = cached_loader(mine, ds.targets, start, batch_size, device, **kw)
        else:
            loaders[name] = token_loader(ds, batch_size, device, fixed_length=fixed, **kw)
        # --long-texts windows: which text each row is (per_text); any dataset with encoded/targets works
        loaders[name].owner, loaders[name].text_targets = getattr(ds, "owner", None), getattr(ds, "text_targets", ds.targets)
    if use_cache:
        info["cache_seconds"] = time.perf_counter() - t0
        how = "reused an earlier run's cache of" if info["cache_reused"] else "cached"
        memory, disk = states_bytes(states)
        info.update(cache_memory_bytes=memory, cache_disk_bytes=disk)
        spilled = f" ({disk / GIB:.2f} of {(memory + disk) / GIB:.2f} GiB in a temporary file)" if disk else ""
        log(f"{how} the frozen blocks 0..{start - 1} once for all splits in {info['cache_seconds']:.1f}s{spilled}")
    return loaders, info


# ---------------------------------------------------------------- torchrun: evaluation over all ranks

@torch.no_grad()
def gather_predictions(loader, model, num_batches: int | None = None):
    """predict_loader for a torchrun job: every rank runs the forward for its slice of each global batch
    (`loader.shard`), the slices are all-gathered, and every rank gets the logits (N, C) and targets (N,) of
    the loader's first num_batches batches in input order, plus the batch sizes: what predict_loader returns
    in one process."""
    was_training = model.training
    model.eval()
    n = len(loader) if num_batches is None else min(num_batches, len(loader))
    order, bs = list(range(loader.n)), loader.batch_size
    rows, counts, dev = [], [], None
    for b in range(n):
        idx = order[b * bs:(b + 1) * bs]
        mine, per_rank = loader.shard(idx)
        batch = loader.collate(mine)
        logits = model.forward_batch(batch).float()
        labels = batch["labels"].to(logits.dtype)  # (B,) class ids or (B, C) 0/1 label rows
        rows.append(torch.cat([logits, labels.reshape(len(labels), -1)], 1))
        counts.append(per_rank)
        dev = logits.device
    model.train(was_training)
    if not rows:
        return torch.empty(0, model.num_classes), torch.empty(0, dtype=torch.long), []
    gathered = [g[0].cpu() for g in distributed.all_gather_tensors([torch.cat(rows)], dev)]
    pieces, offset = [], 0
    for per_rank in counts:
        k = -(-sum(per_rank) // len(per_rank))  # each rank's (padded) slice size for this batch
        for q, real in enumerate(per_rank):
            pieces.append(gathered[q][offset:offset + real])
        offset += k
    full, c = torch.cat(pieces), model.num_classes
    targets = full[:, c:] if full.shape[1] == 2 * c and c > 1 else full[:, -1].long()  # label rows, or class ids
    return full[:, :c], targets, [sum(k) for k in counts]


def per_text(loader, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole loader's predictions as one row per text: a windowed split's windows combined (combine_windows),
    with each text's class; any other loader's unchanged."""
    owner = getattr(loader, "owner", None)
    if owner is None:
        return logits, targets
    return combine_windows(logits, owner, len(loader.text_targets)), torch.as_tensor(loader.text_targets)


def gathered_loss_loader(loader, model, num_batches: int | None = None, weight=None) -> float:
    """calc_loss_loader over all ranks: the mean of the global batches' losses."""
    logits, targets, sizes = gather_predictions(loader, model, num_batches)
    if not sizes:
        return float("nan")
    w = None if weight is None else weight.detach().float().cpu()
    losses, start = [], 0
    for m in sizes:
        losses.append(classification_loss(logits[start:start + m], targets[start:start + m], weight=w).item())
        start += m
    return sum(losses) / len(losses)


def gathered_accuracy_loader(loader, model, num_batches: int | None = None) -> float:
    logits, targets, _ = gather_predictions(loader, model, num_batches)
    return float(correct(logits, targets).mean()) if len(targets) else float("nan")


@dataclass
class Parallel:
    """A torchrun rank's part in training (None means one process): `forward` runs a batch with gradient
    synchronisation (DDP around BatchForward, or the FSDP-sharded classifier's forward_batch); `no_sync`, when
    given, skips the all-reduce on micro-batches that do not end an optimizer step (--grad-accum)."""
    forward: Callable
    world: int
    no_sync: Callable | None = None


def parallel_loss(par: Parallel, loader, idx, weight=None) -> torch.Tensor:
    """This rank's loss on its slice of the global batch idx, scaled so that the average over ranks (what DDP
    and FSDP do to gradients) is the one-process loss of the whole batch: the slice mean without class
    weights (equal slices), and sum(w_i * l_i) * N / sum of the global batch's weights with them."""
    mine, _ = loader.shard(idx)
    batch = loader.collate(mine)
    logits = par.forward(batch)
    if weight is None:
        return classification_loss(logits, batch["labels"])
    total = weight[loader.targets[idx].to(weight.device)].sum()
    return F.cross_entropy(logits, batch["labels"], weight=weight, reduction="sum") * par.world / total


def enable_grad_checkpoint(model) -> int:
    """Activation checkpointing (torch.utils.checkpoint, non-reentrant) on every trainable block: its
    activations are recomputed in the backward pass instead of stored, trading about one extra forward of
    those blocks for memory. The numbers do not change (the recomputation repeats the forward exactly; the
    RNG state is restored for dropout). Patches each block's forward in place, so parameter names and saved
    files are unchanged. Returns the number of blocks checkpointed."""
    from torch.utils.checkpoint import checkpoint

    n = 0
    for block in model.blocks:
        if not any(p.requires_grad for p in block.parameters()):
            continue
        def forward(*args, _fwd=block.forward, _block=block, **kwargs):
            if _block.training and torch.is_grad_enabled():
                return checkpoint(_fwd, *args, use_reentrant=False, **kwargs)
            return _fwd(*args, **kwargs)
        block.forward = forward
        n += 1
    return n


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
    seconds: float = 0.0               # run time (data ready -> this checkpoint), earlier processes included
    best_epoch: int | None = None      # --keep best: the epoch (1-based) whose weights are kept so far
    best_value: float | None = None    # ... and its --keep-metric on the whole validation split
    stopped_early: bool = False        # --patience ran out: training is over, whatever --epochs says


def _examples_in_step(order, b: int, batch_size: int, grad_accum: int, n_batches: int) -> int:
    """Examples in the optimizer step that micro-batch b belongs to. Each micro-batch's mean loss is weighted
    by its share of them, so a step averages over the examples it really has: an epoch's short last group
    takes a whole step, not a fraction of one."""
    first = b - b % grad_accum
    return sum(len(order[i * batch_size:(i + 1) * batch_size]) for i in range(first, min(first + grad_accum, n_batches)))


def backward_micro_batch(model, loader, idx, share: float, ends_step: bool, class_weight, parallel, amp) -> None:
    """Accumulate the gradient of one micro-batch, its mean loss weighted by its `share` of the step's examples.
    Under DDP the gradients are synchronised only on the micro-batch that ends the step."""
    if parallel is None:
        with amp():
            loss = calc_loss_batch(loader.collate(idx), model, class_weight) * share
        loss.backward()
        return
    skip_sync = parallel.no_sync is not None and not ends_step
    with parallel.no_sync() if skip_sync else contextlib.nullcontext():
        with amp():
            loss = parallel_loss(parallel, loader, idx, class_weight) * share
        loss.backward()


def _record(state: TrainState, epoch: int, **values) -> None:
    state.history.append({"epoch": epoch + 1, "step": state.global_step, "examples_seen": state.examples_seen,
                          **values})


@dataclass
class LrSchedule:
    """The learning rate of optimizer step t (1-based): a linear warm-up over the first `warmup` fraction of
    `total` steps, then constant or a cosine/linear decay to 0 at step `total`. A function of the step alone,
    so a resumed run (which knows its global step) continues on the same curve without extra state."""
    peak: float
    total: int
    warmup: float = 0.0
    kind: str = "constant"

    def factor(self, t: int) -> float:
        n_warm = round(self.warmup * self.total)
        if t <= n_warm:
            return t / n_warm
        x = min(1.0, (t - n_warm) / max(1, self.total - n_warm))
        return {"constant": 1.0, "cosine": 0.5 * (1 + math.cos(math.pi * x)), "linear": 1.0 - x}[self.kind]

    def set(self, optimizer, t: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = self.peak * self.factor(t)


class KeepBest:
    """--keep best: after each epoch, score the whole validation split by `metric` (macro_f1, accuracy: higher
    is better; loss: lower) and hold a copy of the trainable weights of the best epoch so far (ties: the
    earlier). With `patience`, training stops once that many epochs in a row have not improved on it. The
    copy travels in checkpoints, so a resumed run keeps the same choice."""

    def __init__(self, metric: str = "macro_f1", patience: int = 0):
        self.metric, self.patience = metric, patience
        self.weights: dict = {}  # parameter name -> tensor of the best epoch

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        if self.metric == "loss":
            return float(classification_loss(logits.float(), targets))
        if self.metric == "accuracy":
            return float(correct(logits, targets).mean())
        if targets.is_floating_point():
            return classification_metrics(logits, targets, logits.shape[-1])["macro_f1"]
        return macro_f1(logits.numpy(), targets.numpy(), logits.shape[-1])  # what the blend is chosen by

    def improves(self, value: float, best: float | None) -> bool:
        return best is None or (value < best if self.metric == "loss" else value > best)

    def update(self, state: TrainState, model, val_loader, parallel=None) -> bool:
        """Score the epoch just finished (recorded in its history row); True when patience has run out."""
        logits, targets = predict_loader(val_loader, model) if parallel is None else gather_predictions(val_loader, model)[:2]
        value = self.score(*per_text(val_loader, logits, targets))
        state.history[-1]["val_score"] = value
        if self.improves(value, state.best_value):
            state.best_epoch, state.best_value = state.epoch, value
            self.weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return bool(self.patience) and state.epoch - state.best_epoch >= self.patience

    def restore(self, model) -> None:
        """Put the best epoch's weights back into the model (before it is evaluated and saved)."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, t in self.weights.items():
                params[name].copy_(t)


def steps_per_epoch(n_batches: int, grad_accum: int) -> int:
    return -(-n_batches // grad_accum)


def train_classifier_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter,
                            *, grad_accum=1, class_weight=None, state=None, on_step=None, log=print, progress=True,
                            parallel: Parallel | None = None, autocast=None, schedule: LrSchedule | None = None,
                            keeper: KeepBest | None = None):
    """Chapter 6's loop: AdamW steps on the cross-entropy of the pooled token's logits, an evaluation of
    train/validation loss every eval_freq steps on eval_iter batches, accuracy on eval_iter batches at
    each epoch end. Returns the book's (train_losses, val_losses, train_accs, val_accs, examples_seen);
    every evaluation is also recorded in state.history. on_step(state, epoch_end) is called after each
    optimizer step and epoch end (for checkpoints); it may raise to stop.

    parallel: this rank's part in a torchrun job (see Parallel); batches, evaluations and examples_seen are
    then global, the same on every rank. autocast: a context-manager factory wrapped around forwards
    (bfloat16); backward runs outside it. schedule: each step's learning rate. keeper: --keep best (KeepBest)."""
    from tqdm import tqdm

    amp = autocast or contextlib.nullcontext
    loss_loader = calc_loss_loader if parallel is None else gathered_loss_loader
    accuracy_loader = calc_accuracy_loader if parallel is None else gathered_accuracy_loader
    state = state or TrainState()
    bs, nb = train_loader.batch_size, len(train_loader)
    bar = tqdm(total=num_epochs * nb, initial=state.epoch * nb + state.batch, desc="train", unit="batch",
               disable=not progress, leave=False)
    for epoch in range(state.epoch, num_epochs):
        if state.stopped_early:  # resumed after --patience had ended training: nothing is left to run
            break
        if state.order is None:
            state.order = train_loader.order()
        model.train()
        for b in range(state.batch, nb):
            idx = state.order[b * bs:(b + 1) * bs]
            ends_step = not ((b + 1) % grad_accum and b + 1 < nb)
            share = len(idx) / _examples_in_step(state.order, b, bs, grad_accum, nb)
            backward_micro_batch(model, train_loader, idx, share, ends_step, class_weight, parallel, amp)
            state.batch, state.examples_seen = b + 1, state.examples_seen + len(idx)
            bar.update(1)
            if not ends_step:
                continue
            _optimizer_step(optimizer, schedule, state)
            if state.global_step % eval_freq == 0:
                with amp():
                    tl = loss_loader(train_loader, model, eval_iter, class_weight)
                    vl = loss_loader(val_loader, model, eval_iter, class_weight)
                _record(state, epoch, train_loss=tl, val_loss=vl)
                log(f"Ep {epoch + 1} (Step {state.global_step:06d}): Train loss {tl:.3f}, Val loss {vl:.3f}")
            if on_step:
                on_step(state, False)
        with amp():
            ta, va = accuracy_loader(train_loader, model, eval_iter), accuracy_loader(val_loader, model, eval_iter)
        _record(state, epoch, train_acc=ta, val_acc=va)
        log(f"Training accuracy: {ta * 100:.2f}% | Validation accuracy: {va * 100:.2f}%")
        state.epoch, state.batch, state.order = epoch + 1, 0, None
        if keeper is not None:
            with amp():
                _judge_epoch(keeper, state, model, val_loader, parallel, log)
        if on_step:
            on_step(state, True)
        if state.stopped_early:
            break
    bar.close()
    return book_curves(state)


def _optimizer_step(optimizer, schedule: LrSchedule | None, state: TrainState) -> None:
    """One AdamW step at the schedule's rate for it (else the optimizer's own)."""
    if schedule:
        schedule.set(optimizer, state.global_step + 2)  # global_step counts from -1 (the book)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.global_step += 1


def _judge_epoch(keeper: KeepBest, state: TrainState, model, val_loader, parallel, log) -> None:
    """--keep best at an epoch end: score it on the whole validation split, and stop once patience runs out."""
    state.stopped_early = keeper.update(state, model, val_loader, parallel)
    log(f"Epoch {state.epoch}: validation {keeper.metric} {state.history[-1]['val_score']:.4f} (best: epoch "
        f"{state.best_epoch}, {state.best_value:.4f})" + ("; stopping early" if state.stopped_early else ""))


def book_curves(state: TrainState):
    """The book's return value: (train_losses, val_losses, train_accs, val_accs, examples_seen)."""
    losses = [h for h in state.history if "train_loss" in h]
    accs = [h for h in state.history if "train_acc" in h]
    return ([h["train_loss"] for h in losses], [h["val_loss"] for h in losses],
            [h["train_acc"] for h in accs], [h["val_acc"] for h in accs], state.examples_seen)
