"""kernels/causal_conv1d/cpu.py, the one-token conv of CPU artifacts, against the float64 truth of
tests/test_causal_conv1d.py: fresh random inputs, odd channel counts and widths, a NaN state under reset, steps
chained after a prefill, and a decode pad (count 0, NaN input): state bit-equal, output 0."""

from __future__ import annotations

import pytest
import torch

from gdn.kernels.causal_conv1d import cpu, reference
from test_causal_conv1d import make, truth

TOL = 1e-6  # float32, relative rms


def rel_rms(y: torch.Tensor, y64: torch.Tensor) -> float:
    assert torch.isfinite(y).all()
    return ((y.double() - y64).square().mean().sqrt() / y64.square().mean().sqrt()).item()


@pytest.mark.parametrize("reset", [False, True], ids=["keep", "reset"])
@pytest.mark.parametrize("C,W", [(37, 4), (384, 4), (5, 2), (16, 3)])
@pytest.mark.parametrize("count", [None, 1])
def test_one_token_matches_float64(C, W, reset, count):
    x, state, weight = make(1, C, W, torch.float32, "cpu")
    y64, s64 = truth(x, state, weight, reset)
    if reset:
        state = torch.full_like(state, float("nan"))  # reset must never read it
    n = None if count is None else torch.tensor([count])
    y = cpu.causal_conv1d(x, state, weight, torch.tensor([reset]), n)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert rel_rms(y, y64) < TOL
    assert torch.equal(state.double(), s64), "new conv state differs"


def test_steps_after_a_prefill_match_float64():
    T, steps, C, W = 13, 5, 37, 4
    x, state, weight = make(T + steps, C, W, torch.float32, "cpu")
    y64, s64 = truth(x, state, weight, False)
    no = torch.tensor([False])
    ys = [cpu.causal_conv1d(x[:, :T], state, weight, no)]
    ys += [cpu.causal_conv1d(x[:, T + i : T + i + 1], state, weight, no, torch.tensor([1])) for i in range(steps)]
    assert rel_rms(torch.cat(ys, dim=1), y64) < TOL
    assert torch.equal(state.double(), s64)


def test_decode_pad_keeps_the_state():
    x, state, weight = make(1, 37, 4, torch.float32, "cpu")
    x[:] = float("nan")
    kept = state.clone()
    y = cpu.causal_conv1d(x, state, weight, torch.tensor([False]), torch.tensor([0]))
    assert torch.equal(y, torch.zeros_like(y))
    assert torch.equal(state, kept)


def test_agrees_with_the_reference():
    x, state, weight = make(1, 384, 4, torch.float32, "cpu")
    s1, s2, no = state.clone(), state.clone(), torch.tensor([False])
    torch.testing.assert_close(cpu.causal_conv1d(x, s1, weight, no, torch.tensor([1])),
                               reference.causal_conv1d(x, s2, weight, no, torch.tensor([1])), rtol=1e-6, atol=1e-6)
    assert torch.equal(s1, s2)
