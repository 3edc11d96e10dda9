"""The precision a forward pass runs in: float32, bfloat16 or int8, by name or detected (`auto`).

- bfloat16 is mixed precision: matrix products and attention in bfloat16 (autocast), norms and the residual
  stream in float32. Training keeps float32 weights and AdamW state (a 5e-5 step is below bfloat16's
  resolution for most weights, which would then never move); inference also stores the blocks' Linear
  weights in bfloat16 once, so no batch pays for casting them.
- int8 (inference on a CPU, by name only): dynamic quantization of the blocks' Linear layers, weights int8
  per output channel, each batch's activations quantized on the fly.
- auto: bfloat16 where the hardware computes it natively (avx512_bf16/amx_bf16, a bfloat16 GPU), else
  float32. Without native support bfloat16 is emulated and slower than float32, so auto never picks it there.

float32 itself has two CPU kernels for a Linear layer: torch's default BLAS (MKL) and oneDNN. They differ
by machine: on an AMD EPYC with AVX-512, MKL's sgemm ran 106 GFLOP/s per core and oneDNN's 234 (MKL picks
its AVX-512 code only on Intel CPUs). `fast_float32` measures both once per process and, where oneDNN is
clearly faster, runs the float32 products on it: prediction, the frozen pass, evaluation, and training's
forwards and backwards.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import LlmclfError

INFERENCE_DTYPES = ("float32", "bfloat16", "int8", "auto")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); without it bf16 is emulated, slowly."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def native_bf16(device) -> bool:
    kind = torch.device(device).type
    return torch.cuda.is_bf16_supported() if kind == "cuda" else kind == "cpu" and cpu_has_native_bf16()


def resolve_dtype(choice: str, device, flag: str = "--dtype") -> str:
    """float32, bfloat16 or int8 for `choice` on `device`; a one-line error where it cannot run."""
    kind = torch.device(device).type
    if choice not in INFERENCE_DTYPES:
        raise LlmclfError(f"{flag} must be one of {', '.join(INFERENCE_DTYPES)} (got {choice!r})")
    if choice == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    if choice == "bfloat16" and kind not in ("cuda", "cpu"):
        raise LlmclfError(f"{flag} bfloat16 is offered on cpu and cuda, not {kind}; use {flag} float32")
    if choice == "bfloat16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise LlmclfError(f"{flag} bfloat16: this GPU does not support bfloat16; use {flag} float32")
    if choice == "int8" and kind != "cpu":
        raise LlmclfError(f"{flag} int8 (dynamic quantization) runs on the CPU, not {kind}; use bfloat16 or float32")
    return choice


def autocast(dtype: str, device):
    """The context a forward runs in: bfloat16 autocast, or nothing (float32; int8 layers quantize themselves)."""
    if dtype == "bfloat16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def for_inference(model, dtype: str):
    """The classifier prepared to predict in `dtype` (changed in place, and returned). The class head and the
    norms stay float32 in every case: they are a sliver of the work."""
    blocks = model.backbone.trf_blocks
    if dtype == "float32":
        fast_float32(model)
    elif dtype == "bfloat16":
        for m in blocks.modules():
            if isinstance(m, torch.nn.Linear):
                m.to(torch.bfloat16)
    elif dtype == "int8":
        with warnings.catch_warnings():  # torch.ao's deprecation notices; the kernels are the ones torch ships
            warnings.simplefilter("ignore")
            model.backbone.trf_blocks = torch.ao.quantization.quantize_dynamic(blocks, {torch.nn.Linear}, torch.qint8)
    return model


# ------------------------------------------------------------------ the float32 Linear kernel

def _onednn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x @ w.T + b by oneDNN (x and w may be strided views: transposes cost no copy)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    """y = x W^T + b with oneDNN's GEMM forwards and backwards: dx = dy W, dW = dy^T x, db = sum dy."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
        dx = _onednn(dy, weight.t()) if ctx.needs_input_grad[0] else None
        dw = _onednn(dy2.t(), x2.t()) if ctx.needs_input_grad[1] else None
        db = dy2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


class OneDNNLinear(torch.nn.Linear):
    """nn.Linear whose float32 CPU products run on oneDNN's GEMM, forwards and backwards (the same float32
    products, summed in another order: outputs agree to ~1e-6). Anything else (autocast, other devices and
    dtypes, a graph being compiled or exported) takes nn.Linear's own path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32
                or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling() or torch.compiler.is_exporting()
                or torch.jit.is_tracing()):
            return super().forward(x)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _OneDNNLinearFunction.apply(x, self.weight, self.bias)
        return _onednn(x, self.weight, self.bias)


@functools.lru_cache(maxsize=1)
def onednn_float32_is_faster() -> bool:
    """Whether oneDNN's float32 GEMM beats the default one by 20% or more on this CPU, measured once on a
    block-sized product (about 0.1 s). LLMCLF_FLOAT32_KERNEL=blas|onednn skips the measurement."""
    forced = os.environ.get("LLMCLF_FLOAT32_KERNEL", "auto")
    if forced in ("blas", "onednn"):
        return forced == "onednn"
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(256, 768, generator=g), torch.randn(3072, 768, generator=g)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    with torch.inference_mode():
        blas = best(lambda: F.linear(x, w))
        onednn = best(lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""))
    return onednn * 1.2 < blas


def fast_float32(model: torch.nn.Module, use: bool | None = None) -> torch.nn.Module:
    """Every plain nn.Linear of `model` made a OneDNNLinear where oneDNN is the faster float32 kernel (in
    place: the same parameters, names and state dict; returns the model). use: the choice made elsewhere
    (torchrun: rank 0's, so that every rank computes with the same kernel). A model off the CPU is left as it
    is, unmeasured: OneDNNLinear would take nn.Linear's path there anyway."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        return model
    if onednn_float32_is_faster() if use is None else use:
        for m in model.modules():
            if type(m) is torch.nn.Linear:
                m.__class__ = OneDNNLinear
    return model
