"""Prefill projections (gdn::gemm, gdn::norm_gemm): the reference, the Triton kernels and the registered ops against
float64.

Tolerances (against float64 from the same rounded inputs), per tensor:
- y: every output within TOL of its dot product's forward-error scale sum_k |a_k w_nk|, and y's relative RMS error
  within TOL (float32 1e-5, bfloat16 1e-2: y is rounded to bf16). For norm_gemm, a is the n the call returned.
- r: bit-equal to x + delta rounded to x's dtype (x itself without delta).
- n: every element within TOL of r / rms(r) * (1 + g) in float64, relative to that value's magnitude.
Outputs start NaN-filled (and the split-K partials, under the interpreter). CPU cases run the kernels through
TRITON_INTERPRET=1 at small odd shapes: every configuration `config` can return, every candidate part that
`bench_gemm.py --configs` times, split-K with short and empty slices, and a configuration of four ranges; `cuda`
cases run the prefill shapes of Qwen3.5-2B and Qwen3.5-35B-A3B.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch._higher_order_ops import triton_kernel_wrap
from torch.export import Dim
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

import gdn.kernels.gemm  # noqa: F401  (registers torch.ops.gdn.gemm / norm_gemm)
from gdn.kernels.gemm import reference as ref
from gdn.kernels.gemm import triton_gemm, triton_norm
from gdn.kernels.gemm.tiles import (FP32, PERSISTENT, SMS, STREAM, GemmConfig, Part, Tiles, candidates, config,
                                    configs, split_k)
from gdn.kernels.gemm.triton_gemm import grids

interpreted = pytest.mark.interpret
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
NAN = float("nan")
EPS = 1e-6


def rand(*shape, dtype, device, scale=1.0):
    return (torch.randn(*shape, device=device) * scale).to(dtype)


def y_matches(y: torch.Tensor, a: torch.Tensor, w: torch.Tensor) -> None:
    """y [M, N] against a @ w^T in float64 (module docstring)."""
    tol = TOL[y.dtype]
    assert torch.isfinite(y).all(), "non-finite (unwritten) outputs"
    want = a.double() @ w.double().T
    diff = (y.double() - want).abs()
    bound = a.double().abs() @ w.double().abs().T
    assert (diff <= tol * bound + 1e-30).all(), f"max err / bound {(diff / bound).max().item():.2e}"
    err = (diff.square().mean().sqrt() / want.square().mean().sqrt()).item()
    assert err < tol, f"y rel rms {err:.2e}"


def norm_matches(x, delta, g, r, n) -> None:
    """r bit-equal to the rounded residual; n within TOL of the float64 norm of r."""
    want_r = x if delta is None else (x.float() + delta.float()).to(x.dtype)
    assert torch.equal(r, want_r), "r is not x + delta rounded to x's dtype"
    r64 = r.double()
    n64 = r64 * torch.rsqrt(r64.square().mean(-1, keepdim=True) + EPS) * (1 + g.double())
    err = ((n.double() - n64).abs() / (n64.abs() + 1e-30)).max().item()
    assert err <= TOL[n.dtype], f"n max rel err {err:.2e}"


def gemm_matches(M: int, N: int, K: int, dtype, device: str, cfg: GemmConfig | None = None) -> None:
    x, w = rand(M, K, dtype=dtype, device=device), rand(N, K, dtype=dtype, device=device, scale=K**-0.5)
    out = torch.full((M, N), NAN, dtype=dtype, device=device)
    y = triton_gemm.gemm(x, w, cfg, out=out)
    assert y.data_ptr() == out.data_ptr()
    y_matches(y, x, w)


def norm_gemm_matches(M: int, N: int, K: int, dtype, device: str, with_delta: bool,
                      cfg: GemmConfig | None = None) -> None:
    x = rand(M, K, dtype=dtype, device=device)
    delta = rand(M, K, dtype=dtype, device=device) if with_delta else None
    g = rand(K, dtype=dtype, device=device, scale=0.1)
    w = rand(N, K, dtype=dtype, device=device, scale=K**-0.5)
    out = tuple(torch.full(s, NAN, dtype=dtype, device=device) for s in ((M, N), (M, K), (M, K)))
    y, r, n = triton_norm.norm_gemm(x, delta, g, EPS, w, cfg, out=out)
    assert [t.data_ptr() for t in (y, r, n)] == [t.data_ptr() for t in out]
    norm_matches(x, delta, g, r, n)
    y_matches(y, n, w)


# ---------------------------------------------------------------- the reference and the pure-Python parts


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("M", [1, 17, 129])
def test_reference_against_float64(M, dt):
    dtype = DTYPES[dt]
    x, w = rand(M, 96, dtype=dtype, device="cpu"), rand(77, 96, dtype=dtype, device="cpu", scale=96**-0.5)
    y_matches(ref.gemm(x, w), x, w)
    for with_delta in (False, True):
        delta = rand(M, 96, dtype=dtype, device="cpu") if with_delta else None
        g = rand(96, dtype=dtype, device="cpu", scale=0.1)
        y, r, n = ref.norm_gemm(x, delta, g, EPS, w)
        norm_matches(x, delta, g, r, n)
        y_matches(y, n, w)


# four ranges: split-K stream with an empty last slice at K 320, an M loop, two programs an SM, GROUP_M 4
RANGES = GemmConfig((
    Part(STREAM, Tiles(64, 32, 64, 4, 2), max_m=16, split_k=4),
    Part(STREAM, Tiles(32, 64, 32, 4, 2), max_m=64),
    Part(PERSISTENT, Tiles(64, 64, 32, 4, 2), max_m=200, ctas=2),
    Part(PERSISTENT, Tiles(128, 128, 64, 8, 3), group_m=4),
))


def active_part(M: int, cfg: GemmConfig) -> int:
    """The index of the part whose range holds M, by a plain search (what `grids` must agree with)."""
    return next(i for i, p in enumerate(cfg.parts) if not p.max_m or M <= p.max_m)


def cfg_name(c: GemmConfig) -> str:
    return "+".join(f"{p.kernel[0]}{p.tiles.block_m}x{p.tiles.block_n}k{p.split_k}m{p.max_m}" for p in c.parts)


@pytest.mark.parametrize("cfg", configs() + (RANGES,), ids=cfg_name)
def test_exactly_one_grid_runs(cfg):
    """For every M exactly one part has non-empty grids, the one whose range holds M: a stream part N / BN x
    split_k programs (and the split-K sum M / 8 x N / 256), a persistent part at most ctas per SM and one per
    tile."""
    N = 2048
    for M in list(range(1, 600)) + [1000, 4096, 65536]:
        on = active_part(M, cfg)
        for i, (part, (grid, reduce)) in enumerate(zip(cfg.parts, grids(M, N, cfg, SMS))):
            t = part.tiles
            if i != on:
                assert grid[0] == 0 and (reduce is None or reduce[0] == 0), (M, i)
            elif part.kernel == STREAM:
                assert grid == (N // t.block_n, part.split_k), M
                assert reduce == ((-(-M // 8), N // 256) if part.split_k > 1 else None), M
            else:
                assert grid == (min(SMS * part.ctas, -(-M // t.block_m) * -(-N // t.block_n)),), M


def test_candidates_are_distinct_and_split_within_a_wave():
    """Per site: the shipped parts are candidates, no part twice, and each stream split keeps N / BN x split_k
    within SMS programs (or one slice) and every slice at least two K steps."""
    for N, K in SHAPES.values():
        parts = candidates(N, K)
        assert len(set(parts.values())) == len(parts)
        narrow, wide = config(N, K, torch.bfloat16).parts
        assert replace(parts["shipped-narrow"], max_m=narrow.max_m) == narrow and parts["shipped-wide"] == wide
        for part in parts.values():
            t, s = part.tiles, part.split_k
            if part.kernel == STREAM and s > 1:
                assert -(-N // t.block_n) * s <= SMS and -(-K // t.block_k) >= 2 * s, (N, K, part)
    assert split_k(2048, 2048, Tiles(128, 128, 64, 8, 4)) == 8  # 16 column blocks: 128 programs


def test_config_is_one_of_configs():
    shapes = [(8224, 2048), (5120, 2048), (12288, 2048), (2048, 2048), (2048, 6144), (12352, 2048), (9216, 2048),
              (1281, 2048), (2048, 4096), (77, 96)]
    for N, K in shapes:
        assert config(N, K, torch.bfloat16) in configs()
        assert config(N, K, torch.float32) == FP32


def test_bad_input_names_it():
    x, w = torch.randn(5, 8), torch.randn(3, 8)
    with pytest.raises(ValueError, match=r"x \(5, 6\) and w \(3, 8\)"):
        triton_gemm.gemm(torch.randn(5, 6), w)
    with pytest.raises(ValueError, match="torch.float16"):
        triton_gemm.gemm(x.half(), w.half())
    with pytest.raises(ValueError, match="torch.float32 and torch.bfloat16"):
        triton_gemm.gemm(x, w.bfloat16())
    with pytest.raises(ValueError, match=r"delta \(4, 8\)"):
        triton_norm.norm_gemm(x, torch.randn(4, 8), torch.randn(8), EPS, w)
    with pytest.raises(ValueError, match=r"norm weight \(7,\)"):
        triton_norm.norm_gemm(x, None, torch.randn(7), EPS, w)
    with pytest.raises(ValueError, match="torch.bfloat16"):
        triton_norm.norm_gemm(x, torch.randn(5, 8).bfloat16(), torch.randn(8), EPS, w)


# ---------------------------------------------------------------- the kernels under the interpreter

ODD_M = (1, 17, 127, 128, 129, 1000)
CPU_NK = [(77, 96), (130, 256)]  # K 96: a ragged K step in every config; K 256: no K mask


def cfg_id(c: GemmConfig) -> str:
    return "fp32" if c == FP32 else f"bf16-BN{c.parts[1].tiles.block_n}-nBN{c.parts[0].tiles.block_n}"


def edges(cfg: GemmConfig) -> tuple[int, ...]:
    """Both sides of every range's bound."""
    return tuple(m + d for p in cfg.parts if p.max_m for m in (p.max_m,) for d in (0, 1))


