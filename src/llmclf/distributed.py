"""Data-parallel runs under torchrun: process group, this rank's device, collectives, failure reporting.

`torchrun --nproc_per_node N -m llmclf train ...` starts N copies of llmclf with WORLD_SIZE, RANK and
LOCAL_RANK set. `init()` joins them into one process group: gloo for CPU tensors, plus NCCL for CUDA
tensors when CUDA is available (backend "cpu:gloo,cuda:nccl", so object collectives go through gloo and
tensors on a GPU through NCCL); each rank uses GPU LOCAL_RANK. Every collective has a finite timeout
(LLMCLF_DIST_TIMEOUT seconds, default 600), so a dead peer ends the job instead of hanging it; torchrun
itself stops the other ranks as soon as one exits non-zero.

Without torchrun (or with WORLD_SIZE=1) nothing here does anything: `world()` is 1, `is_main()` is true,
`agree(fn)` and `from_main(fn)` just call fn, and no process group is created.

Errors: an `LlmclfError` that every rank raises identically (the same options, the same data) becomes a
`SameOnAllRanks` error, printed once by rank 0; an error on some ranks only is printed by each failing rank
with its rank number while the others exit quietly (`PeerFailed`); any other exception prints its traceback
and one line naming the rank (see cli.main).

Test hook: LLMCLF_TEST_FAIL_RANK=R makes rank R raise RuntimeError just before the training loop, to test
that one crashed rank ends the whole job with a clear message (tests/test_distributed.py). It acts only in
a torchrun job and is meant for tests alone.
"""

from __future__ import annotations

import datetime
import os
import sys

import torch

from .errors import LlmclfError

TIMEOUT_ENV = "LLMCLF_DIST_TIMEOUT"
TEST_FAIL_RANK_ENV = "LLMCLF_TEST_FAIL_RANK"

_active = False


class SameOnAllRanks(LlmclfError):
    """An error every rank hit identically: rank 0 reports it, the others exit quietly."""


class PeerFailed(LlmclfError):
    """Another rank failed (and reported why); this rank exits quietly."""


# ---------------------------------------------------------------- who am I

def launched() -> bool:
    """True when started by torchrun with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def active() -> bool:
    return _active


def world() -> int:
    return int(os.environ["WORLD_SIZE"]) if _active else 1


def rank() -> int:
    return int(os.environ["RANK"]) if _active else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if _active else 0


def is_main() -> bool:
    return rank() == 0


def timeout() -> datetime.timedelta:
    try:
        seconds = float(os.environ.get(TIMEOUT_ENV, "600"))
    except ValueError:
        raise LlmclfError(f"{TIMEOUT_ENV} must be a number of seconds") from None
    return datetime.timedelta(seconds=seconds)


# ---------------------------------------------------------------- setup and teardown

def init() -> None:
    """Join the torchrun job (idempotent); does nothing outside torchrun or with one process."""
    global _active
    if _active or not launched():
        return
    import torch.distributed as dist
    if not dist.is_available():
        raise LlmclfError("launched by torchrun, but this torch build has no torch.distributed")
    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timeout())
    _active = True


def shutdown() -> None:
    """Leave the process group after a successful command (an error path just exits)."""
    global _active
    if _active:
        import torch.distributed as dist
        dist.destroy_process_group()
        _active = False


def pick_device(device: str = "auto") -> str:
    """The device for `auto`: CUDA, else Apple's MPS, else the CPU; any other request as it is."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def device(requested: str) -> str:
    """This rank's device for a requested one (auto | cpu | cuda | cuda:K | mps): CUDA means GPU LOCAL_RANK."""
    dev = pick_device(requested)
    if not _active:
        return dev
    kind = torch.device(dev).type
    if kind == "cuda" and torch.device(dev).index is None:
        return f"cuda:{local_rank()}"
    if kind not in ("cpu", "cuda"):
        raise SameOnAllRanks(f"--device {dev}: torchrun runs need cpu or cuda devices")
    return dev


def check_global_batch(batch_size: int) -> None:
    """--batch-size is the global batch: every rank takes batch_size / N examples of it."""
    if batch_size % world():
        raise SameOnAllRanks(f"--batch-size {batch_size} is the global batch and must be divisible by the number "
                             f"of processes ({world()}); use a multiple of {world()}")


def test_hook() -> None:
    """LLMCLF_TEST_FAIL_RANK=R: rank R crashes here (tests only; see the module docstring)."""
    target = os.environ.get(TEST_FAIL_RANK_ENV)
    if _active and target is not None and target.strip() == str(rank()):
        raise RuntimeError(f"{TEST_FAIL_RANK_ENV}={target}: simulated crash on rank {rank()} (test hook)")


# ---------------------------------------------------------------- collectives

