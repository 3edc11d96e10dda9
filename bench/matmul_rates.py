"""The matrix-product rates this CPU offers a transformer block, per kernel: what llmclf's precision choices rest on.

A block-sized Linear (M x 768 by 768 x 3072, M = 256 and 1024 rows) in float32 by torch's default BLAS (MKL) and
by oneDNN (`torch.ops.mkldnn._linear_pointwise`, what llmclf's OneDNNLinear calls), in bfloat16 (oneDNN) and as
a dynamically quantized int8 Linear; on 1 thread and on all of them. Also prints the CPU flags that matter and
the float32 kernel llmclf picks (precision.onednn_float32_is_faster).

    python bench/matmul_rates.py
"""

from __future__ import annotations

import time
import warnings

import torch
import torch.nn.functional as F

from llmclf.precision import onednn_float32_is_faster
from speed import machine  # bench/: the CPU, its flags that matter, torch and threads


def rate(fn, flop: float, reps: int = 20) -> float:
    """GFLOP/s of fn(): the best of 3 timings of `reps` calls, after a warm-up."""
    fn()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps)
    return flop / best / 1e9


def kernels(m: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(m, 768, generator=g), torch.randn(3072, 768, generator=g), torch.randn(3072, generator=g)
    layer = torch.nn.Linear(768, 3072)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(layer), {torch.nn.Linear}, torch.qint8)
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    return {"float32, MKL (torch's default)": lambda: F.linear(x, w, b),
            "float32, oneDNN": lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""),
            "bfloat16 (oneDNN)": lambda: F.linear(xb, wb, bb),
            "int8 dynamic quantization": lambda: q(x)}


def main() -> None:
    threads = torch.get_num_threads()
    print(f"{time.strftime('%Y-%m-%d')}, {machine()}; "
          f"llmclf's float32 kernel here: {'oneDNN' if onednn_float32_is_faster() else 'BLAS'}\n")
    cols = [(m, t) for m in (256, 1024) for t in sorted({1, threads})]
    print("| kernel | " + " | ".join(f"M={m}, {t} thread{'s' * (t > 1)}" for m, t in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    rows: dict = {}
    with torch.inference_mode():
        for m, t in cols:
            torch.set_num_threads(t)
            for name, fn in kernels(m).items():
                rows.setdefault(name, []).append(rate(fn, 2 * m * 768 * 3072))
    torch.set_num_threads(threads)
    for name, rates in rows.items():
        print(f"| {name} | " + " | ".join(f"{r:.0f} GFLOP/s" for r in rates) + " |")


if __name__ == "__main__":
    main()