@interpreted
@pytest.mark.parametrize("N,K", CPU_NK, ids=[f"N{n}-K{k}" for n, k in CPU_NK])
@pytest.mark.parametrize("cfg", configs(), ids=cfg_id)
def test_gemm_cpu(cfg, N, K):
    """Every configuration at odd M on both sides of its ranges' bounds, in its dtype."""
    dtype = torch.float32 if cfg == FP32 else torch.bfloat16
    for M in ODD_M + edges(cfg):
        gemm_matches(M, N, K, dtype, "cpu", cfg)


CANDIDATE_NK = (130, 320)  # K 320: five K steps of 64, split 2 (slices of 3 and 2 steps)


@interpreted
@pytest.mark.parametrize("name", list(candidates(*CANDIDATE_NK)))
def test_candidate_cpu(name):
    """Every part `bench_gemm.py --configs` times, alone at every M (one unbounded part), at a ragged N and at
    a ragged K."""
    cfg = GemmConfig((candidates(*CANDIDATE_NK)[name],))
    for M in (1, 17, 129, 300):
        gemm_matches(M, *CANDIDATE_NK, torch.bfloat16, "cpu", cfg)
    gemm_matches(33, 77, 96, torch.bfloat16, "cpu", cfg)  # split parts: two slices of one K step, the last ragged