def barrier() -> None:
    if _active:
        import torch.distributed as dist
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """rank src's obj on every rank (pickled; for small things and raw bytes)."""
    if not _active:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's obj, in rank order."""
    if not _active:
        return [obj]
    import torch.distributed as dist
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when flag is true on any rank."""
    if not _active:
        return bool(flag)
    import torch.distributed as dist
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_gather_tensors(tensors: list, device) -> list[list[torch.Tensor]]:
    """Every rank's list of tensors (any shapes and count, one dtype) on every rank, as a list per rank, on
    `device`. Exact: values are copied, not reduced. Shapes travel as objects, values in one padded all_gather."""
    if not _active:
        return [list(tensors)]
    import torch.distributed as dist
    meta = all_gather_object(([tuple(t.shape) for t in tensors], str(tensors[0].dtype) if tensors else None))
    dtypes = {d for _, d in meta if d is not None}
    if len(dtypes) > 1:
        raise RuntimeError(f"all_gather_tensors: ranks hold different dtypes {sorted(dtypes)}")
    dtype = getattr(torch, dtypes.pop().removeprefix("torch.")) if dtypes else torch.float32
    sizes = [sum(_numel(s) for s in shapes) for shapes, _ in meta]
    longest = max(sizes)
    flat = torch.zeros(longest, dtype=dtype, device=device)
    if tensors:
        mine = torch.cat([t.reshape(-1) for t in tensors])
        flat[: mine.numel()] = mine
    parts = [torch.empty(longest, dtype=dtype, device=device) for _ in range(world())]
    dist.all_gather(parts, flat)
    out = []
    for part, (shapes, _) in zip(parts, meta):
        pieces, offset = [], 0
        for s in shapes:
            n = _numel(s)
            pieces.append(part[offset:offset + n].view(s))
            offset += n
        out.append(pieces)
    return out


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def contiguous_shard(n: int) -> tuple[int, int]:
    """[lo, hi) of n items that this rank handles: contiguous, sizes differ by at most one."""
    r, w = rank(), world()
    return r * n // w, (r + 1) * n // w


# ---------------------------------------------------------------- agreeing on errors

def agree(fn):
    """Run fn on every rank and agree on the outcome: when some rank raised LlmclfError, every rank raises
    (identical errors become SameOnAllRanks, reported once; otherwise the failing ranks report theirs and the
    others exit quietly) instead of some ranks going on to a collective that never completes."""
    if not _active:
        return fn()
    try:
        result, err = fn(), None
    except LlmclfError as e:
        result, err = None, e
    messages = all_gather_object(None if err is None else str(err))
    failed = [r for r, m in enumerate(messages) if m is not None]
    if not failed:
        return result
    if len(failed) == world() and len(set(messages)) == 1:
        raise SameOnAllRanks(messages[0]) from None
    if err is not None:
        raise err
    raise PeerFailed(f"rank(s) {', '.join(map(str, failed))} failed")


def from_main(fn):
    """fn's result computed on rank 0 only and sent to every rank (rank 0 reads files, say; the others may not
    see them on another node); an LlmclfError on rank 0 is raised on every rank and reported once."""
    if not _active:
        return fn()
    payload = None
    if is_main():
        try:
            payload = ("ok", fn())
        except LlmclfError as e:
            payload = ("error", str(e))
    kind, value = broadcast_object(payload)
    if kind == "error":
        raise SameOnAllRanks(value)
    return value


def error_prefix(exc: BaseException | None = None) -> str | None:
    """What cli.main prints before an error's message on this rank, or None to stay silent."""
    if not launched():
        return "llmclf: error: "
    if isinstance(exc, PeerFailed):
        return None
    r, w = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    if isinstance(exc, SameOnAllRanks):
        return "llmclf: error: " if r == "0" else None
    return f"llmclf: error: rank {r} of {w}: "


def report_crash(exc: BaseException) -> None:
    """An unexpected exception on one rank of a torchrun job: its traceback and one line naming the rank. A
    rank whose collective failed because a peer went away says only that (the peer reports its own cause)."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    if _peer_lost(exc):
        print(f"{error_prefix(exc)}lost contact with another rank, which probably failed (see its message): "
              f"{first[:200]}", file=sys.stderr, flush=True)
        return
    import traceback
    traceback.print_exc()
    print(f"{error_prefix(exc)}crashed with {type(exc).__name__}: {first}", file=sys.stderr, flush=True)


def _peer_lost(exc: BaseException) -> bool:
    import torch.distributed as dist
    text = str(exc)
    return (isinstance(exc, getattr(dist, "DistError", ())) or "Connection closed by peer" in text
            or "Connection reset by peer" in text or "Broken pipe" in text)


# ---------------------------------------------------------------- wrapping the model

class BatchForward(torch.nn.Module):
    """The module DDP wraps: forward(batch) is the classifier's forward_batch, so cached hidden states and token
    ids both go through DDP's gradient synchronisation."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.forward_batch(batch)


def wrap_ddp(model, dev: str):
    """DistributedDataParallel over the classifier (gradients averaged across ranks in backward)."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    d = torch.device(dev)
    return DDP(BatchForward(model), device_ids=[d.index] if d.type == "cuda" else None,
               find_unused_parameters=False)


def shard_fsdp(model) -> None:
    """FSDP2 (torch.distributed.fsdp.fully_shard): each transformer block, then the rest of the classifier, is
    sharded over the ranks; parameters are all-gathered per block for forward and backward, gradients are
    reduce-scattered (averaged). In place: the model's parameters become DTensor shards."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        raise SameOnAllRanks("--fsdp needs torch >= 2.6 (torch.distributed.fsdp.fully_shard)") from None
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)


def full_model_copy(model):
    """An unsharded copy of an FSDP-sharded classifier on rank 0 (None elsewhere), for saving. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from .classifier import TextClassifier
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main():
        return None
    with torch.device("meta"):
        backbone = type(model.backbone)(model.backbone.cfg)
        plain = TextClassifier(backbone, model.num_classes, model.pooling, model.causal, model.head_bias)
    plain.load_state_dict(state, assign=True)
    return plain
