"""Triton one-token projection with the residual add and RMS norm in front (gdn::norm_gemv) against float64.

Per tensor, against float64 from the same rounded inputs:
- r = x + delta: exact (one rounding of an exact float32 sum, as the reference rounds it).
- n = r / rms(r) * (1 + g): |n - n64| <= (eps(dtype) + 32 eps(float32)) |n64| + 1e-30: one rounding to the dtype
  after float32 arithmetic (a K-term sum of squares, rsqrt, two products) of a few float32 units.
- y = n @ w^T with n in float64 (the kernel factors 1 / rms out of the dot, so y does not see n's rounding):
  as tests/test_gemv.py, float32 1e-5, bfloat16 1e-2 of the forward-error scale sum_k |n_k w_nk| and of y's
  relative RMS.
CPU cases run the kernel through TRITON_INTERPRET=1 at small odd shapes; `cuda` cases at Qwen3.5-35B-A3B's
MoE router/shared projection and lm_head, and at Qwen3.5-2B's gate_up.
"""

from __future__ import annotations

import pytest
import torch

import gdn.kernels  # noqa: F401  (registers torch.ops.gdn.*)
from gdn.kernels.gemv import reference as ref
from gdn.kernels.gemv import triton_gemv
from gdn.kernels.gemv.triton_gemv import PDL_MAX_K, GemvConfig, default_config
from gdn.kernels.gemv.triton_norm_gemv import norm_gemv

interpreted = pytest.mark.interpret
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
EPS = 1e-6


def inputs(N: int, K: int, dtype, device: str, delta: bool):
    x = (torch.randn(1, K, device=device) * 3).to(dtype)
    d = (torch.randn(1, K, device=device) * 3).to(dtype) if delta else None
    g = (torch.randn(K, device=device) * 0.5).to(dtype)
    w = (torch.randn(N, K, device=device) * K**-0.5).to(dtype)
    return x, d, g, w


def check(x, d, g, w, got) -> None:
    y, r, n = got
    dtype = x.dtype
    assert all(torch.isfinite(t).all() for t in got)
    r64 = x.double() if d is None else x.double() + d.double()
    assert torch.equal(r, r64.to(dtype)), "r is not the rounded sum"
    n64 = r.double() * torch.rsqrt(r.double().square().mean(-1, keepdim=True) + EPS) * (1 + g.double())
    rel = torch.finfo(dtype).eps + 32 * torch.finfo(torch.float32).eps
    n_err = (n.double() - n64).abs()
    assert (n_err <= rel * n64.abs() + 1e-30).all(), f"n max err / |n| {(n_err / n64.abs()).max().item():.2e}"
    want = n64 @ w.double().T  # [1, N]
    diff = (y.double() - want).abs()
    bound = n64.abs() @ w.double().abs().T
    assert (diff <= TOL[dtype] * bound).all(), f"y max err / bound {(diff / bound).max().item():.2e}"
    if w.shape[0] > 1:
        err = (diff.square().mean().sqrt() / want.square().mean().sqrt()).item()
        assert err < TOL[dtype], f"y rel rms {err:.2e}"


def poisoned(N: int, K: int, like: torch.Tensor):
    return tuple(torch.full((1, m), float("nan"), dtype=like.dtype, device=like.device) for m in (N, K, K))


def matches(N: int, K: int, dtype, device: str, delta: bool, cfg: GemvConfig | None = None) -> None:
    x, d, g, w = inputs(N, K, dtype, device, delta)
    out = poisoned(N, K, x)
    got = norm_gemv(x, d, g, EPS, w, cfg, out=out)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(got, out))
    check(x, d, g, w, got)


CPU_SHAPES = [(1, 16), (63, 65), (65, 1000), (200, 37)]


@interpreted
@pytest.mark.parametrize("pdl", ["off", "on"])
@pytest.mark.parametrize("delta", [True, False], ids=["delta", "no_delta"])
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("N,K", CPU_SHAPES, ids=[f"N{n}-K{k}" for n, k in CPU_SHAPES])
def test_norm_gemv_cpu(N, K, dt, delta, pdl):
    """Both forms with small blocks: "off" loops over K in 64-column steps and reads its slice of r and n
    again; "on" is the PDL form (one step over K, the slice stored from registers), in stream order here."""
    matches(N, K, DTYPES[dt], "cpu", delta, GemvConfig(block_n=8, block_k=64, pdl=pdl))


@interpreted
@pytest.mark.parametrize("N,K", [(70, 600), (6, PDL_MAX_K + 4)], ids=["pdl_form", "loop_form"])
def test_op_matches_reference_cpu(N, K):
    """The op on CPU is the reference; under the interpreter the Triton kernel in the ops' config (both sides
    of PDL_MAX_K) matches it."""
    x, d, g, w = inputs(N, K, torch.float32, "cpu", True)
    want = ref.norm_gemv(x, d, g, EPS, w)
    got = norm_gemv(x, d, g, EPS, w)
    for a, b, tol in zip(got, want, (1e-5, 0.0, 1e-6)):  # y, r, n
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert all(torch.equal(a, b) for a, b in zip(torch.ops.gdn.norm_gemv(x, d, g, EPS, w), want))