@interpreted
@pytest.mark.parametrize("split", [2, 3, 4, 5])
@pytest.mark.parametrize("dt", list(DTYPES))
def test_split_k_cpu(split, dt):
    """K 300 in steps of 64 (the last ragged): 2 slices of 3 and 2 steps, 3 of 2, 2, 1, 4 of 2, 2, 1 and an
    empty one (it writes zeros), 5 of one step each; M loops over blocks of 32, and a static workspace of 64 rows
    (a bounded part) also below its bound."""
    part = Part(STREAM, Tiles(32, 32, 64, 4, 2), split_k=split)
    for cfg in (GemmConfig((part,)), GemmConfig((replace(part, max_m=64), Part(PERSISTENT, Tiles(32, 32, 64, 4, 2))))):
        for M in (1, 33, 64):
            gemm_matches(M, 45, 300, DTYPES[dt], "cpu", cfg)


@interpreted
def test_ranges_cpu():
    """A configuration of four ranges at both sides of each bound."""
    for M in (1,) + edges(RANGES) + (300,):
        gemm_matches(M, 130, 320, torch.bfloat16, "cpu", RANGES)


@interpreted
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("with_delta", [True, False], ids=["delta", "no_delta"])
def test_norm_gemm_cpu(with_delta, dt):
    """The prologue and the op's own configuration (the narrow kernel at M 17, the persistent one at 129)."""
    for M in (1, 17, 129):
        norm_gemm_matches(M, 45, 96, DTYPES[dt], "cpu", with_delta)


@interpreted
def test_op_runs_config_cpu():
    """The registered op on CPU tensors runs the reference; the kernel with `config` gives the same y within
    the bf16 tolerance (the accumulation order differs)."""
    x, w = rand(33, 64, dtype=torch.bfloat16, device="cpu"), rand(40, 64, dtype=torch.bfloat16, device="cpu")
    assert torch.equal(torch.ops.gdn.gemm(x, w), ref.gemm(x, w))
    y_matches(triton_gemm.gemm(x, w), x, w)


