"""Triton causal conv1d + SiLU against a float64 computation.

Tolerances (relative RMS of y against float64 from the same rounded inputs): float32 1e-5; bfloat16 1e-2
(y itself is rounded to bf16). The new conv state is a copy of inputs: it must be exactly equal.
CPU cases run through TRITON_INTERPRET=1 at small widths; `cuda` cases use the real conv widths.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from gdn.kernels.causal_conv1d import triton_conv

interpreted = pytest.mark.interpret
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
LENGTHS = (1, 2, 3, 63, 64, 65, 127, 500, 1000)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def truth(x, state, weight, reset: bool):
    """float64: y [1, T, C] and the new state [1, W-1, C]."""
    W = weight.shape[1]
    full = torch.cat([torch.zeros_like(state) if reset else state, x], dim=1).double()
    T = x.shape[1]
    acc = sum(full[:, j : j + T] * weight[:, j].double() for j in range(W))
    return F.silu(acc), full[:, -(W - 1) :]


def make(T: int, C: int, W: int, dtype, device: str):
    x = torch.randn(1, T, C, device=device).to(dtype)
    state = torch.randn(1, W - 1, C, device=device).to(dtype)
    weight = torch.randn(C, W, device=device) * 0.5
    return x, state, weight


def conv_matches(T: int, C: int, W: int, dtype, reset: bool, device: str) -> None:
    x, state, weight = make(T, C, W, dtype, device)
    y64, s64 = truth(x, state, weight, reset)
    if reset:
        state = torch.full_like(state, float("nan"))  # reset must never read it
    out = torch.full_like(x, float("nan"))
    y = triton_conv.causal_conv1d(x, state, weight, torch.tensor([reset], device=device), out=out)
    assert torch.isfinite(y).all()
    err = ((y.double() - y64).square().mean().sqrt() / y64.square().mean().sqrt()).item()
    assert err < TOL[dtype], f"y rel rms {err:.2e}"
    assert torch.equal(state.double(), s64), "new conv state differs"


def prefill_then_decode(T: int, C: int, W: int, dtype, device: str, steps: int = 4) -> None:
    x, state, weight = make(T + steps, C, W, dtype, device)
    y64, s64 = truth(x, state, weight, False)
    no = torch.tensor([False], device=device)
    ys = [triton_conv.causal_conv1d(x[:, :T], state, weight, no)]
    ys += [triton_conv.causal_conv1d(x[:, T + i : T + i + 1], state, weight, no) for i in range(steps)]
    y = torch.cat(ys, dim=1).double()
    assert ((y - y64).square().mean().sqrt() / y64.square().mean().sqrt()).item() < TOL[dtype]
    assert torch.equal(state.double(), s64)


@interpreted
@pytest.mark.parametrize("reset", [False, True], ids=["keep", "reset"])
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("T", LENGTHS, ids=[f"T{t}" for t in LENGTHS])
def test_conv_cpu(T, dt, reset):
    conv_matches(T, 200, 4, DTYPES[dt], reset, "cpu")


@interpreted
@pytest.mark.parametrize("W", [2, 3, 4], ids=["W2", "W3", "W4"])
def test_conv_widths_cpu(W):
    conv_matches(5, 136, W, torch.float32, False, "cpu")


@interpreted
@pytest.mark.parametrize("T", [1, 2, 65], ids=["T1", "T2", "T65"])
def test_conv_prefill_then_decode_cpu(T):
    prefill_then_decode(T, 200, 4, torch.float32, "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("reset", [False, True], ids=["keep", "reset"])
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("C", [8192], ids=["C8192"])
@pytest.mark.parametrize("T", (1, 2, 65, 1000, 8192), ids=["T1", "T2", "T65", "T1000", "T8192"])
def test_conv_cuda(T, C, dt, reset):
    conv_matches(T, C, 4, DTYPES[dt], reset, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("T", [1, 1000], ids=["T1", "T1000"])
def test_conv_prefill_then_decode_cuda(T, dt):
    prefill_then_decode(T, 8192, 4, DTYPES[dt], "cuda")


@pytest.mark.cuda
def test_conv_op_equals_kernel_cuda():
    x, state, weight = make(65, 8192, 4, torch.bfloat16, "cuda")
    s2 = state.clone()
    no = torch.tensor([False], device="cuda")
    want = triton_conv.causal_conv1d(x, state, weight, no)
    poison = torch.full_like(x, float("nan"))
    del poison
    got = torch.ops.gdn.causal_conv1d(x, s2, weight, no)
    assert torch.equal(got, want) and torch.equal(state, s2)