def test_cpu_op_does_not_alias_without_delta():
    x, _, g, w = inputs(5, 32, torch.float32, "cpu", False)
    y, r, n = torch.ops.gdn.norm_gemv(x, None, g, EPS, w)
    assert torch.equal(r, x) and r.data_ptr() != x.data_ptr()


def test_bad_shapes_name_them():
    x, d, g, w = inputs(5, 32, torch.float32, "cpu", True)
    with pytest.raises(ValueError, match=r"norm weight \(31,\)"):
        norm_gemv(x, d, g[:31], EPS, w)
    with pytest.raises(ValueError, match=r"delta \(2, 32\)"):
        norm_gemv(x, d.repeat(2, 1), g, EPS, w)


@pytest.mark.slow
def test_export_keeps_op_cpu():
    class Pre(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g = torch.nn.Parameter(torch.randn(40))
            self.w = torch.nn.Parameter(torch.randn(24, 40))

        def forward(self, x, d):
            return torch.ops.gdn.norm_gemv(x, d, self.g, EPS, self.w)

    m, x, d = Pre(), torch.randn(1, 40), torch.randn(1, 40)
    ep = torch.export.export(m, (x, d), strict=True)
    assert any(str(n.target).startswith("gdn.norm_gemv") for n in ep.graph.nodes)
    for a, b in zip(ep.module()(x, d), ref.norm_gemv(x, d, m.g, EPS, m.w)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


SHAPES = {"moe_router_shared": (1281, 2048), "gate_up_2b": (12288, 2048), "lm_head": (248320, 2048)}


@pytest.mark.cuda
@pytest.mark.parametrize("pdl", ["off", "on"])
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("name", list(SHAPES))
def test_norm_gemv_cuda(name, dt, pdl):
    """pdl "on": the ops' config at these K (the PDL form, launched with PDL); "off": the loop form, which the
    ops run above PDL_MAX_K, here in two steps."""
    N, K = SHAPES[name]
    for delta in (True, False):
        matches(N, K, DTYPES[dt], "cuda", delta, GemvConfig(4, 1024, 4, pdl=pdl))


@pytest.mark.cuda
def test_op_equals_kernel_cuda():
    x, d, g, w = inputs(1281, 2048, torch.bfloat16, "cuda", True)
    got = torch.ops.gdn.norm_gemv(x, d, g, EPS, w)
    want = norm_gemv(x, d, g, EPS, w, default_config(2048))
    assert all(torch.equal(a, b) for a, b in zip(got, want))


class Pre(torch.nn.Module):
    """Two layers' worth: the first norm_gemv without a delta, the second adding the first's projection."""

    def __init__(self, N: int, K: int, dtype, device: str):
        super().__init__()
        _, _, g, w = inputs(N, K, dtype, device, False)
        self.g, self.w = torch.nn.Parameter(g), torch.nn.Parameter(w)
        self.w2 = torch.nn.Parameter(inputs(K, K, dtype, device, False)[3])

    def forward(self, x):
        y, r, n = torch.ops.gdn.norm_gemv(x, None, self.g, EPS, self.w)
        y2, r2, n2 = torch.ops.gdn.norm_gemv(r, torch.ops.gdn.gemv(n, self.w2, "none"), self.g, EPS, self.w)
        return y, r, n, y2, r2, n2


@pytest.mark.slow
@pytest.mark.cuda
@pytest.mark.parametrize("pdl", ["off", "on"])
def test_aoti_compiled_equals_eager_cuda(pdl, monkeypatch):
    """fp32, so any difference in the compiled kernel's arithmetic shows in y (a float eps argument would be
    compiled as float64, where Triton's launch passes float32). "on": the ops' config at K = 2048, launched with
    PDL inside the artifact; "off": PDL_MAX_K 0 puts every projection in the loop form."""
    from aoti_util import compile_and_load, pdl_launch_sites

    if pdl == "off":
        monkeypatch.setattr(triton_gemv, "PDL_MAX_K", 0)
    m = Pre(1281, 2048, torch.float32, "cuda").eval()
    x = torch.randn(1, 2048, device="cuda")
    with torch.no_grad():
        compiled, src = compile_and_load(torch.export.export(m, (x,), strict=True))
        assert pdl_launch_sites(src) == (3 if pdl == "on" else 0)
        for _ in range(5):
            x = torch.randn(1, 2048, device="cuda") * 3
            got, want = compiled(x), m(x)
            assert all(torch.equal(a, b) for a, b in zip(got, want))