# ---------------------------------------------------------------- torch's mutation analysis (no GPU needed)


class Sm90:
    """Triton's active driver for the analysis: the target it builds the TTIR for (as tests/test_pdl.py)."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


@pytest.fixture
def sm90():
    before = driver._active
    driver.set_active(Sm90())
    yield
    driver._active = before


def test_mutation_analysis_names_only_the_outputs(sm90):
    """torch (as export and AOTInductor run it) must see each kernel store to its outputs only: a kernel taken
    to write everything would have the artifact copy its inputs, the weights among them, before every launch.
    The stream kernel stores to y without split-K, to its partials with it."""
    x, w, y = (torch.empty(s, dtype=torch.bfloat16) for s in ((300, 2048), (5120, 2048), (300, 5120)))
    ws = torch.empty(300, 4, 5120)
    tiles = {"M": 300, "N": 5120, "K": 2048, "UPCAST": False, "BM": 128, "BN": 128, "BK": 64}
    xwy = {"x_ptr": x, "w_ptr": w, "y_ptr": y}
    cases = [
        (triton_gemm._wide_kernel, {**xwy, **tiles, "GROUP_M": 8, "FLATTEN": True}, ["y_ptr"]),
        (triton_gemm._stream_kernel, {**xwy, "ws_ptr": x, **tiles, "SPLIT_K": 1}, ["y_ptr"]),
        (triton_gemm._stream_kernel, {**xwy, "ws_ptr": ws, **tiles, "SPLIT_K": 4}, ["ws_ptr"]),
        (triton_gemm._reduce_kernel, {"ws_ptr": ws, "y_ptr": y, "M": 300, "N": 5120, "SPLIT_K": 4, "BM": 8,
                                      "BN": 256}, ["y_ptr"]),
        (triton_norm._norm_kernel, {"x_ptr": x, "d_ptr": x, "g_ptr": x[0], "r_ptr": y, "n_ptr": y, "K": 2048,
                                    "BK": 2048, "EPS": EPS, "HAS_DELTA": True}, ["n_ptr", "r_ptr"]),
    ]
    for kernel, args, stores in cases:
        assert sorted(triton_kernel_wrap.identify_mutated_tensors(kernel, args, {})) == stores


# ---------------------------------------------------------------- export: one node, M stays dynamic


@torch.library.triton_op("gdn_test::gemm_ranges", mutates_args=())
def gemm_ranges(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The GEMM with RANGES: split-K partials in a static workspace, four empty-or-not launches, one op."""
    return triton_gemm.gemm(x, w, RANGES)


gemm_ranges.register_kernel("cpu")(ref.gemm)


class Projections(torch.nn.Module):
    def __init__(self, K: int = 48, N: int = 40):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(N, K) * K**-0.5)
        self.w2 = torch.nn.Parameter(torch.randn(N + 3, K) * K**-0.5)
        self.g = torch.nn.Parameter(0.1 * torch.randn(K))

    def forward(self, x, delta):
        y, r, n = torch.ops.gdn.norm_gemm(x, delta, self.g, EPS, self.w2)
        return torch.ops.gdn.gemm(r, self.w), y, n, torch.ops.gdn_test.gemm_ranges(n, self.w)


@pytest.mark.slow
def test_export_keeps_ops_and_dynamic_m():
    """torch.export(strict=True) with a dynamic M keeps each op as one node, does not specialise M (no guard
    from the launch grids, nor from a four-range configuration's workspace), and the exported program equals
    eager at any M."""
    m = Projections()
    T = Dim("T", min=1, max=4096)
    args = (torch.randn(37, 48), torch.randn(37, 48))
    ep = torch.export.export(m, args, dynamic_shapes=({0: T}, {0: T}), strict=True)
    ops = [str(n.target) for n in ep.graph.nodes if "gdn" in str(n.target)]
    assert ops == ["gdn.norm_gemm.default", "gdn.gemm.default", "gdn_test.gemm_ranges.default"]
    x_val = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == "x").meta["val"]
    assert isinstance(x_val.shape[0], torch.SymInt), "M was specialised"
    (rng,) = [r for s, r in ep.range_constraints.items() if str(s) == str(x_val.shape[0])]
    assert (int(rng.lower), int(rng.upper)) == (1, 4096)
    for M in (1, 5, 17, 65, 200, 201, 1000):
        a = (torch.randn(M, 48), torch.randn(M, 48))
        for got, want in zip(ep.module()(*a), m(*a)):
            assert torch.equal(got, want)


