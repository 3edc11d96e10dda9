"""Independent forward passes side by side, one per CPU core.

A CPU multiplies small matrices poorly on several threads: measured here (2 cores), a 245x768 by 768x3072
product runs at 152 GFLOP/s on 2 threads but at 2 x 86 GFLOP/s as two 1-thread products side by side.
So when a job has many batches (a file to classify, the frozen-prefix cache pass) each core takes whole
batches with one thread of its own. Every batch is computed as it would be alone; only the order of
additions inside a matrix product may differ, so results agree to float rounding.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch


def map_batches(fn, items: list, device, cost=None) -> list:
    """[fn(item) for item in items] under inference_mode (and the caller's autocast), spread over
    torch.get_num_threads() one-thread workers on a CPU (the thread budget the user set stays the total). On
    other devices, or with one thread or one item, it runs in order here. cost(item), if given, estimates an
    item's work: the costliest start first, so no core is left alone with a big one at the end."""
    n = torch.get_num_threads()
    if torch.device(device).type != "cpu" or n < 2 or len(items) < 2:
        with torch.inference_mode():
            return [fn(x) for x in items]

    # Grad mode and autocast are per thread: the caller's settings are set again in each worker.
    amp = torch.is_autocast_enabled("cpu")
    amp_dtype = torch.get_autocast_dtype("cpu")

    def work(x):
        torch.set_num_threads(1)  # this worker's own thread budget
        with torch.inference_mode(), torch.autocast("cpu", dtype=amp_dtype, enabled=amp):
            return fn(x)

    order = sorted(range(len(items)), key=lambda i: -cost(items[i])) if cost else list(range(len(items)))
    results = [None] * len(items)
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=min(n, len(items)), thread_name_prefix="llmclf-batch") as pool:
            for i, r in zip(order, pool.map(work, [items[i] for i in order])):
                results[i] = r
        return results
    finally:
        torch.set_num_threads(n)
