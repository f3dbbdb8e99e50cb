"""kernels/moe/cpu.py, the dense MoE block of CPU artifacts, against the float64 loop over experts
(`reference.moe_shared_float64`): fresh random inputs, odd token counts, routings that send every token to one
expert or leave experts empty, float64 and float32, and never worse than 4x the plain reference's own error."""

from __future__ import annotations

import pytest
import torch

from gdn.kernels.moe import cpu, reference

E, H, I, S, K = 8, 40, 24, 16, 2


def make(T: int, mode: str, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g)
    logits = torch.randn(T, E, generator=g)
    if mode == "hot":
        logits[:, 3] += 30.0
    elif mode == "cold":
        logits[:, 4:] -= 30.0
    rest = torch.randn(T, 2 * S + 1, generator=g)
    gate_up = torch.randn(E, 2 * I, H, generator=g) * H**-0.5
    down = torch.randn(E, H, I, generator=g) * I**-0.5
    shared_down = torch.randn(H, S, generator=g) * S**-0.5
    return [t.to(dtype) for t in (x, torch.cat([logits, rest], 1), gate_up, down, shared_down)]


@pytest.mark.parametrize("renorm", [True, False])
@pytest.mark.parametrize("mode", ["random", "hot", "cold"])
@pytest.mark.parametrize("T", [1, 5, 17, 64])
def test_dense_moe_matches_the_float64_loop(T, mode, renorm):
    # float64 inputs too: the router's softmax runs in float32 (the reference's route), so 1e-6 there
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-5)):
        args = make(T, mode, dtype, seed=T * 10 + len(mode))
        want = reference.moe_shared_float64(*args, K, renorm)
        got = cpu.moe_shared(*args, K, renorm)
        assert got.dtype == dtype and got.shape == (T, H) and not got.isnan().any()
        err, scale = (got.double() - want).abs().max().item(), want.abs().max().item()
        assert err <= tol * scale, f"{dtype}: max err {err:.3e} > {tol} * {scale:.3e}"
        if dtype == torch.float32:
            ref_err = (reference.moe_shared(*args, K, renorm).double() - want).abs().max().item()
            assert err <= 4 * ref_err + tol / 4 * scale, f"max err {err:.3e} vs the plain reference's {ref_err:.3e}"


def dense_from_reference(logits: torch.Tensor, k: int, renorm: bool) -> torch.Tensor:
    weights, ids = reference.route(logits, k, renorm)
    return torch.zeros(logits.shape[0], logits.shape[1], dtype=weights.dtype).scatter(1, ids, weights)


@pytest.mark.parametrize("renorm", [True, False])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_dense_route_equals_the_reference_route(k, renorm):
    """Random logits, ties (repeated values, all equal: the lower experts win), one hot expert: the same experts
    as the reference's k argmax passes, with its weights (renormalised: the k-term sum in another order, an ulp)."""
    g = torch.Generator().manual_seed(k)
    logits = torch.randn(37, E, generator=g)
    logits[:5] = torch.randint(0, 3, (5, E), generator=g).float()  # many ties
    logits[5] = 1.0
    logits[6, 3] += 40.0
    got = cpu.dense_route(logits, k, renorm)
    want = dense_from_reference(logits, k, renorm)
    assert torch.equal(got != 0, want != 0), "other experts selected"
    torch.testing.assert_close(got, want, rtol=0 if k < 3 or not renorm else 3e-7, atol=0)


def test_many_experts_keep_the_reference_gather():
    """Beyond DENSE_MAX_EXPERTS the CPU kernel is the reference itself (bit-equal), not E / top_k times the work."""
    g = torch.Generator().manual_seed(3)
    n = cpu.DENSE_MAX_EXPERTS + 1
    x, router = torch.randn(5, H, generator=g), torch.randn(5, n + 2 * S + 1, generator=g)
    gate_up, down = torch.randn(n, 2 * I, H, generator=g), torch.randn(n, H, I, generator=g)
    shared_down = torch.randn(H, S, generator=g)
    args = (x, router, gate_up, down, shared_down, K, True)
    assert torch.equal(cpu.moe_shared(*args), reference.moe_shared(*args))
