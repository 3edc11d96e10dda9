"""Where the frozen-prefix states live: in memory up to a budget, the rest in a temporary file.

A text's states are written once (by the frozen pass) and read many times (every epoch and evaluation), a
batch at a time. Past the budget they are appended to an unlinked temporary file and read back with pread:
the bytes come back unchanged, so a run whose cache spilled trains exactly as one held in memory. The
file's pages sit in the operating system's page cache, which it reclaims under pressure, not in the process.
"""

from __future__ import annotations

import os
import tempfile
import threading

import torch

GIB = 1 << 30


class StateStore:
    """The states of n texts, put once each (from several threads at a time) and read any number of times."""

    def __init__(self, n: int, budget_bytes: float):
        self.budget = budget_bytes
        self.memory_bytes = self.disk_bytes = 0
        self._ram: list[torch.Tensor | None] = [None] * n
        self._disk: dict[int, tuple[int, tuple, torch.dtype]] = {}  # text -> (offset, shape, dtype)
        self._file = None
        self._lock = threading.Lock()

    def put(self, i: int, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        with self._lock:
            in_memory = self.memory_bytes + nbytes <= self.budget
            if in_memory:
                self.memory_bytes += nbytes
            else:
                if self._file is None:
                    self._file = tempfile.TemporaryFile(prefix="llmclf-cache-")  # gone when closed, or at exit
                offset, self.disk_bytes = self.disk_bytes, self.disk_bytes + nbytes
                self._disk[i] = (offset, tuple(t.shape), t.dtype)
        if in_memory:
            self._ram[i] = t.detach().clone()
        else:
            os.pwrite(self._file.fileno(), _as_bytes(t.detach().cpu().contiguous()), offset)

    def __getitem__(self, i: int) -> torch.Tensor:
        t = self._ram[i]
        if t is not None:
            return t
        offset, shape, dtype = self._disk[i]
        out = torch.empty(shape, dtype=dtype)
        os.preadv(self._file.fileno(), [_as_bytes(out)], offset)
        return out

    def __len__(self) -> int:
        return len(self._ram)


def _as_bytes(t: torch.Tensor):
    """A writable byte view of a contiguous CPU tensor of any dtype (bfloat16 included)."""
    return t.reshape(-1).view(torch.uint8).numpy()


class CachedStates:
    """A list-like view of a StateStore: item k is the states of text index[k] (a repeated text appears once in
    the store and at each of its places here). Slicing gives another view of the same store."""

    def __init__(self, store: StateStore, index: list[int]):
        self.store, self.index = store, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return CachedStates(self.store, self.index[k])
        return self.store[self.index[k]]

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    @property
    def memory_bytes(self) -> int:
        return self.store.memory_bytes

    @property
    def disk_bytes(self) -> int:
        return self.store.disk_bytes
