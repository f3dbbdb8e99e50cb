"""Triton one-token projection (gdn::gemv) against a float64 computation.

Tolerances (against float64 from the same rounded inputs): float32 1e-5; bfloat16 1e-2 (y itself, and the
silu_mul activation, are rounded to bf16), of every output's forward-error scale sum_k |a_k w_nk| and, with
more than one output, of y's RMS. CPU cases run the kernel through
TRITON_INTERPRET=1 at small odd shapes; `cuda` cases use the projection shapes of Qwen3.5-2B.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gdn.kernels  # noqa: F401  (registers torch.ops.gdn.*)
from gdn.kernels.gemv import reference as ref
from gdn.kernels.gemv import triton_gemv
from gdn.kernels.gemv.op import PDL_MAX_K, artifact_config
from gdn.kernels.gemv.triton_gemv import GemvConfig

interpreted = pytest.mark.interpret
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def activation64(x: torch.Tensor, act: str) -> torch.Tensor:
    x64 = x.double()
    if act == "silu_mul":
        gate, up = x64.chunk(2, dim=-1)
        x64 = F.silu(gate) * up
    return x64


def truth(x: torch.Tensor, w: torch.Tensor, act: str) -> torch.Tensor:
    return activation64(x, act) @ w.double().T


def gemv_matches(N: int, K: int, act: str, dtype, device: str, cfg: GemvConfig | None = None) -> None:
    x = torch.randn(1, 2 * K if act == "silu_mul" else K, device=device).to(dtype)
    w = (torch.randn(N, K, device=device) * K**-0.5).to(dtype)
    want = truth(x, w, act)
    out = torch.full((1, N), float("nan"), dtype=dtype, device=device)
    y = triton_gemv.gemv(x, w, act, cfg, out=out)
    assert y.data_ptr() == out.data_ptr() and torch.isfinite(y).all()
    diff = (y.double() - want).abs()  # [1, N]
    # every output within the dot product's forward-error scale sum_k |a_k w_nk|
    bound = activation64(x, act).abs() @ w.double().abs().T
    assert (diff <= TOL[dtype] * bound).all(), f"max err / bound {(diff / bound).max().item():.2e}"
    if N > 1:
        # a single output can cancel to near zero (N 1, K 16 bf16 reached 3e-2 relative), so relative RMS over rows
        err = (diff.square().mean().sqrt() / want.square().mean().sqrt()).item()
        assert err < TOL[dtype], f"y rel rms {err:.2e}"


CPU_SHAPES = [(1, 16), (63, 65), (65, 1000), (200, 37)]


@interpreted
@pytest.mark.parametrize("pdl", ["off", "on"])
@pytest.mark.parametrize("act", ref.ACTS)
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("N,K", CPU_SHAPES, ids=[f"N{n}-K{k}" for n, k in CPU_SHAPES])
def test_gemv_cpu(N, K, dt, act, pdl):
    """pdl "on": the PDL form (one step over K, weights before the grid wait), in stream order here."""
    gemv_matches(N, K, act, DTYPES[dt], "cpu", GemvConfig(block_n=8, block_k=64, pdl=pdl))


@interpreted
def test_gemv_default_config_cpu():
    gemv_matches(70, 600, "silu_mul", torch.float32, "cpu")


def test_bad_activation_names_it():
    with pytest.raises(ValueError, match="'gelu'"):
        ref.gemv(torch.randn(1, 4), torch.randn(3, 4), "gelu")


def test_export_keeps_op_cpu():
    class Down(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(24, 40))

        def forward(self, x):
            return torch.ops.gdn.gemv(x, self.w, "silu_mul")

    m, x = Down(), torch.randn(1, 80)
    ep = torch.export.export(m, (x,), strict=True)
    assert any(str(n.target).startswith("gdn.gemv") for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(x), ref.gemv(x, m.w, "silu_mul"), rtol=1e-5, atol=1e-5)


SHAPES_2B = {"down": (2048, 6144), "out_proj": (2048, 2048), "gate_up": (12288, 2048), "lm_head": (248320, 2048)}


@pytest.mark.cuda
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("name", list(SHAPES_2B))
def test_gemv_cuda(name, dt):
    N, K = SHAPES_2B[name]
    for act in ref.ACTS:
        gemv_matches(N, K, act, DTYPES[dt], "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("name", ["out_proj", "down"])
def test_gemv_pdl_cuda(name, dt):
    """Under programmatic dependent launch (weights loaded before the grid wait, one step over K)."""
    N, K = SHAPES_2B[name]
    for act in ref.ACTS:
        gemv_matches(N, K, act, DTYPES[dt], "cuda", GemvConfig(4, 1024, 4, pdl="on"))


@pytest.mark.cuda
@pytest.mark.parametrize("K", [2048, 6144])
def test_op_equals_kernel_cuda(K):
    """The op runs the ops' config: the PDL form up to PDL_MAX_K columns, the default above."""
    x = torch.randn(1, 2 * K, device="cuda").to(torch.bfloat16)
    w = torch.randn(2048, K, device="cuda").to(torch.bfloat16)
    cfg = artifact_config(K)
    assert (cfg.pdl == "on") == (K <= PDL_MAX_K)
    assert torch.equal(torch.ops.gdn.gemv(x, w, "silu_mul"), triton_gemv.gemv(x, w, "silu_mul", cfg))
