"""Weight-only quantized one-token projections (gdn::qgemv, gdn::norm_qgemv): the quantization scheme, its
reference, and the Triton kernels against float64.

Truth is float64 from the stored integers and scales (w64 = q * s exactly). Tolerances as tests/test_gemv.py and
tests/test_norm_gemv.py: y within float32 1e-5 / bfloat16 1e-2 of each output's forward-error scale
sum_k |a_k w64_nk| and of y's relative RMS; r exact; n within one rounding to the dtype plus 32 float32 units.
CPU cases run the kernels through TRITON_INTERPRET=1 at small odd shapes; `cuda` cases at Qwen3.5-2B's decode
projection shapes.
"""

from __future__ import annotations

import pytest
import torch

import gdn.kernels.qgemv  # noqa: F401  (registers torch.ops.gdn.qgemv / norm_qgemv)
from gdn.kernels.qgemv import reference as ref
from gdn.kernels.qgemv import triton_norm_qgemv, triton_qgemv
from gdn.kernels.qgemv.triton_qgemv import PDL_MAX_K, QGemvConfig, candidates, default_config
from test_gemv import activation64

interpreted = pytest.mark.interpret
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
EPS = 1e-6


def weights(N: int, K: int, bits: int, group: int, dtype, device: str = "cpu"):
    """-> (qweight, scales, w64 [N, K] float64 = q * s exactly) of random normal weights."""
    w = (torch.randn(N, K, device=device) * K**-0.5).to(dtype)
    q, s = ref.quantize(w, bits, group)
    return q, s, exact(q, s, bits, group)


