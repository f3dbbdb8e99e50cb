"""kernels/gated_delta_rule/cpu.py, the padded chunked gated delta rule of CPU artifacts, against the float64
recurrence: fresh random inputs, odd lengths (one token, within a chunk, exactly one, across two), random and
trained-model-like (nearly parallel) keys, a NaN-poisoned state under reset; outputs and the written state."""

from __future__ import annotations

import pytest
import torch

from gdn.kernels.gated_delta_rule import cpu, reference
from test_gated_delta_rule import Case, check, make, truth


@pytest.mark.parametrize("keys", ["random", "aligned"])
@pytest.mark.parametrize("T", [1, 5, 63, 64, 65, 127])
def test_padded_chunk_matches_the_float64_recurrence(T, keys):
    c = Case(T, 2, 4, 16, 16, torch.float32, "rand", keys)
    x = make(c, "cpu")
    o64, s64 = truth(x, gates="given")
    state = x["state"].clone()
    o = cpu.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], state, torch.tensor([False]))
    assert o.shape == x["v"].shape
    check(c, o, state, o64, s64)
    # and the reference's own result, to float32 rounding (padding adds exact zeros only)
    state_ref = x["state"].clone()
    args = (x["q"], x["k"], x["v"], x["g"], x["beta"])
    o_ref = reference.chunk_gated_delta_rule(*args, state_ref, torch.tensor([False]))
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, state_ref, rtol=1e-5, atol=1e-5)


def test_reset_ignores_a_nan_state():
    c = Case(9, 2, 4, 16, 16, torch.float32, "zero")
    x = make(c, "cpu")
    o64, s64 = truth(x, gates="given")
    state = torch.full_like(x["state"], float("nan"))
    o = cpu.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], state, torch.tensor([True]))
    check(c, o, state, o64, s64)


def test_padded_length():
    assert [cpu.padded_length(t) for t in (1, 63, 64, 65, 128)] == [64, 64, 64, 128, 128]
