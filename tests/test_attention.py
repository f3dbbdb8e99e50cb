"""Attention ops (gdn::prefill_attention, gdn::decode_attention): the Triton kernels, the chunked reference (the
CPU kernel) and the registered ops against a float64 oracle.

The oracle is a dense float64 softmax of the same (rounded) inputs over the cache after the write, query i seeing
positions 0 .. input_pos[i]. Per tensor:
- out: the largest relative error of one (token, head) row, |o - o64| / |o64|: float32 1e-5, bfloat16 1e-2
  (o itself rounded to bf16, the probabilities enter the P V dot in bf16). Outputs start NaN-filled.
- the caches: bit-equal to the old caches with k, v written at input_pos.
Cache entries that must never be read hold NaN: everything past the last position in use, and before the call the
slots the call writes. CPU cases run the kernels through TRITON_INTERPRET=1 at the bundled default model's heads
(H 4, Hkv 2, D 48) and a few others, D 256 at reduced lengths; `cuda` cases run the real shapes (H 8 or 16,
Hkv 2, D 256, S up to 262,144).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch
from torch.export import Dim

import gdn.kernels.attention  # noqa: F401  (registers torch.ops.gdn.prefill_attention / decode_attention)
from gdn.kernels.attention import reference as ref
from gdn.kernels.attention import triton_decode, triton_prefill
from gdn.kernels.attention.triton_decode import DecodeConfig, decode_config, num_splits, split_span

interpreted = pytest.mark.interpret
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float64: 1e-12}
NAN = float("nan")
LENGTHS = (1, 63, 64, 65, 1000, 4097)


@dataclass(frozen=True)
class Case:
    T: int  # chunk length (1 for decode)
    start: int  # input_pos[0]: the prefix already in the cache
    H: int
    Hkv: int
    D: int
    S: int  # max_seq_len
    dtype: torch.dtype

    @property
    def id(self) -> str:
        dt = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float64: "fp64"}[self.dtype]
        return f"T{self.T}-at{self.start}-H{self.H}-Hkv{self.Hkv}-D{self.D}-S{self.S}-{dt}"


def params(cases: list[Case], marks=()) -> list:
    return [pytest.param(c, id=c.id, marks=marks) for c in cases]


def make(c: Case, device: str) -> dict:
    """Fresh random q, k, v; caches random before `start`, NaN from it on (the slots written by the call too)."""
    def rand(*shape):
        return torch.randn(*shape, device=device).to(c.dtype)

    k_cache, v_cache = rand(c.Hkv, c.S, c.D), rand(c.Hkv, c.S, c.D)
    k_cache[:, c.start :] = NAN
    v_cache[:, c.start :] = NAN
    pos = torch.arange(c.start, c.start + c.T, device=device)
    return {"q": rand(c.T, c.H, c.D), "k": rand(c.T, c.Hkv, c.D), "v": rand(c.T, c.Hkv, c.D),
            "k_cache": k_cache, "v_cache": v_cache, "input_pos": pos}


def written(x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The caches the call must leave: the old ones with k, v at input_pos."""
    kc, vc = x["k_cache"].clone(), x["v_cache"].clone()
    kc[:, x["input_pos"]] = x["k"].transpose(0, 1)
    vc[:, x["input_pos"]] = x["v"].transpose(0, 1)
    return kc, vc


