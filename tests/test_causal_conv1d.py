"""Triton causal conv1d + SiLU against a float64 computation.

Tolerances (relative RMS of y against float64 from the same rounded inputs): float32 1e-5; bfloat16 1e-2
(y itself is rounded to bf16). The new conv state is a copy of inputs: it must be exactly equal.
CPU cases run through TRITON_INTERPRET=1 at small widths; `cuda` cases use the real conv widths.
Pads (rows count .. T-1, NaN here: the contract allows garbage): y 0 there, the real rows and the state as the
call without them (the float64 truth; the kernel's y bit-equal to its unpadded call, the state always).
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from gdn.kernels.causal_conv1d import reference, triton_conv

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


# ---------------------------------------------------------------- pads (count < T)

def pads_match(n: int, pads: int, C: int, W: int, dtype, reset: bool, device: str, kernel: bool) -> None:
    """n real rows then `pads` NaN rows, count = n on the device; kernel: the Triton kernel (NaN-poisoned out),
    else the reference."""
    x, state, weight = make(n + pads, C, W, dtype, device)
    x[:, n:] = float("nan")
    y64, s64 = truth(x[:, :n], state, weight, reset)
    fn = triton_conv.causal_conv1d if kernel else reference.causal_conv1d
    extra = (lambda t: {"out": torch.full_like(t, float("nan"))}) if kernel else (lambda t: {})
    flag = torch.tensor([reset], device=device)
    plain_state = state.clone()
    want = fn(x[:, :n].contiguous(), plain_state, weight, flag, None, **extra(x[:, :n])) if n else None
    y = fn(x, state, weight, flag, torch.tensor([n], device=device), **extra(x))
    assert torch.equal(y[:, n:], torch.zeros_like(y[:, n:])), "a pad row is not 0"
    assert torch.equal(state.double(), s64), "new conv state differs from the last real inputs"
    if n:
        err = ((y[:, :n].double() - y64).square().mean().sqrt() / y64.square().mean().sqrt()).item()
        assert err < TOL[dtype], f"y rel rms {err:.2e}"
        assert torch.equal(state, plain_state), "the state differs from the unpadded call's"
        # the kernel computes each row alike at any T; torch's CPU silu takes a vector or a scalar path by size
        torch.testing.assert_close(y[:, :n], want, rtol=0 if kernel else 1e-6, atol=0 if kernel else 1e-7)


# (real rows, pads): fewer real rows than the state (1, 2: the new state reaches into the old one), buckets of
# 2, 16, 32, 64, 128, pads past a time block (BT 32), and a decode pad (0, 1)
PADS = ((1, 1), (2, 2), (1, 15), (15, 1), (17, 15), (33, 31), (63, 1), (65, 63), (3, 125), (0, 1))
PAD_IDS = [f"n{n}-pads{p}" for n, p in PADS]


@interpreted
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("n,pads", PADS, ids=PAD_IDS)
def test_conv_pads_cpu(n, pads, dt):
    pads_match(n, pads, 200, 4, DTYPES[dt], False, "cpu", kernel=True)


@interpreted
@pytest.mark.parametrize("W", [2, 3], ids=["W2", "W3"])
def test_conv_pads_widths_cpu(W):
    pads_match(1, 7, 136, W, torch.float32, True, "cpu", kernel=True)
    pads_match(2, 6, 136, W, torch.float32, False, "cpu", kernel=True)


REF_PADS = [(n, p, r) for n, p in PADS for r in (False, True) if n or not r]  # a decode pad (n 0) never resets


@pytest.mark.parametrize("n,pads,reset", REF_PADS, ids=[f"n{n}-pads{p}-{('keep', 'reset')[r]}" for n, p, r in REF_PADS])
def test_reference_pads(n, pads, reset):
    pads_match(n, pads, 40, 4, torch.float32, reset, "cpu", kernel=False)


def test_op_on_cpu_runs_the_reference_with_pads():
    x, state, weight = make(9, 40, 4, torch.float32, "cpu")
    no, count = torch.tensor([False]), torch.tensor([5])
    s2 = state.clone()
    got = torch.ops.gdn.causal_conv1d(x, state, weight, no, count)
    assert torch.equal(got, reference.causal_conv1d(x, s2, weight, no, count)) and torch.equal(state, s2)


@pytest.mark.cuda
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("n,pads", PADS + ((1000, 24), (4000, 96)), ids=PAD_IDS + ["n1000-pads24", "n4000-pads96"])
def test_conv_pads_cuda(n, pads, dt):
    pads_match(n, pads, 8192, 4, DTYPES[dt], False, "cuda", kernel=True)
