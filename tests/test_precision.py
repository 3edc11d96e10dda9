"""The precision of forwards: the float32 kernel choice, dtype names, and what each refuses."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from llmclf.errors import LlmclfError
from llmclf.precision import OneDNNLinear, fast_float32, onednn_float32_is_faster, resolve_dtype


def _ops(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_onednn_linear_gives_nn_linear_s_outputs_and_gradients():
    torch.manual_seed(0)
    plain = torch.nn.Linear(48, 96)
    fast = torch.nn.Linear(48, 96)
    fast.load_state_dict(plain.state_dict())
    fast_float32(fast, use=True)
    assert type(fast) is OneDNNLinear and list(fast.state_dict()) == ["weight", "bias"]
    x = torch.randn(3, 7, 48)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=0)
        assert "mkldnn::_linear_pointwise" in _ops(lambda: fast(x))  # the oneDNN kernel ran
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    dy = torch.randn(3, 7, 96)
    ops = _ops(lambda: (fast(xa) * dy).sum().backward())
    (plain(xb) * dy).sum().backward()
    assert "mkldnn::_linear_pointwise" in ops and "aten::mm" not in ops and "aten::addmm" not in ops
    for a, b in ((xa.grad, xb.grad), (fast.weight.grad, plain.weight.grad), (fast.bias.grad, plain.bias.grad)):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(x).dtype == torch.bfloat16  # autocast still decides under it


def test_fast_float32_leaves_the_model_alone_when_onednn_is_not_faster():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    fast_float32(model, use=False)
    assert [type(m) for m in model] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    fast_float32(model, use=True)
    assert [type(m) for m in model] == [OneDNNLinear, torch.nn.ReLU, OneDNNLinear]


@pytest.mark.parametrize("forced,expected", [("blas", False), ("onednn", True)])
def test_the_float32_kernel_can_be_forced_instead_of_measured(monkeypatch, forced, expected):
    monkeypatch.setenv("LLMCLF_FLOAT32_KERNEL", forced)
    assert onednn_float32_is_faster.__wrapped__() is expected


def test_dtype_names_resolve_or_refuse_in_one_line():
    assert resolve_dtype("float32", "cpu") == "float32" and resolve_dtype("int8", "cpu") == "int8"
    with pytest.raises(LlmclfError, match="must be one of float32, bfloat16, int8, auto"):
        resolve_dtype("fp16", "cpu")
    with pytest.raises(LlmclfError, match="int8 .* runs on the CPU, not mps"):
        resolve_dtype("int8", "mps")
    with pytest.raises(LlmclfError, match="bfloat16 is offered on cpu and cuda, not mps"):
        resolve_dtype("bfloat16", "mps")