def oracle(x: dict) -> torch.Tensor:
    """Dense float64 attention over the written caches -> [T, H, D], in blocks of queries ([H, block, L] scores)."""
    q, pos = x["q"].double(), x["input_pos"]
    T, H, D = q.shape
    L = int(pos[-1]) + 1  # positions past the last one in use are never visible
    kc, vc = (x[n][:, :L].to(torch.float64, copy=True) for n in ("k_cache", "v_cache"))
    kc[:, pos] = x["k"].double().transpose(0, 1)
    vc[:, pos] = x["v"].double().transpose(0, 1)
    G = H // kc.shape[0]
    kh, vh = kc.repeat_interleave(G, 0), vc.repeat_interleave(G, 0)  # [H, L, D]
    keys = torch.arange(L, device=q.device)
    block = max(1, 2**26 // (H * L))
    out = []
    for t0 in range(0, T, block):
        s = (q[t0 : t0 + block].transpose(0, 1) @ kh.transpose(-1, -2)) * D**-0.5  # [H, b, L]
        s = s.masked_fill(keys[None, None, :] > pos[t0 : t0 + block, None], float("-inf"))
        out.append(torch.softmax(s, -1) @ vh)
    return torch.cat(out, 1).transpose(0, 1)


def row_error(o: torch.Tensor, o64: torch.Tensor) -> float:
    """The largest relative error of one (token, head) row."""
    assert torch.isfinite(o).all(), "non-finite output (a NaN-poisoned row left unwritten, or a NaN entry read)"
    return ((o.double() - o64).norm(dim=-1) / o64.norm(dim=-1)).max().item()


def check(x: dict, o: torch.Tensor, o64: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    assert o.dtype == x["q"].dtype and o.shape == x["q"].shape
    err = row_error(o, o64)
    assert err < TOL[o.dtype], f"out: largest row error {err:.2e}"
    want_k, want_v = written(x)
    torch.testing.assert_close(k_cache, want_k, rtol=0, atol=0, equal_nan=True, msg="k_cache")
    torch.testing.assert_close(v_cache, want_v, rtol=0, atol=0, equal_nan=True, msg="v_cache")


def run_kernel(x: dict, decode: bool, config=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Triton op wrapper on copies of the caches, into a NaN-filled output."""
    kc, vc = x["k_cache"].clone(), x["v_cache"].clone()
    out = torch.full_like(x["q"], NAN)
    fn = triton_decode.decode_attention if decode else triton_prefill.prefill_attention
    o = fn(x["q"], x["k"], x["v"], kc, vc, x["input_pos"], out=out, config=config)
    assert o is out
    return o, kc, vc


def kernel_matches(c: Case, device: str, decode: bool, config=None) -> None:
    x = make(c, device)
    o, kc, vc = run_kernel(x, decode, config=config)
    check(x, o, oracle(x), kc, vc)


# ---------------------------------------------------------------- prefill, interpreter

def prefill_cases_cpu() -> list[Case]:
    f32, bf16 = torch.float32, torch.bfloat16
    cases = [Case(T, 0, 4, 2, 48, T + 37, f32) for T in LENGTHS[:-1]]  # no prefix, S not a multiple of any block
    # 4,097 with one KV head: the interpreter's time grows with the programs x key blocks
    cases += [Case(4097, 0, 2, 1, 48, 4097 + 37, f32)]
    # chunks starting mid-sequence: odd prefixes, a prefix ending on and beside key-block edges
    cases += [Case(T, s, 4, 2, 48, s + T + 5, f32) for s, T in ((1, 63), (37, 64), (63, 65), (64, 1), (65, 100),
                                                              (1000, 65), (4000, 97))]
    cases += [Case(T, s, 4, 2, 48, s + T + 3, bf16) for s, T in ((0, 65), (0, 1000), (37, 63))]
    # D 256 (the real models) at reduced lengths; D 16 (tests/hf_tiny); other query groups: 3, 1, 8
    cases += [Case(65, 0, 4, 2, 256, 70, f32), Case(63, 70, 4, 2, 256, 140, f32), Case(65, 100, 4, 2, 256, 170, bf16)]
    cases += [Case(65, 9, 4, 2, 16, 80, f32), Case(65, 5, 6, 2, 48, 80, f32), Case(65, 5, 2, 2, 48, 80, f32),
              Case(33, 3, 16, 2, 48, 40, bf16)]
    return cases


@interpreted
@pytest.mark.parametrize("c", params(prefill_cases_cpu()))
def test_prefill_cpu(c):
    kernel_matches(c, "cpu", decode=False)


@interpreted
def test_prefill_chunks_then_decode_cpu():
    """One sequence through the state the calls leave in the caches: prefill 100 tokens as chunks of 64 and 36,
    then three decode steps; each call's output against the oracle over everything written so far."""
    c = Case(103, 0, 4, 2, 48, 130, torch.float32)
    x = make(c, "cpu")
    kc, vc = x["k_cache"].clone(), x["v_cache"].clone()
    o64 = oracle(x)
    outs = []
    for a, b in ((0, 64), (64, 100), (100, 101), (101, 102), (102, 103)):
        fn = triton_decode.decode_attention if b - a == 1 else triton_prefill.prefill_attention
        outs.append(fn(x["q"][a:b], x["k"][a:b], x["v"][a:b], kc, vc, x["input_pos"][a:b],
                       out=torch.full_like(x["q"][a:b], NAN)))
    check(x, torch.cat(outs), o64, kc, vc)


# ---------------------------------------------------------------- decode, interpreter

def split_edges(S: int, Hkv: int, config: DecodeConfig) -> list[int]:
    """Positions on both sides of the decode kernel's split boundaries for a cache of S: where the range length
    (span) grows (pos = k NSPLIT BN, k = 1, 2) and around the first boundaries j span of each span."""
    nsplit, bn = num_splits(S, Hkv, config), config.block_n
    edges = {0, 1, 2, S - 2, S - 1}
    for k in (0, 1, 2):
        span = (k + 1) * bn
        edges |= {k * nsplit * bn + j * span + d for j in (0, 1, 2) for d in (-1, 0, 1)}
    return sorted(p for p in edges if 0 <= p < S)


def test_split_edges_are_split_boundaries():
    """The positions the decode tests use sit where the kernel's ranges change: the span grows from k BN to
    (k + 1) BN between k NSPLIT BN and the position after it; the ranges always cover the keys [0, pos)."""
    for S, Hkv, cfg in ((SMALL_S, 2, SMALL_SPLITS), (262144, 2, decode_config(256, torch.bfloat16))):
        nsplit, bn = num_splits(S, Hkv, cfg), cfg.block_n
        assert 2 * nsplit * bn + 2 * 3 * bn + 1 < S, "S must reach the third span"
        for k in (1, 2):
            p = k * nsplit * bn
            assert split_span(p, nsplit, bn) == k * bn and split_span(p + 1, nsplit, bn) == (k + 1) * bn
        for p in split_edges(S, Hkv, cfg):
            assert p == 0 or -(-p // split_span(p, nsplit, bn)) <= nsplit


# the kernel with 8 programs (NSPLIT 4 at Hkv 2): every split edge below S at interpreter cost
SMALL_SPLITS, SMALL_S = DecodeConfig(64, 4, 2, 8), 1000


@interpreted
@pytest.mark.parametrize("pos", split_edges(SMALL_S, 2, SMALL_SPLITS))
def test_decode_split_edges_cpu(pos):
    kernel_matches(Case(1, pos, 4, 2, 48, SMALL_S, torch.float32), "cpu", decode=True, config=SMALL_SPLITS)


DECODE_CPU = (
    # the shipped configuration at the default model's heads: NSPLIT 66, the span grows past 4,224
    [Case(1, p, 4, 2, 48, 4300, torch.float32) for p in (4223, 4224, 4225, 4299)]
    + [Case(1, p, 4, 2, 48, 4300, torch.bfloat16) for p in (65, 4225)]
    # D 256 (NSPLIT 10 for bf16, 38 for fp32's 16-key blocks), D 16, other groups
    + [Case(1, p, 4, 2, 256, 600, dt) for p in (0, 599) for dt in (torch.float32, torch.bfloat16)]
    + [Case(1, p, 4, 2, 16, 300, torch.float32) for p in (0, 129)]
    + [Case(1, p, h, 2, 48, 300, torch.float32) for p in (1, 257) for h in (2, 6, 16)]
    + [Case(1, p, 4, 2, 48, 40, torch.float32) for p in (0, 17, 39)]  # NSPLIT 1: a cache shorter than a block
)


@interpreted
@pytest.mark.parametrize("c", params(DECODE_CPU))
def test_decode_cpu(c):
    kernel_matches(c, "cpu", decode=True)


@interpreted
def test_decode_position_zero_after_long_sequence_cpu():
    """A new sequence after a long one: at position 0 everything past 0 is stale (NaN here), so the output is
    the new token's v in every head, and nothing else is read."""
    c = Case(1, 0, 4, 2, 48, 4300, torch.float32)
    x = make(c, "cpu")
    x["k_cache"][:, 0] = 1.0  # the long sequence's entry at 0: overwritten, never read
    x["v_cache"][:, 0] = 1.0
    o, kc, vc = run_kernel(x, decode=True)
    check(x, o, oracle(x), kc, vc)
    assert torch.equal(o, x["v"].repeat_interleave(2, 1)), "one visible key: out is its v exactly"


# ---------------------------------------------------------------- the reference (CPU kernel) and the ops

REF_CASES = (
    [Case(T, 0, 4, 2, 48, T + 37, torch.float64) for T in LENGTHS]
    # chunks across the reference's key-chunk edges (512, 1024) and a cache of exactly two chunks
    + [Case(T, s, 4, 2, 48, S, torch.float64) for s, T, S in ((511, 2, 600), (510, 515, 1100), (1000, 24, 1024))]
    + [Case(1, p, 4, 2, 48, 1100, torch.float64) for p in (0, 511, 512, 1099)]
)


@pytest.mark.parametrize("c", params(REF_CASES))
def test_reference_matches_dense_float64(c):
    """The chunked online softmax equals the dense softmax in float64 (NaN past the positions in use)."""
    x = make(c, "cpu")
    kc, vc = x["k_cache"].clone(), x["v_cache"].clone()
    fn = ref.decode_attention if c.T == 1 else ref.prefill_attention
    check(x, fn(x["q"], x["k"], x["v"], kc, vc, x["input_pos"]), oracle(x), kc, vc)


@pytest.mark.parametrize("c", params([Case(65, 37, 4, 2, 48, 700, dt) for dt in (torch.float32, torch.bfloat16)]
                                     + [Case(1, 600, 6, 2, 256, 700, torch.float32)]))
def test_ops_on_cpu_run_the_reference(c):
    """torch.ops.gdn.* on CPU tensors run the reference: outputs and caches equal to it, within tolerance of
    the oracle."""
    x = make(c, "cpu")
    op = torch.ops.gdn.decode_attention if c.T == 1 else torch.ops.gdn.prefill_attention
    fn = ref.decode_attention if c.T == 1 else ref.prefill_attention
    kc1, vc1, kc2, vc2 = (x[n].clone() for n in ("k_cache", "v_cache", "k_cache", "v_cache"))
    got = op(x["q"], x["k"], x["v"], kc1, vc1, x["input_pos"])
    want = fn(x["q"], x["k"], x["v"], kc2, vc2, x["input_pos"])
    assert torch.equal(got, want)
    check(x, got, oracle(x), kc1, vc1)


def bad(**change) -> dict:
    x = make(Case(3, 2, 4, 2, 16, 10, torch.float32), "cpu")
    return {**x, **change}


BAD = [
    (bad(q=torch.randn(3, 3, 16)), "query heads H=3 are not a multiple of KV heads Hkv=2"),
    (bad(k=torch.randn(3, 2, 8)), r"k and v must be \[3, 2, 16\], got \(3, 2, 8\)"),
    (bad(v_cache=torch.randn(2, 11, 16)), r"caches must both be \[2, S, 16\]"),
    (bad(k_cache=torch.randn(2, 16, 10).transpose(1, 2)), "must be contiguous"),
    (bad(input_pos=torch.arange(2, 5, dtype=torch.int32)), "input_pos must be int64 \\[3\\], got torch.int32"),
    (bad(v=torch.randn(3, 2, 16, dtype=torch.float64)), "must share one dtype"),
    (bad(q=torch.randn(3, 4)), "q, k must be \\[T, H, D\\]"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m.split()[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_arguments_named(args, message):
    names = ("q", "k", "v", "k_cache", "v_cache", "input_pos")
    for fn in (torch.ops.gdn.prefill_attention, triton_prefill.prefill_attention):
        with pytest.raises(ValueError, match=message):
            fn(*(args[n] for n in names))


def test_bad_decode_length_and_kernel_dtype_named():
    x = make(Case(2, 0, 4, 2, 16, 10, torch.float32), "cpu")
    args = [x[n] for n in ("q", "k", "v", "k_cache", "v_cache", "input_pos")]
    for fn in (torch.ops.gdn.decode_attention, triton_decode.decode_attention):
        with pytest.raises(ValueError, match="decode_attention takes one token, got T=2"):
            fn(*args)
    with pytest.raises(ValueError, match="must share one dtype of \\['torch.bfloat16', 'torch.float32'\\]"):
        triton_prefill.prefill_attention(*(a.double() if a.is_floating_point() else a for a in args))


class Core(torch.nn.Module):
    """The attention step of a layer over cache buffers: T == 1 (static) takes the decode op."""

    def __init__(self, Hkv: int, S: int, D: int, dtype: torch.dtype, kernels: str = "ops"):
        super().__init__()
        self.kernels = kernels
        self.register_buffer("k_cache", torch.zeros(Hkv, S, D, dtype=dtype))
        self.register_buffer("v_cache", torch.zeros(Hkv, S, D, dtype=dtype))

    def forward(self, q, k, v, input_pos):
        ops = torch.ops.gdn if self.kernels == "ops" else ref
        fn = ops.decode_attention if q.shape[0] == 1 else ops.prefill_attention
        return fn(q, k, v, self.k_cache, self.v_cache, input_pos)


def core_inputs(T: int, start: int, H: int, Hkv: int, D: int, dtype, device: str):
    return (torch.randn(T, H, D, device=device).to(dtype), torch.randn(T, Hkv, D, device=device).to(dtype),
            torch.randn(T, Hkv, D, device=device).to(dtype), torch.arange(start, start + T, device=device))


def export_core(m: Core, T: int, H: int, D: int, dtype, device: str) -> torch.export.ExportedProgram:
    Hkv = m.k_cache.shape[0]
    args = core_inputs(T, 0, H, Hkv, D, dtype, device)
    if T == 1:
        return torch.export.export(m, args, strict=True)
    t = Dim("T", min=2, max=4096)
    return torch.export.export(m, args, dynamic_shapes=({0: t}, {0: t}, {0: t}, {0: t}), strict=True)


@pytest.mark.slow
@pytest.mark.parametrize("T", [1, 64], ids=["decode", "prefill"])
def test_reference_exports_with_cache_mutation_and_no_t_by_s_tensor(T):
    """The reference traces into ATen ops (the CPU artifacts' path): the caches are mutated buffers, written
    by index_put (which ExecuTorch's reinplace pass writes in place), and no tensor in the program has T x S
    elements per head (the dense scores would have H T S)."""
    H, Hkv, D, S = 4, 2, 48, 4096
    m = Core(Hkv, S, D, torch.float32, kernels="reference")
    ep = export_core(m, T, H, D, torch.float32, "cpu").run_decompositions()
    assert set(ep.graph_signature.buffers_to_mutate.values()) == {"k_cache", "v_cache"}
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "aten.index_put.default" in targets and not any("index_copy" in t for t in targets)
    hint = 64 if T > 1 else 1
    sizes = {}
    for n in ep.graph.nodes:
        val = n.meta.get("val")
        if n.op == "call_function" and isinstance(val, torch.Tensor):
            numel = 1
            for d in val.shape:
                numel *= d if isinstance(d, int) else hint  # the symbolic T at the chunk length 64
            sizes[n.name] = numel
    cache = Hkv * S * D
    assert sorted(k for k, v in sizes.items() if v == cache) == ["index_put", "index_put_1"], "a copy of a cache"
    biggest, name = max((v, k) for k, v in sizes.items() if v != cache)
    assert biggest < cache // 2, f"{name} has {biggest} elements"
    if T > 1:
        assert biggest < H * T * S // 2, f"{name} has {biggest} elements"
    args = core_inputs(T, 0, H, Hkv, D, torch.float32, "cpu")
    eager = Core(Hkv, S, D, torch.float32, kernels="reference")
    torch.testing.assert_close(ep.module()(*args), eager(*args), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("T", [1, 64], ids=["decode", "prefill"])
def test_ops_export_as_single_nodes(T):
    """torch.export(strict=True) keeps each op as one node (prefill at a dynamic length); the exported program
    runs the CPU kernel, equal to eager."""
    m = Core(2, 300, 48, torch.float32)
    ep = export_core(m, T, 4, 48, torch.float32, "cpu")
    name = "gdn.decode_attention" if T == 1 else "gdn.prefill_attention"
    assert [str(n.target) for n in ep.graph.nodes if "gdn" in str(n.target)] == [name + ".default"]
    eager = Core(2, 300, 48, torch.float32)
    for start in (0, T):
        args = core_inputs(T, start, 4, 2, 48, torch.float32, "cpu")
        assert torch.equal(ep.module()(*args), eager(*args))


# ---------------------------------------------------------------- GPU: the real shapes

GPU_PREFILL = (
    [Case(T, 0, 8, 2, 256, 32800, torch.bfloat16) for T in LENGTHS + (4096,)]
    + [Case(T, s, h, 2, 256, 32800, torch.bfloat16) for h in (8, 16)
       for s, T in ((28672, 4096), (1000, 65), (37, 1000), (4095, 2), (20000, 1))]
    + [Case(65, 262144 - 65, 8, 2, 256, 262144, torch.bfloat16)]  # the last chunk of the longest cache
    + [Case(T, s, 8, 2, 256, 32800, torch.float32) for s, T in ((0, 1000), (0, 4097), (28672, 4096), (63, 65))]
    + [Case(4096, 0, 16, 2, 256, 4096, torch.float32)]
    # the small heads of the bundled and test models (padded D), other groups
    + [Case(T, s, 4, 2, d, 2000, dt) for d in (16, 48) for dt in (torch.float32, torch.bfloat16)
       for s, T in ((0, 1000), (37, 65))]
    + [Case(65, 5, h, 2, 256, 200, torch.bfloat16) for h in (2, 6, 32)]
)


@pytest.mark.cuda
@pytest.mark.parametrize("c", params(GPU_PREFILL))
def test_prefill_cuda(c):
    kernel_matches(c, "cuda", decode=False)


def gpu_decode_cases() -> list[Case]:
    S = 262144
    cases = []
    for dt in (torch.bfloat16, torch.float32):
        for h in (8, 16):
            far = [32767, 32768, 131071, 131072, 131073]  # 131072: 64 full ranges of 2,048
            edges = split_edges(S, 2, decode_config(256, dt))
            cases += [Case(1, p, h, 2, 256, S, dt) for p in edges + far]
    cases += [Case(1, p, 4, 2, d, 5000, dt) for d in (16, 48) for dt in (torch.float32, torch.bfloat16)
              for p in split_edges(5000, 2, decode_config(d, dt))]
    cases += [Case(1, p, h, 2, 256, 5000, torch.bfloat16) for h in (2, 6, 32) for p in (0, 4225, 4999)]
    return cases


@pytest.mark.cuda
@pytest.mark.parametrize("c", params(gpu_decode_cases()))
def test_decode_cuda(c):
    kernel_matches(c, "cuda", decode=True)


@pytest.mark.cuda
@pytest.mark.parametrize("c", params([Case(1000, 37, 8, 2, 256, 2048, torch.bfloat16),
                                      Case(1, 1500, 16, 2, 256, 2048, torch.bfloat16)]))
def test_ops_equal_kernels_cuda(c):
    """The registered ops run the same kernels: bit-equal outputs and caches (the op's output NaN-poisoned
    through the caching allocator, which hands the freed NaN block to it)."""
    x = make(c, "cuda")
    decode = c.T == 1
    want, kc1, vc1 = run_kernel(x, decode)
    kc2, vc2 = x["k_cache"].clone(), x["v_cache"].clone()
    poison = torch.full_like(x["q"], NAN)
    del poison
    op = torch.ops.gdn.decode_attention if decode else torch.ops.gdn.prefill_attention
    got = op(x["q"], x["k"], x["v"], kc2, vc2, x["input_pos"])
    assert torch.equal(got, want)
    assert torch.equal(kc1.nan_to_num(), kc2.nan_to_num()) and torch.equal(vc1.nan_to_num(), vc2.nan_to_num())


@pytest.mark.cuda
def test_prefill_then_decode_cuda():
    """One sequence through the caches: prefill 5,000 tokens in chunks of 4,096 and 904, then 3 decode steps."""
    c = Case(5003, 0, 8, 2, 256, 8192, torch.bfloat16)
    x = make(c, "cuda")
    kc, vc = x["k_cache"].clone(), x["v_cache"].clone()
    outs = []
    for a, b in ((0, 4096), (4096, 5000), (5000, 5001), (5001, 5002), (5002, 5003)):
        op = torch.ops.gdn.decode_attention if b - a == 1 else torch.ops.gdn.prefill_attention
        outs.append(op(x["q"][a:b], x["k"][a:b], x["v"][a:b], kc, vc, x["input_pos"][a:b]))
    check(x, torch.cat(outs), oracle(x), kc, vc)


@pytest.mark.cuda
@pytest.mark.slow
def test_decode_graph_replays_at_any_position_cuda():
    """The decode op captured once in a CUDA graph replays correctly at positions written into input_pos between
    replays, forwards, backwards and to 0 of a new sequence; before each replay the cache holds fresh values
    before the position and NaN from it on."""
    H, Hkv, D, S = 8, 2, 256, 262144
    d = dict(device="cuda", dtype=torch.bfloat16)
    kc, vc = torch.randn(Hkv, S, D, **d), torch.randn(Hkv, S, D, **d)
    q, k, v = torch.randn(1, H, D, **d), torch.randn(1, Hkv, D, **d), torch.randn(1, Hkv, D, **d)
    pos = torch.zeros(1, dtype=torch.int64, device="cuda")

    def step():
        return torch.ops.gdn.decode_attention(q, k, v, kc, vc, pos)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for p in (5, 1000, 4225, 70001, 8447, S - 1, 131073, 0):
        for c in (kc, vc):  # in place: the captured graph reads these tensors
            c.normal_()
            c[:, p:] = NAN
        for t in (q, k, v):
            t.copy_(torch.randn_like(t))
        pos.fill_(p)
        x = {"q": q.clone(), "k": k.clone(), "v": v.clone(), "input_pos": pos.clone(),
             "k_cache": kc[:, : p + 1].clone(), "v_cache": vc[:, : p + 1].clone()}
        out.fill_(NAN)
        graph.replay()
        torch.cuda.synchronize()
        err = row_error(out, oracle(x))
        assert err < TOL[torch.bfloat16], f"position {p}: largest row error {err:.2e}"
        assert torch.equal(kc[:, p], k[0]) and torch.equal(vc[:, p], v[0]), f"position {p}: cache not written"


def pdl_chain(pdl: str, S: int = 65536) -> list[torch.Tensor]:
    """64 decode calls captured back to back in one graph, each call's q the output of the one before, at
    positions across the split edges (and from S - 1 back to 0): three replays from fresh first queries."""
    H, Hkv, D = 8, 2, 256
    gen = torch.Generator(device="cuda").manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device="cuda").to(torch.bfloat16)

    kc, vc, q, k, v = rand(Hkv, S, D), rand(Hkv, S, D), rand(1, H, D), rand(1, Hkv, D), rand(1, Hkv, D)
    cfg = replace(decode_config(D, torch.bfloat16), pdl=pdl)
    edges = split_edges(S, Hkv, cfg)
    positions = [torch.full((1,), p, device="cuda") for p in (edges[:: -(-len(edges) // 63)] + [0])]

    def run() -> torch.Tensor:
        x = q
        for p in positions:
            x = triton_decode.decode_attention(x, k, v, kc, vc, p, config=cfg)
        return x

    run()  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    outs = []
    for _ in range(3):
        q.copy_(rand(1, H, D))
        out.fill_(NAN)
        graph.replay()
        outs.append(out.clone())
    return outs


@pytest.mark.cuda
def test_decode_pdl_equals_serial_cuda():
    """Race check of the PDL launches: a combine that read the partials early, or a split kernel that read its
    q before the combine before it wrote it, changes the chain; "on" must be bit-equal to "serial" (the same
    kernels in plain stream order)."""
    on, serial = pdl_chain("on"), pdl_chain("serial")
    for i, (a, b) in enumerate(zip(on, serial)):
        assert not a.isnan().any(), f"replay {i}: NaN in the output"
        assert torch.equal(a, b), f"replay {i}: max |on - serial| {(a.float() - b.float()).abs().max():.3e}"


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("T", [1, 300], ids=["decode", "prefill"])
def test_aoti_compiled_matches_eager_without_cache_copy_cuda(T):
    """AOTInductor compiles the ops' kernels into the library; the compiled program equals eager over a
    sequence of calls (state in its cache buffers), has no copy of a buffer in its C++ and allocates far less
    than one cache per call."""
    from aoti_util import compile_and_load

    H, Hkv, D, S, dtype = 8, 2, 256, 32768, torch.bfloat16
    m = Core(Hkv, S, D, dtype).cuda()
    eager = Core(Hkv, S, D, dtype).cuda()
    compiled, src = compile_and_load(export_core(m, T, H, D, dtype, "cuda"))
    assert "launchKernel" in src or "triton" in src.lower()
    assert "aoti_torch_copy_" not in src, "compiled program copies a buffer"
    cache_bytes = Hkv * S * D * 2
    starts = [0, 1, 2, 3000] if T == 1 else [0, 300, 600]
    for start in starts:
        args = core_inputs(T, start, H, Hkv, D, dtype, "cuda")
        want = eager(*args)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        got = compiled(*args)
        torch.cuda.synchronize()
        grew = torch.cuda.max_memory_allocated() - base
        assert grew < cache_bytes // 4, f"a call allocated {grew} bytes (one cache is {cache_bytes})"
        err = row_error(got, want.double())
        assert err < TOL[dtype], f"call at {start}: compiled differs from eager, largest row error {err:.2e}"


# ---------------------------------------------------------------- pads (input_pos -1)
# A call whose tokens n .. T-1 are pads (input_pos -1, their q, k, v NaN: garbage the contract allows) must write
# only the real tokens' k, v, give the real rows the unpadded call's outputs (the oracle of the unpadded inputs;
# the Triton kernels bit-equal to their own unpadded call) and 0 in the pad rows. A decode pad (n = 0) writes
# nothing, reads no cache entry and outputs 0.

def with_pads(x: dict, pads: int) -> dict:
    """x's call with `pads` pad tokens after its real ones (all of them pads when x's input_pos is replaced)."""
    def nan_rows(t):
        return torch.cat([t, torch.full((pads, *t.shape[1:]), NAN, dtype=t.dtype, device=t.device)])

    pos = torch.cat([x["input_pos"], torch.full((pads,), -1, dtype=torch.int64, device=x["input_pos"].device)])
    return {**x, "q": nan_rows(x["q"]), "k": nan_rows(x["k"]), "v": nan_rows(x["v"]), "input_pos": pos}


def decode_pad(x: dict) -> dict:
    """x's decode call turned into a no-op step: input_pos -1, q, k, v NaN."""
    return {**x, **{n: torch.full_like(x[n], NAN) for n in ("q", "k", "v")},
            "input_pos": torch.full_like(x["input_pos"], -1)}


def pads_match(c: Case, pads: int, fn, device: str, exact_to_unpadded: bool, **kw) -> None:
    """fn(q, k, v, k_cache, v_cache, input_pos, **kw) on c's call with `pads` pads against the oracle and fn's own
    unpadded call."""
    x = make(c, device)
    p = with_pads(x, pads)
    kc, vc = x["k_cache"].clone(), x["v_cache"].clone()
    o = fn(p["q"], p["k"], p["v"], kc, vc, p["input_pos"], **kw)
    assert o.shape == p["q"].shape
    assert torch.equal(o[c.T :], torch.zeros_like(o[c.T :])), "a pad row is not 0"
    check(x, o[: c.T], oracle(x), kc, vc)  # the caches: only the real tokens written
    if exact_to_unpadded:
        want = fn(x["q"], x["k"], x["v"], x["k_cache"].clone(), x["v_cache"].clone(), x["input_pos"], **kw)
        assert torch.equal(o[: c.T], want), "real rows differ from the unpadded call"


def decode_pad_keeps_caches(c: Case, fn, device: str, **kw) -> None:
    x = decode_pad(make(c, device))
    kc, vc = x["k_cache"].clone(), x["v_cache"].clone()
    o = fn(x["q"], x["k"], x["v"], kc, vc, x["input_pos"], **kw)
    assert torch.equal(o, torch.zeros_like(o)), "a decode pad's output is not 0"
    torch.testing.assert_close(kc, x["k_cache"], rtol=0, atol=0, equal_nan=True, msg="k_cache changed")
    torch.testing.assert_close(vc, x["v_cache"], rtol=0, atol=0, equal_nan=True, msg="v_cache changed")


def nan_out(fn):
    """fn into a NaN-filled output (the kernels' `out`)."""
    return lambda q, *a, **kw: fn(q, *a, out=torch.full_like(q, NAN), **kw)


# (real tokens n, pads, start, S - start - n): buckets of 2, 16, 32, 128 (T <= S, as exports guarantee), prefixes,
# and pads whose positions would run past the end of the cache (n5 at 60, S 67)
PAD_CASES = [
    (1, 1, 0, 40), (2, 14, 0, 40), (15, 1, 0, 40), (17, 15, 0, 40), (63, 1, 37, 40), (65, 63, 5, 70), (2, 126, 0, 130),
    (5, 27, 60, 2), (17, 15, 3, 30),
]


def pad_params(dtypes) -> list:
    return [pytest.param(Case(n, s, 4, 2, 48, s + n + slack, dt), pads, id=f"n{n}-pads{pads}-at{s}-S{s + n + slack}-"
                         f"{str(dt)[6:]}") for n, pads, s, slack in PAD_CASES for dt in dtypes]


@interpreted
@pytest.mark.parametrize("c,pads", pad_params((torch.float32,)) + pad_params((torch.bfloat16,))[-1:])
def test_prefill_pads_cpu(c, pads):
    pads_match(c, pads, nan_out(triton_prefill.prefill_attention), "cpu", exact_to_unpadded=True)


@interpreted
@pytest.mark.parametrize("pos", [0, 1, 63, 64, 999])
def test_decode_pad_cpu(pos):
    decode_pad_keeps_caches(Case(1, pos, 4, 2, 48, SMALL_S, torch.float32), nan_out(triton_decode.decode_attention),
                            "cpu", config=SMALL_SPLITS)


@pytest.mark.parametrize("c,pads", pad_params((torch.float64, torch.float32)))
def test_reference_pads(c, pads):
    pads_match(c, pads, ref.prefill_attention, "cpu", exact_to_unpadded=False)


@pytest.mark.parametrize("pos", [0, 1, 511, 512, 1099])
def test_reference_decode_pad(pos):
    decode_pad_keeps_caches(Case(1, pos, 4, 2, 48, 1100, torch.float64), ref.decode_attention, "cpu")


def test_ops_on_cpu_run_the_reference_with_pads():
    x = with_pads(make(Case(17, 3, 4, 2, 48, 60, torch.float32), "cpu"), 15)
    args = [x[n] for n in ("q", "k", "v")]
    kc1, vc1, kc2, vc2 = (x[n].clone() for n in ("k_cache", "v_cache", "k_cache", "v_cache"))
    got = torch.ops.gdn.prefill_attention(*args, kc1, vc1, x["input_pos"])
    want = ref.prefill_attention(*args, kc2, vc2, x["input_pos"])
    assert torch.equal(got, want) and torch.equal(kc1.nan_to_num(), kc2.nan_to_num())


@pytest.mark.cuda
@pytest.mark.parametrize("c,pads", [pytest.param(Case(n, s, 8, 2, 256, S, dt), pads, id=f"n{n}-pads{pads}-at{s}-{dt}")
                                    for n, pads, s, S in ((1, 127, 0, 2048), (65, 63, 0, 2048), (1000, 24, 37, 2048),
                                                          (17, 15, 28672, 32800), (4000, 96, 0, 4096))
                                    for dt in (torch.bfloat16, torch.float32)])
def test_prefill_pads_cuda(c, pads):
    pads_match(c, pads, nan_out(triton_prefill.prefill_attention), "cuda", exact_to_unpadded=True)


@pytest.mark.cuda
@pytest.mark.parametrize("pos", [0, 1, 4225, 131072, 262143])
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_decode_pad_cuda(pos, dt):
    decode_pad_keeps_caches(Case(1, pos, 8, 2, 256, 262144, dt), nan_out(triton_decode.decode_attention), "cuda")


@pytest.mark.cuda
def test_ops_with_pads_equal_kernels_cuda():
    x = with_pads(make(Case(65, 37, 8, 2, 256, 2048, torch.bfloat16), "cuda"), 63)
    args = [x[n] for n in ("q", "k", "v")]
    kc1, vc1, kc2, vc2 = (x[n].clone() for n in ("k_cache", "v_cache", "k_cache", "v_cache"))
    want = triton_prefill.prefill_attention(*args, kc1, vc1, x["input_pos"])
    got = torch.ops.gdn.prefill_attention(*args, kc2, vc2, x["input_pos"])
    assert torch.equal(got, want)
    assert torch.equal(kc1.nan_to_num(), kc2.nan_to_num()) and torch.equal(vc1.nan_to_num(), vc2.nan_to_num())
