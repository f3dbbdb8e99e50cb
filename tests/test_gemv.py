"""Triton one-token projection (gdn::gemv) against a float64 computation.

Tolerances (against float64 from the same rounded inputs): float32 1e-5; bfloat16 1e-2 (y itself, and the
silu_mul activation, are rounded to bf16), of every output's forward-error scale sum_k |a_k w_nk| and, with
more than one output, of y's RMS. CPU cases run the kernel through TRITON_INTERPRET=1 at small odd shapes;
`cuda` cases use the decode projection shapes of Qwen3.5-2B and Qwen3.5-35B-A3B.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gdn.kernels  # noqa: F401  (registers torch.ops.gdn.*)
from gdn.kernels.gemv import reference as ref
from gdn.kernels.gemv import triton_gemv
from gdn.kernels.gemv.triton_gemv import PDL_MAX_K, GemvConfig, default_config, gemv_config

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
    """Both forms with small blocks: "off" loops over K in 64-column steps with a ragged tail, "on" is the PDL
    form (one step over K, weights before the grid wait), in stream order here."""
    gemv_matches(N, K, act, DTYPES[dt], "cpu", GemvConfig(block_n=8, block_k=64, pdl=pdl))


@interpreted
@pytest.mark.parametrize("N,K", [(70, 600), (6, PDL_MAX_K + 4)], ids=["pdl_form", "loop_form"])
def test_gemv_default_config_cpu(N, K):
    """The op's config on both sides of PDL_MAX_K (N 70 and 6: `gemv_config`'s narrow forms, the loop form in
    2048-column steps with a 4-column tail)."""
    gemv_matches(N, K, "silu_mul", torch.float32, "cpu")


def test_default_config_is_the_ops_config():
    """The constexpr configuration the ops ship, chosen from the static K alone."""
    assert default_config(2048) == GemvConfig(4, 1024, 4, pdl="on")
    assert default_config(PDL_MAX_K) == GemvConfig(4, 1024, 8, pdl="on")
    assert default_config(6144) == GemvConfig(4, 1024, 8, pdl="off")
    # gdn::gemv's narrow outputs (2048 rows): more programs in the PDL form, longer steps in the loop form
    assert gemv_config(2048, 2048) == GemvConfig(2, 1024, 4, pdl="on")
    assert gemv_config(2048, 6144) == GemvConfig(8, 2048, 8, pdl="off")
    assert gemv_config(2048, 4096) == default_config(4096) and gemv_config(4096, 2048) == default_config(2048)


def test_bad_activation_names_it():
    with pytest.raises(ValueError, match="'gelu'"):
        ref.gemv(torch.randn(1, 4), torch.randn(3, 4), "gelu")


@pytest.mark.slow
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


# name: (N, K). The model's gemv sites are the output projections and the MLP's down; gate_up, lm_head (norm_gemv
# sites) add many rows, the router/shared projection an N that BN does not divide, out_proj_35b K == PDL_MAX_K.
SHAPES = {"down_2b": (2048, 6144), "out_proj_2b": (2048, 2048), "gate_up_2b": (12288, 2048),
          "lm_head": (248320, 2048), "out_proj_35b": (2048, 4096), "router_shared_35b": (1281, 2048)}


@pytest.mark.cuda
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("name", list(SHAPES))
def test_gemv_cuda(name, dt):
    """The ops' config: the PDL form (launched with PDL) up to PDL_MAX_K columns, the loop form above."""
    N, K = SHAPES[name]
    for act in ref.ACTS:
        gemv_matches(N, K, act, DTYPES[dt], "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("K", [2048, 6144])
def test_op_equals_kernel_cuda(K):
    """The registered op runs the kernel with `gemv_config`, bit for bit."""
    x = torch.randn(1, 2 * K, device="cuda").to(torch.bfloat16)
    w = torch.randn(2048, K, device="cuda").to(torch.bfloat16)
    want = triton_gemv.gemv(x, w, "silu_mul", gemv_config(2048, K))
    assert torch.equal(torch.ops.gdn.gemv(x, w, "silu_mul"), want)