def exact(q: torch.Tensor, s: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    ints = q if bits == 8 else ref.unpack_int4(q)
    N, K = ints.shape
    return (ints.double().reshape(N, K // group, group) * s.double()[..., None]).reshape(N, K)


def close_y(y: torch.Tensor, a64: torch.Tensor, w64: torch.Tensor, dtype) -> None:
    """y [1, N] against a64 @ w64^T within TOL of the forward-error scale and of y's relative RMS."""
    assert torch.isfinite(y).all()
    want = a64 @ w64.T
    diff = (y.double() - want).abs()
    bound = a64.abs() @ w64.abs().T
    assert (diff <= TOL[dtype] * bound + 1e-30).all(), f"max err / bound {(diff / bound).max().item():.2e}"
    if w64.shape[0] > 1:
        err = (diff.square().mean().sqrt() / want.square().mean().sqrt()).item()
        assert err < TOL[dtype], f"y rel rms {err:.2e}"


# ---- the scheme -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("bits", [8, 4])
def test_round_trip_exact_on_the_grid(bits, dt):
    """Weights q * s whose groups each reach +-qmax come back as exactly q and s."""
    N, K, G, qmax = 6, 96, 32, ref.QMAX[bits]
    q = torch.randint(-qmax, qmax + 1, (N, K), dtype=torch.int8)
    q[:, ::G] = qmax * torch.where(torch.rand(N, K // G) < 0.5, -1, 1).to(torch.int8)  # each group reaches qmax
    s = torch.exp2(torch.randint(-12, 2, (N, K // G)).float()).to(DTYPES[dt])  # q s exact in any dtype
    w = (q.float().reshape(N, K // G, G) * s.float()[..., None]).reshape(N, K).to(DTYPES[dt])
    assert torch.equal(w.double(), exact(q if bits == 8 else ref.pack_int4(q), s, bits, G)), "not on the grid"
    qw, sw = ref.quantize(w, bits, G)
    assert torch.equal(sw, s) and torch.equal(qw, q if bits == 8 else ref.pack_int4(q))
    assert torch.equal(ref.dequantize(qw, sw, bits, G), w)


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_error_within_half_a_step(bits, group, dt):
    """Per element |w - q s| <= s / 2 (the stored scale is rounded up, so no group's maximum clips), and
    dequantize rounds q s once to the dtype."""
    dtype = DTYPES[dt]
    w = torch.cat([torch.randn(7, 384), torch.distributions.StudentT(3.0).sample((7, 384))]).to(dtype)
    w[0, :group] = 0  # an all-zero group
    q, s = ref.quantize(w, bits, group)
    assert s.dtype == dtype and s.shape == (14, 384 // group) and (s[0, 0] == 0)
    w64 = exact(q, s, bits, group)  # [N, K]
    ints = q if bits == 8 else ref.unpack_int4(q)
    assert ints.abs().max() <= ref.QMAX[bits]
    step = s.double().repeat_interleave(group, dim=1)  # [N, K]
    assert ((w.double() - w64).abs() <= step / 2 * (1 + 1e-6)).all()
    deq = ref.dequantize(q, s, bits, group)
    assert torch.equal(deq, w64.to(dtype))


def test_int4_packing_layout():
    """Hand-built: column 2j in the low nibble, 2j + 1 in the high one, each as q + 8."""
    w = torch.tensor([[1.0, -2.0, 7.0, -7.0], [0.0, 0.0, 0.0, 0.0]])
    q, s = ref.quantize(w, 4, 4)
    assert torch.equal(s, torch.tensor([[1.0], [0.0]]))
    assert q.dtype == torch.uint8 and q.tolist() == [[0x69, 0x1F], [0x88, 0x88]]
    assert torch.equal(ref.unpack_int4(q), torch.tensor([[1, -2, 7, -7], [0, 0, 0, 0]], dtype=torch.int8))
    q8, s8 = ref.quantize(w, 8, 4)
    assert q8.dtype == torch.int8 and q8.tolist() == [[18, -36, 127, -127], [0, 0, 0, 0]]  # round(w 127 / 7)


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("bits", [8, 4])
def test_reference_against_float64(bits, dt):
    """The reference (dequantize to the dtype, then gemv's reference) against float64 from q and s."""
    dtype = DTYPES[dt]
    q, s, w64 = weights(33, 192, bits, 64, dtype)
    for act in ("none", "silu_mul"):
        x = torch.randn(1, 384 if act == "silu_mul" else 192).to(dtype)
        close_y(ref.gemv(x, q, s, bits, 64, act), activation64(x, act), w64, dtype)
    x, d, g = torch.randn(1, 192).to(dtype), torch.randn(1, 192).to(dtype), (0.5 * torch.randn(192)).to(dtype)
    y, r, n = ref.norm_gemv(x, d, g, EPS, q, s, bits, 64)
    close_y(y, n.double(), w64, dtype)


# ---- the Triton kernels under the interpreter ------------------------------------------------------------------

def qgemv_matches(N, K, bits, group, act, dtype, device="cpu", cfg=None) -> None:
    q, s, w64 = weights(N, K, bits, group, dtype, device)
    x = torch.randn(1, 2 * K if act == "silu_mul" else K, device=device).to(dtype)
    out = torch.full((1, N), float("nan"), dtype=dtype, device=device)
    y = triton_qgemv.qgemv(x, q, s, bits, group, act, cfg, out=out)
    assert y.data_ptr() == out.data_ptr()
    close_y(y, activation64(x, act), w64, dtype)


def norm_qgemv_matches(N, K, bits, group, delta, dtype, device="cpu", cfg=None) -> None:
    q, s, w64 = weights(N, K, bits, group, dtype, device)
    x = (torch.randn(1, K, device=device) * 3).to(dtype)
    d = (torch.randn(1, K, device=device) * 3).to(dtype) if delta else None
    g = (torch.randn(K, device=device) * 0.5).to(dtype)
    out = tuple(torch.full((1, m), float("nan"), dtype=dtype, device=device) for m in (N, K, K))
    y, r, n = triton_norm_qgemv.norm_qgemv(x, d, g, EPS, q, s, bits, group, cfg, out=out)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip((y, r, n), out))
    r64 = x.double() if d is None else x.double() + d.double()
    assert torch.equal(r, r64.to(dtype)), "r is not the rounded sum"
    n64 = r.double() * torch.rsqrt(r.double().square().mean(-1, keepdim=True) + EPS) * (1 + g.double())
    rel = torch.finfo(dtype).eps + 32 * torch.finfo(torch.float32).eps
    assert ((n.double() - n64).abs() <= rel * n64.abs() + 1e-30).all()
    close_y(y, n64, w64, dtype)


# (N, K, group): odd N, K not a power of two, a group count that no step divides, one group
CPU_CASES = [(1, 32, 32), (13, 96, 32), (37, 384, 128), (70, 320, 64)]
CPU_IDS = [f"N{n}-K{k}-g{g}" for n, k, g in CPU_CASES]
SMALL = {"off": QGemvConfig(block_n=8, block_k=64, pdl="off"), "on": QGemvConfig(block_n=8, pdl="on"),
         # the chunks layout: a 3-stage loop in 64-column steps (1 or 2 chunks; a ragged last step), the PDL form
         "chunks-off": QGemvConfig(8, 64, 4, "off", "chunks", 3), "chunks-on": QGemvConfig(8, pdl="on", layout="chunks")}
FORMS = list(SMALL)


@interpreted
@pytest.mark.parametrize("pdl", FORMS)
@pytest.mark.parametrize("act", ["none", "silu_mul"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("N,K,group", CPU_CASES, ids=CPU_IDS)
def test_qgemv_cpu(N, K, group, bits, act, pdl):
    """"off": the loop form in 64-column steps (whole groups, a ragged last step); "on": the PDL form."""
    dtype = torch.bfloat16 if (N + bits) % 2 else torch.float32  # both dtypes across the cases
    qgemv_matches(N, K, bits, group, act, dtype, cfg=SMALL[pdl])


@interpreted
@pytest.mark.parametrize("pdl", FORMS)
@pytest.mark.parametrize("delta", [True, False], ids=["delta", "no_delta"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("N,K,group", CPU_CASES, ids=CPU_IDS)
def test_norm_qgemv_cpu(N, K, group, bits, delta, pdl):
    dtype = torch.float32 if (N + bits) % 2 else torch.bfloat16
    norm_qgemv_matches(N, K, bits, group, delta, dtype, cfg=SMALL[pdl])


@interpreted
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("N,K", [(70, 640), (6, PDL_MAX_K + 128)], ids=["pdl_form", "loop_form"])
def test_default_config_cpu(N, K, bits):
    """The ops' config on both sides of PDL_MAX_K (the loop form with a one-group tail), against float64 and
    against the CPU op (the reference)."""
    qgemv_matches(N, K, bits, 128, "silu_mul", torch.float32)
    norm_qgemv_matches(N, K, bits, 128, True, torch.float32)
    q, s, _ = weights(N, K, bits, 128, torch.float32)
    x = torch.randn(1, 2 * K)
    torch.testing.assert_close(triton_qgemv.qgemv(x, q, s, bits, 128, "silu_mul"),
                               torch.ops.gdn.qgemv(x, q, s, bits, 128, "silu_mul"), rtol=1e-5, atol=1e-5)


@interpreted
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", list(candidates(2048, 4)))
def test_candidates_cpu(name, bits):
    """Every candidate config of the 2B's K = 2048 (bench_qgemv --configs), at small odd shapes, both kernels."""
    cfg = candidates(2048, bits)[name]
    qgemv_matches(37, 384, bits, 128, "silu_mul", torch.bfloat16, cfg=cfg)
    norm_qgemv_matches(70, 320, bits, 64, True, torch.float32, cfg=cfg)


@interpreted
@pytest.mark.parametrize("bits", [8, 4])
def test_loop_candidates_cpu(bits):
    """The candidates of a K above PDL_MAX_K (the MLP's down) run the loop form: several steps, a ragged tail."""
    for name, cfg in candidates(6144, bits).items():
        assert cfg.pdl == "off", name
        qgemv_matches(9, PDL_MAX_K + 1024 + 128, bits, 128, "silu_mul", torch.float32, cfg=cfg)


def test_candidate_names_and_forms():
    """The shipped config leads, the chunks candidates move 8-32 KiB a program at K = 2048."""
    for bits in (8, 4):
        c = candidates(2048, bits)
        assert list(c)[0] == "shipped" and c["shipped"] == default_config(2048, bits)
        kib = {n: cfg.block_n * 2048 * bits // 8 >> 10 for n, cfg in c.items() if cfg.pdl == "on"}
        assert kib == {"shipped": 8, "chunks-8k-4w": 8, "chunks-16k-4w": 16, "chunks-32k-4w": 32, "chunks-32k-8w": 32}
        assert {n for n, cfg in c.items() if cfg.stages > 1} == {"chunks-loop-2s", "chunks-loop-3s"}


def test_default_config_is_the_ops_config():
    assert default_config(2048, 4) == QGemvConfig(8, 1024, 4, pdl="on")
    assert default_config(2048, 8) == QGemvConfig(4, 1024, 4, pdl="on")
    assert default_config(6144, 4) == QGemvConfig(8, 1024, 8, pdl="off")


# ---- the ops ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 4])
def test_cpu_ops_are_the_reference(bits):
    q, s, _ = weights(9, 64, bits, 32, torch.float32)
    x, g = torch.randn(1, 128), torch.randn(64)
    assert torch.equal(torch.ops.gdn.qgemv(x, q, s, bits, 32, "silu_mul"), ref.gemv(x, q, s, bits, 32, "silu_mul"))
    y, r, n = torch.ops.gdn.norm_qgemv(x[:, :64], None, g, EPS, q, s, bits, 32)
    want = ref.norm_gemv(x[:, :64], None, g, EPS, q, s, bits, 32)
    assert all(torch.equal(a, b) for a, b in zip((y, r, n), want))
    assert r.data_ptr() != x.data_ptr()


@pytest.mark.slow
def test_export_keeps_ops_cpu():
    class Pre(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g = torch.nn.Parameter(torch.randn(64))
            q, s, _ = weights(24, 64, 4, 32, torch.float32)
            self.register_buffer("q", q)
            self.register_buffer("s", s)

        def forward(self, x, d):
            y, r, n = torch.ops.gdn.norm_qgemv(x, d, self.g, EPS, self.q, self.s, 4, 32)
            return y, r, torch.ops.gdn.qgemv(n, self.q, self.s, 4, 32, "none")

    m, x, d = Pre(), torch.randn(1, 64), torch.randn(1, 64)
    ep = torch.export.export(m, (x, d), strict=True)
    targets = {str(n.target) for n in ep.graph.nodes}
    assert any(t.startswith("gdn.qgemv") for t in targets) and any(t.startswith("gdn.norm_qgemv") for t in targets)
    for a, b in zip(ep.module()(x, d), m(x, d)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---- bad input --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,group,K,match", [
    (8, 48, 96 + 32, "group size 48 does not divide"),
    (4, 7, 49, "group size must be even, got 7"),  # K odd: int4 cannot pack it
    (4, 3, 12, "group size must be even, got 3"),
    (3, 32, 64, "bits must be one of .* got 3"),
    (8, 0, 64, "positive int, got 0"),
    (8, True, 64, "positive int, got True"),
])
def test_bad_scheme_names_the_value(bits, group, K, match):
    with pytest.raises(ValueError, match=match):
        ref.quantize(torch.randn(4, K), bits, group)


def test_bad_kernel_inputs_name_them():
    q, s, _ = weights(5, 96, 4, 32, torch.float32)
    x = torch.randn(1, 96)
    with pytest.raises(ValueError, match=r"uint8 \[5, 48\].* got torch.int8"):
        triton_qgemv.qgemv(x, q.view(torch.int8), s, 4, 32, "none")
    with pytest.raises(ValueError, match=r"int8 qweight must be torch.int8 \[5, 96\]"):
        triton_qgemv.qgemv(x, q, s, 8, 32, "none")
    with pytest.raises(ValueError, match=r"wants x \[1, 192\]"):
        triton_qgemv.qgemv(x, q, s, 4, 32, "silu_mul")
    with pytest.raises(ValueError, match="'gelu'"):
        triton_qgemv.qgemv(x, q, s, 4, 32, "gelu")
    q3, s3 = ref.quantize(torch.randn(5, 96), 4, 96)
    with pytest.raises(ValueError, match="power-of-two group sizes >= 2, got 96"):
        triton_qgemv.qgemv(x, q3, s3, 4, 96, "none")
    with pytest.raises(ValueError, match=r"norm weight \(95,\)"):
        triton_norm_qgemv.norm_qgemv(x, None, torch.randn(95), EPS, q, s, 4, 32)
    q16, s16 = ref.quantize(torch.randn(5, 96), 4, 16)
    with pytest.raises(ValueError, match="chunks layout needs int4 groups of at least 32 columns, got 16"):
        triton_qgemv.qgemv(x, q16, s16, 4, 16, "none", QGemvConfig(layout="chunks"))
    with pytest.raises(ValueError, match="layout in .* got QGemvConfig.*'rows'"):
        triton_norm_qgemv.norm_qgemv(x, None, torch.randn(96), EPS, q, s, 4, 32, QGemvConfig(layout="rows"))
    with pytest.raises(ValueError, match="stages >= 1 .* got QGemvConfig"):
        triton_qgemv.qgemv(x, q, s, 4, 32, "none", QGemvConfig(stages=2))
    with pytest.raises(ValueError, match="quantize wants a float"):
        ref.quantize(torch.ones(4, 8, dtype=torch.int32), 8, 4)


# ---- H100: Qwen3.5-2B's decode shapes ---------------------------------------------------------------------------

# name: (N, K, form). gemv sites: the output projections and the MLP's down; norm sites the rest and lm_head.
SHAPES = {"gdn_in_proj": (8224, 2048, "norm"), "attn_qkv": (5120, 2048, "norm"), "gate_up": (12288, 2048, "norm"),
          "out_proj": (2048, 2048, "none"), "down": (2048, 6144, "silu_mul"), "lm_head": (248320, 2048, "norm")}


@pytest.mark.cuda
@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", list(SHAPES))
def test_qgemv_cuda(name, bits, group):
    """The ops' config (the PDL form launched with PDL up to PDL_MAX_K, the loop form above), bf16."""
    N, K, form = SHAPES[name]
    if form == "norm":
        for delta in (True, False):
            norm_qgemv_matches(N, K, bits, group, delta, torch.bfloat16, "cuda")
    else:
        qgemv_matches(N, K, bits, group, form, torch.bfloat16, "cuda")
        qgemv_matches(N, K, bits, group, "none" if form == "silu_mul" else "silu_mul", torch.bfloat16, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("pdl", ["off", "on"])
@pytest.mark.parametrize("bits", [8, 4])
def test_both_forms_fp32_cuda(bits, pdl):
    """fp32 at float32's tolerance, each form at the 2B's K = 2048."""
    qgemv_matches(2048, 2048, bits, 64, "silu_mul", torch.float32, "cuda", QGemvConfig(8, 512, 4, pdl=pdl))
    norm_qgemv_matches(5120, 2048, bits, 64, True, torch.float32, "cuda", QGemvConfig(8, 512, 4, pdl=pdl))


@pytest.mark.cuda
@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", ["gdn_in_proj", "out_proj", "down"])
def test_candidates_cuda(name, bits, group):
    """Every candidate config (bench_qgemv --configs) at the 2B's shapes, bf16, the PDL form launched with PDL."""
    N, K, form = SHAPES[name]
    for cand, cfg in candidates(K, bits).items():
        if form == "norm":
            norm_qgemv_matches(N, K, bits, group, True, torch.bfloat16, "cuda", cfg)
        else:
            qgemv_matches(N, K, bits, group, form, torch.bfloat16, "cuda", cfg)
        qgemv_matches(N, K, bits, group, "none", torch.float32, "cuda", cfg)


@pytest.mark.cuda
@pytest.mark.parametrize("bits", [8, 4])
def test_ops_equal_kernels_cuda(bits):
    """The registered ops run the kernels with `default_config`, bit for bit."""
    q, s, _ = weights(2048, 6144, bits, 128, torch.bfloat16, "cuda")
    x = torch.randn(1, 2 * 6144, device="cuda").to(torch.bfloat16)
    assert torch.equal(torch.ops.gdn.qgemv(x, q, s, bits, 128, "silu_mul"),
                       triton_qgemv.qgemv(x, q, s, bits, 128, "silu_mul", default_config(6144, bits)))
    q, s, _ = weights(1281, 2048, bits, 128, torch.bfloat16, "cuda")
    x, d, g = (torch.randn(1, 2048, device="cuda").to(torch.bfloat16) for _ in range(3))
    got = torch.ops.gdn.norm_qgemv(x, d, g[0], EPS, q, s, bits, 128)
    want = triton_norm_qgemv.norm_qgemv(x, d, g[0], EPS, q, s, bits, 128, default_config(2048, bits))
    assert all(torch.equal(a, b) for a, b in zip(got, want))