# ---------------------------------------------------------------- GPU: the model's prefill shapes

# name: (N, K) of every prefill projection of Qwen3.5-2B and Qwen3.5-35B-A3B (scripts/bench_gemv.py's SITES)
SHAPES = {"in_proj_2b": (8224, 2048), "qkv_2b": (5120, 2048), "gate_up_2b": (12288, 2048),
          "out_proj_2b": (2048, 2048), "down_2b": (2048, 6144), "in_proj_35b": (12352, 2048),
          "qkv_35b": (9216, 2048), "router_shared_35b": (1281, 2048), "out_proj_35b": (2048, 4096)}
GPU_M = (1, 16, 17, 127, 128, 129, 1000, 1024, 4096)


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(SHAPES))
def test_gemm_cuda(name):
    N, K = SHAPES[name]
    for M in GPU_M:
        gemm_matches(M, N, K, torch.bfloat16, "cuda")
    for M in (1, 65, 1000):
        gemm_matches(M, N, K, torch.float32, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("with_delta", [True, False], ids=["delta", "no_delta"])
@pytest.mark.parametrize("name", ["in_proj_2b", "router_shared_35b"])
def test_norm_gemm_cuda(name, with_delta):
    N, K = SHAPES[name]
    for M in (1, 17, 128, 129, 4096):
        norm_gemm_matches(M, N, K, torch.bfloat16, "cuda", with_delta)
    norm_gemm_matches(1000, N, K, torch.float32, "cuda", with_delta)


@pytest.mark.cuda
@pytest.mark.parametrize("cfg", configs(), ids=cfg_id)
def test_every_config_cuda(cfg):
    dtype = torch.float32 if cfg == FP32 else torch.bfloat16
    for M in (1, 1000) + edges(cfg):
        gemm_matches(M, 1281, 2048, dtype, "cuda", cfg)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["router_shared_35b", "down_2b", "qkv_2b"])
def test_every_candidate_cuda(name):
    """Every part `bench_gemm.py --configs` times for the site, alone at every M (odd N, K 6144, N 5120)."""
    N, K = SHAPES[name]
    for part in candidates(N, K).values():
        for M in (1, 17, 128, 129, 300, 1000):
            gemm_matches(M, N, K, torch.bfloat16, "cuda", GemmConfig((part,)))
    for M in (1,) + edges(RANGES) + (1000,):
        gemm_matches(M, N, K, torch.bfloat16, "cuda", RANGES)


@pytest.mark.cuda
def test_ops_equal_kernels_cuda():
    """The registered ops run the kernels with `config`, bit for bit."""
    x, d = rand(300, 2048, dtype=torch.bfloat16, device="cuda"), rand(300, 2048, dtype=torch.bfloat16, device="cuda")
    g, w = rand(2048, dtype=torch.bfloat16, device="cuda"), rand(5120, 2048, dtype=torch.bfloat16, device="cuda")
    assert torch.equal(torch.ops.gdn.gemm(x, w), triton_gemm.gemm(x, w))
    for got, want in zip(torch.ops.gdn.norm_gemm(x, d, g, EPS, w), triton_norm.norm_gemm(x, d, g, EPS, w)):
        assert torch.equal(got, want)


@pytest.mark.cuda
@pytest.mark.slow
def test_aoti_compiles_ops_for_every_m_cuda():
    """AOTInductor compiles the ops' kernels (and RANGES' split-K sum) into one library for a dynamic M; at every
    M (every range of both configurations) it equals the eager ops bit for bit."""
    from aoti_util import compile_and_load

    m = Projections(K=2048, N=5120).cuda().to(torch.bfloat16)
    T = Dim("T", min=1, max=4096)
    args = (rand(300, 2048, dtype=torch.bfloat16, device="cuda"), rand(300, 2048, dtype=torch.bfloat16, device="cuda"))
    compiled, src = compile_and_load(torch.export.export(m, args, dynamic_shapes=({0: T}, {0: T}), strict=True))
    for kernel in ("_wide_kernel", "_stream_kernel", "_reduce_kernel", "_norm_kernel"):
        assert kernel in src, kernel
    for M in (1, 16, 17, 64, 65, 128, 129, 200, 201, 1000, 4096):
        a = (rand(M, 2048, dtype=torch.bfloat16, device="cuda"), rand(M, 2048, dtype=torch.bfloat16, device="cuda"))
        for got, want in zip(compiled(*a), m(*a)):
            assert torch.equal(got, want), f"M {M}: compiled differs from eager"
