"""Batches side by side on CPU cores give the batches' results, in order, and leave the thread budget as it was."""

import threading

import torch

from llmclf.parallel import map_batches


def test_map_batches_keeps_order_and_results_and_restores_threads():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 64)
    items = [torch.randn(n, 64) for n in (3, 50, 7, 20, 1, 33)]
    before = torch.get_num_threads()
    seen = []

    def fn(x):
        seen.append((threading.current_thread().name, torch.is_inference_mode_enabled(), torch.get_num_threads()))
        return layer(x)

    got = map_batches(fn, items, "cpu", cost=len)
    assert torch.get_num_threads() == before
    with torch.no_grad():
        for x, y in zip(items, got):
            torch.testing.assert_close(y, layer(x), atol=1e-5, rtol=0)
    assert all(inference for _, inference, _ in seen)  # no autograd graph is kept, in any worker
    if before > 1:  # side by side: worker threads, one intra-op thread each
        assert all(name.startswith("llmclf-batch") and threads == 1 for name, _, threads in seen)


def test_map_batches_runs_in_order_on_one_thread_or_one_item():
    calls = []
    assert map_batches(lambda x: calls.append(x) or x * 2, [5], "cpu") == [10]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert map_batches(lambda x: calls.append(x) or x + 1, [1, 2, 3], "cpu", cost=lambda x: x) == [2, 3, 4]
    finally:
        torch.set_num_threads(old)
    assert calls == [5, 1, 2, 3]


def test_map_batches_carries_the_caller_s_autocast_into_every_worker():
    """Autocast is per thread: a bfloat16 frozen pass or prediction must run in bfloat16 in the workers too."""
    layer = torch.nn.Linear(16, 16)
    items = [torch.randn(n, 16) for n in (4, 9, 2, 6)]
    seen = []

    def fn(x):
        seen.append(torch.is_autocast_enabled("cpu"))
        return layer(x).dtype

    with torch.autocast("cpu", dtype=torch.bfloat16):
        dtypes = map_batches(fn, items, "cpu", cost=len)
    assert dtypes == [torch.bfloat16] * 4 and all(seen)
    assert map_batches(fn, items, "cpu", cost=len) == [torch.float32] * 4  # and none without it
