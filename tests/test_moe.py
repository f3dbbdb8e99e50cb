"""The MoE Triton kernels (the two routers, the one-token mat-vec kernels, the grouping kernels and grouped GEMMs of
prefill) against the float64 loop over experts. CPU: small shapes through TRITON_INTERPRET=1 (marked `interpret`,
see tests/conftest.py). GPU: real shapes.

Decode (T == 1) always carries the shared expert, so it is checked as the op, `moe_shared`; prefill's routed part
as `moe_prefill` (the function the op calls), its shared expert being plain PyTorch.

Tolerances: float32, max |out - out_float64| within 1e-4 of max |out_float64| (fp32 accumulation over
H <= 2048). bfloat16, every output within 4 u (|out_float64| + sum_k |w_k| (|h_k| @ |down_k|^T) [+ the shared
expert's same sum]), u = 2^-8 the unit roundoff: bf16 inputs are exact in both, and the kernels round the
output, silu*up and (prefill) each slot's expert output to bf16, each error within u of its value; a bound taken
on the largest output instead (1.5e-2 of it) failed in ~2 % of runs on correct kernels. Also: never worse than
4x the plain PyTorch reference's own error plus a quarter of that tolerance (routing without ties only, since
torch.topk breaks ties its own way; and where its gathered weight copy fits in 4 GB)."""

from __future__ import annotations

from functools import partial
from typing import Callable

import pytest
import torch
import triton
import triton.language as tl

from gdn.kernels.gemv.triton_gemv import GemvConfig, gemv
from gdn.kernels.launch import next_pow2
from gdn.kernels.moe import op, reference
from gdn.kernels.moe.decode import decode_gate_up, decode_route
from gdn.kernels.moe.prefill import group_by_expert, moe_prefill, route
from gdn.kernels.moe.route import route_topk, store_route

TOL = {torch.float32: 1e-4, torch.bfloat16: 1.5e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
INTERPRETER_ONLY = pytest.mark.interpret  # on the GPU the real shapes run instead


def make_logits(T: int, E: int, mode: str, dtype, device) -> torch.Tensor:
    """random; ties (few distinct integer logits, so ties straddle the top-k boundary); hot (expert 3 takes
    every token); cold (all tokens go to the first 4 experts; the others get none)."""
    if mode == "ties":
        return torch.randint(-2, 2, (T, E), device=device).to(dtype)
    logits = torch.randn(T, E, device=device)
    if mode == "hot":
        logits[:, 3] += 30.0
    elif mode == "cold":
        logits[:, 4:] -= 30.0
    return logits.to(dtype)


def make_weights(E: int, H: int, I: int, dtype, device):
    gate_up = (torch.randn(E, 2 * I, H, device=device) * H**-0.5).to(dtype)  # [E, 2I, H]
    down = (torch.randn(E, H, I, device=device) * I**-0.5).to(dtype)  # [E, H, I]
    return gate_up, down


def make_shared(E: int, H: int, S: int, T: int, mode: str, dtype, device):
    """router_shared [T, E + 2S + 1] (logits by `mode`, then the shared gate, up and gate logit), shared_down [H, S]."""
    rest = torch.randn(T, 2 * S + 1, device=device).to(dtype)
    shared_down = (torch.randn(H, S, device=device) * S**-0.5).to(dtype)
    return torch.cat([make_logits(T, E, mode, dtype, device), rest], 1), shared_down


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the op allocates starts as NaN (float) or a huge value (int), not zeros or leftovers."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(2**30)

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))


def assert_close(got: torch.Tensor, like: torch.Tensor, want: torch.Tensor, absolute: Callable[[], torch.Tensor],
                 naive: Callable[[], torch.Tensor] | None) -> None:
    """got against float64 `want` by the module docstring's tolerances; absolute() the bf16 rounding scale, naive()
    the plain PyTorch reference (None: not compared)."""
    assert got.dtype == like.dtype and got.shape == like.shape
    assert not got.isnan().any()
    scale = want.abs().max().item()
    diff = (got.double() - want).abs()
    err = diff.max().item()
    tol = TOL[like.dtype]
    if like.dtype == torch.bfloat16:
        worst = (diff / (4 * 2**-8 * (want.abs() + absolute()))).max().item()
        assert worst <= 1, f"an output's error is {worst:.2f}x its rounding bound (max err {err:.3e})"
    else:
        assert err <= tol * scale, f"max err {err:.3e} > {tol} * {scale:.3e}"
    if naive is not None:
        ref_err = (naive().double() - want).abs().max().item()
        assert err <= 4 * ref_err + tol / 4 * scale, f"max err {err:.3e} vs reference {ref_err:.3e}"


def plain_comparable(x, gate_up, down, top_k, mode) -> bool:
    """Whether the plain reference runs (no ties, its gathered expert weights within 4 GB)."""
    return mode != "ties" and x.shape[0] * top_k * (gate_up[0].numel() + down[0].numel()) * x.element_size() < 4e9


def check(got, x, logits, gate_up, down, top_k, renorm, mode):
    """The routed experts against `reference.moe_float64`."""
    args = (x, logits, gate_up, down, top_k, renorm)
    naive = partial(reference.moe, *args) if plain_comparable(x, gate_up, down, top_k, mode) else None
    assert_close(got, x, reference.moe_float64(*args), partial(reference.moe_float64, *args, absolute=True), naive)


def check_shared(got, x, router_shared, gate_up, down, shared_down, top_k, renorm, mode):
    """The routed and the shared expert against `reference.moe_shared_float64`."""
    args = (x, router_shared, gate_up, down, shared_down, top_k, renorm)
    naive = partial(reference.moe_shared, *args) if plain_comparable(x, gate_up, down, top_k, mode) else None
    absolute = partial(reference.moe_shared_float64, *args, absolute=True)
    assert_close(got, x, reference.moe_shared_float64(*args), absolute, naive)


# (E, top_k, H, I, S): H, I, S not powers of 2; top-10 pads to 16 slots; S above and below I
DECODE_SHAPES = [(8, 2, 48, 20, 24), (64, 10, 40, 6, 12)]
DECODE_ROUTES = [("random", True), ("ties", True), ("ties", False), ("hot", True), ("cold", False)]
ROUTE_IDS = [f"{mode}-{'renorm' if renorm else 'fullsoftmax'}" for mode, renorm in DECODE_ROUTES]


@INTERPRETER_ONLY
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("mode,renorm", DECODE_ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("E,top_k,H,I,S", DECODE_SHAPES, ids=[f"E{e}-k{k}-H{h}-I{i}-S{s}" for e, k, h, i, s in
                                                              DECODE_SHAPES])
def test_decode_interpreted(E, top_k, H, I, S, mode, renorm, dtype, poisoned):
    """The op at T == 1: router kernel, kernel 1, kernel 2 with the shared expert (the PDL form in stream order)."""
    x = torch.randn(1, H).to(dtype)
    router_shared, shared_down = make_shared(E, H, S, 1, mode, dtype, "cpu")
    gate_up, down = make_weights(E, H, I, dtype, "cpu")
    got = op.moe_shared_triton(x, router_shared, gate_up, down, shared_down, top_k, renorm)
    check_shared(got, x, router_shared, gate_up, down, shared_down, top_k, renorm, mode)


@INTERPRETER_ONLY
def test_decode_gate_up_two_column_steps_interpreted(poisoned):
    """H above kernel 1's 2048-column step (no model here has one; kernel 2 takes no steps over H): two unrolled
    steps, the second one masked; kernel 1's h against float64 for the float64 routing's experts."""
    E, top_k, H, I = 8, 2, 2050, 4
    x, logits = torch.randn(1, H), torch.randn(1, E)
    gate_up, _ = make_weights(E, H, I, torch.float32, "cpu")
    h, ids, _ = decode_gate_up(x, logits, gate_up, top_k, True)
    want_ids = reference.route_stable(logits.double(), top_k, True)[1][0]
    assert ids.tolist() == want_ids.tolist()
    gu = gate_up[want_ids].double() @ x[0].double()  # [k, 2I]
    want = torch.nn.functional.silu(gu[:, :I]) * gu[:, I:]
    assert not h.isnan().any()
    assert (h.double() - want).abs().max().item() <= 1e-4 * want.abs().max().item()


# (T, E, top_k, H, I): odd T; top-10 and top-3 pad their slots; at BLOCK_M 128, T65-k2 routes every expert into a
# half block except "hot"'s expert 3 (65 pairs: one full block); T150-k2 "hot" gives expert 3 a full block and a
# half one; H 96 and I 80 take two K steps and two N tiles. The router's interpreted time grows with T * top_k.
PREFILL_SHAPES = {"T2-E8-k2": (2, 8, 2, 64, 32), "T7-E64-k10": (7, 64, 10, 64, 32), "T65-E8-k2": (65, 8, 2, 48, 20),
                  "T63-E16-k3": (63, 16, 3, 96, 80), "T150-E8-k2": (150, 8, 2, 48, 20)}
PREFILL_CASES = ([("T7-E64-k10", m, d) for m in ("random", "ties", "hot", "cold") for d in DTYPES]
                 + [("T2-E8-k2", "random", "fp32"), ("T65-E8-k2", "hot", "bf16"), ("T63-E16-k3", "ties", "bf16"),
                    ("T63-E16-k3", "cold", "fp32")])


@INTERPRETER_ONLY
@pytest.mark.parametrize("shape,mode,dtype", PREFILL_CASES, ids=[f"{s}-{m}-{d}" for s, m, d in PREFILL_CASES])
def test_prefill_interpreted(shape, mode, dtype, poisoned):
    """The routed experts at T > 1 (router, grouping, grouped GEMMs, slot sum); cold routing without renormalising."""
    T, E, top_k, H, I = PREFILL_SHAPES[shape]
    dtype = DTYPES[dtype]
    x = torch.randn(T, H).to(dtype)
    logits = make_logits(T, E, mode, dtype, "cpu")
    gate_up, down = make_weights(E, H, I, dtype, "cpu")
    renorm = mode != "cold"
    got = moe_prefill(x, logits, gate_up, down, top_k, renorm)
    check(got, x, logits, gate_up, down, top_k, renorm, mode)


@INTERPRETER_ONLY
def test_moe_shared_prefill_interpreted(poisoned):
    """The op at T > 1: the routed experts plus the shared expert in PyTorch, the router logits a strided column
    slice of the fused router/shared projection output."""
    E, H, I, S, k, T = 16, 64, 32, 24, 4, 7
    x = torch.randn(T, H)
    router_shared, shared_down = make_shared(E, H, S, T, "random", torch.float32, "cpu")
    gate_up, down = make_weights(E, H, I, torch.float32, "cpu")
    got = op.moe_shared_triton(x, router_shared, gate_up, down, shared_down, k, True)
    check_shared(got, x, router_shared, gate_up, down, shared_down, k, True, "random")


@INTERPRETER_ONLY
@pytest.mark.parametrize("mode,shape", [("random", "T65-E8-k2"), ("hot", "T150-E8-k2")])
def test_prefill_blocks_in_reverse_order_interpreted(mode, shape, monkeypatch, poisoned):
    """The interpreter runs the blocks in row order, so a tile that ran past its block's rows would be
    overwritten by the next block's: with the blocks reversed it would overwrite finished rows instead."""
    def reversed_blocks(*args):
        pairs, *blocks = group_by_expert(*args)
        return pairs, *(b.flip(0) for b in blocks)

    monkeypatch.setattr("gdn.kernels.moe.prefill.group_by_expert", reversed_blocks)
    T, E, top_k, H, I = PREFILL_SHAPES[shape]
    x = torch.randn(T, H)
    logits = make_logits(T, E, mode, torch.float32, "cpu")
    gate_up, down = make_weights(E, H, I, torch.float32, "cpu")
    got = moe_prefill(x, logits, gate_up, down, top_k, True)
    check(got, x, logits, gate_up, down, top_k, True, mode)


def test_cpu_op_is_the_reference():
    """torch.ops.gdn.moe_shared on CPU tensors runs the plain-PyTorch reference (what ExecuTorch CPU exports)."""
    x = torch.randn(5, 32)
    router_shared, shared_down = make_shared(8, 32, 12, 5, "random", torch.float32, "cpu")
    gate_up, down = make_weights(8, 32, 16, torch.float32, "cpu")
    got = torch.ops.gdn.moe_shared(x, router_shared, gate_up, down, shared_down, 2, True)
    want = reference.moe_shared(x, router_shared, gate_up, down, shared_down, 2, True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


ROUTE_CASES = [(10, 1), (10, 10), (64, 8), (300, 10), (512, 10)]  # (E, top_k)


def routes(logits: torch.Tensor, top_k: int, renorm: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Row 0's ids and weights by the decode router launch (bitonic top-k) and prefill's router (packed)."""
    ids = torch.empty(top_k, dtype=torch.int32)
    weights = torch.empty(top_k, dtype=torch.float32)
    decode_route(logits, ids, weights, top_k, renorm)
    packed_ids, packed_weights = route(logits, top_k, renorm)
    return {"topk": (ids, weights), "packed": (packed_ids[0], packed_weights[0])}


@INTERPRETER_ONLY
@pytest.mark.parametrize("renorm", [True, False], ids=["renorm", "fullsoftmax"])
@pytest.mark.parametrize("mode", ["random", "ties", "signed-zeros-and-inf"])
@pytest.mark.parametrize("E,top_k", ROUTE_CASES, ids=[f"E{e}-k{k}" for e, k in ROUTE_CASES])
def test_routers_match_the_float64_routing_interpreted(E, top_k, mode, renorm, poisoned):
    """Both routers give the float64 reference's ids in its slot order (ties to the lower index; -0.0 ties with
    +0.0; -inf logits last, with weight 0, when top-k exceeds the finite ones) and its weights, and the same
    weights bit for bit (the interpreter sums in one order)."""
    if mode == "signed-zeros-and-inf":
        logits = torch.tensor([0.0, -0.0, float("-inf"), 1.0, -1.0] * (E // 5 + 1))[:E].reshape(1, E)
        logits[0, -1] = -0.0
    else:
        logits = make_logits(1, E, mode, torch.float32, "cpu")
    got = routes(logits, top_k, renorm)
    want_w, want_ids = reference.route_stable(logits.double(), top_k, renorm)
    for name, (ids, weights) in got.items():
        assert ids.tolist() == want_ids[0].tolist(), name
        torch.testing.assert_close(weights.double(), want_w[0], rtol=1e-6, atol=1e-7, msg=name)
    assert torch.equal(got["topk"][1], got["packed"][1])


@triton.jit
def _topk_rows_kernel(logits_ptr, row_stride, ids_ptr, weights_ptr, E: tl.constexpr, E_P2: tl.constexpr,
                      TOP_K: tl.constexpr, K_P2: tl.constexpr):
    """The decode router's routing (`route_topk`), one program per row, to check many tokens at once."""
    t = tl.program_id(0).to(tl.int64)
    ids, top = route_topk(logits_ptr, t * row_stride, 1, E, E_P2, TOP_K, K_P2, True)
    store_route(t, ids, top, ids_ptr, weights_ptr, TOP_K, K_P2)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["random", "ties"])
@pytest.mark.parametrize("E,top_k", [(256, 8), (512, 10)], ids=["E256-k8", "E512-k10"])
def test_routers_match_the_float64_routing_cuda(E, top_k, mode, poisoned):
    """On the GPU, over 4096 tokens of bf16 logits: both routers give the float64 reference's ids in its slot
    order and its weights; the topk router's weights within 4 float32 ulps of the packed router's (its
    renormalising sum over the slots reduces in another order after `tl.topk`: last-bit differences)."""
    T = 4096
    logits = make_logits(T, E, mode, torch.bfloat16, "cuda")
    ids = torch.empty(T, top_k, dtype=torch.int32, device="cuda")
    weights = torch.empty(T, top_k, dtype=torch.float32, device="cuda")
    _topk_rows_kernel[(T,)](logits, logits.stride(0), ids, weights, E=E, E_P2=next_pow2(E), TOP_K=top_k,
                            K_P2=next_pow2(top_k), num_warps=4)  # the warps the 4-ulp bound below was measured at
    got = {"topk": (ids.cpu(), weights.cpu()), "packed": tuple(t.cpu() for t in route(logits, top_k, True))}
    want_w, want_ids = reference.route_stable(logits.double().cpu(), top_k, True)
    for name, (got_ids, got_w) in got.items():
        rows = (got_ids != want_ids).any(1)
        assert not rows.any(), f"{name}: {rows.sum().item()} of {T} rows differ"
        torch.testing.assert_close(got_w.double(), want_w, rtol=2e-6, atol=1e-7, msg=name)
    torch.testing.assert_close(got["topk"][1], got["packed"][1], rtol=4.8e-7, atol=0)


GROUP_CASES = [(1, 8, 2, 16), (9, 6, 2, 4), (65, 64, 8, 16), (63, 512, 10, 128), (333, 16, 4, 128)]


def _check_grouping(ids: torch.Tensor, E: int, bm: int) -> None:
    """The kernels' layout equals the reference's: the same block owners, first rows and half flags, the same
    padding rows, and each expert's segment holds the same pairs. Within a segment the order is the atomics'
    arrival order, so an expert spanning several blocks may split its pairs over them differently: compare per
    segment. And the spec itself: cdiv(count, bm) blocks per expert, the last one half where
    0 < count % bm <= bm / 2, every pair in a row of a block of its own expert."""
    pairs, block_expert, block_start, block_half = group_by_expert(ids, E, bm)
    want_pairs, *want_blocks = reference.group_by_expert(ids, E, bm)
    for name, got_b, want_b in zip(("owners", "first rows", "half flags"), (block_expert, block_start, block_half),
                                   want_blocks):
        assert torch.equal(got_b.cpu(), want_b.cpu()), f"block {name} differ"
    num_pairs = ids.numel()
    got, want = pairs.cpu().long(), want_pairs.cpu().long()
    assert torch.equal(got < num_pairs, want < num_pairs), "padding rows differ"
    expert, start, half = (t.cpu().long() for t in want_blocks)
    used = expert < E
    r = torch.arange(bm)
    in_block = used[:, None] & (r[None, :] < torch.where(half == 1, bm // 2, bm)[:, None])  # [n_blocks, bm]
    owner = torch.full_like(got, E)  # [rows] expert of each row, E outside every block
    owner[(start[:, None] + r[None, :])[in_block]] = expert[:, None].expand(-1, bm)[in_block]
    key = owner * (num_pairs + 1)
    assert torch.equal((key + got).sort().values, (key + want).sort().values), "a segment holds other pairs"
    real = got[got < num_pairs]
    assert sorted(real.tolist()) == list(range(num_pairs))
    flat = ids.cpu().reshape(-1).long()
    assert torch.equal(owner[got < num_pairs], flat[real]), "a pair lies outside its expert's blocks"
    counts = torch.bincount(flat, minlength=E)
    assert torch.equal(torch.bincount(expert[used], minlength=E), (counts + bm - 1) // bm)
    rem = counts % bm
    assert torch.equal(torch.bincount(expert[half == 1], minlength=E), ((rem > 0) & (rem <= bm // 2)).long())


def _routes(T: int, E: int, k: int, device: str) -> torch.Tensor:
    """[T, k] distinct experts per token; expert 0 takes every token and the upper half of the experts
    none (a hot expert and cold ones)."""
    ids = torch.stack([torch.randperm(max(E // 2, k), device=device)[:k] for _ in range(T)]).int()
    ids[:, 0] = 0
    ids[:, 1:][ids[:, 1:] == 0] = E - 1 if k > 1 else 0
    return ids


def _counted_routes(counts: list[int], k: int) -> torch.Tensor:
    """[T, k] ids in random order, counts[e] pairs on expert e (the last one takes the few that fill T * k)."""
    counts = counts[:-1] + [counts[-1] + -sum(counts) % k]
    flat = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return flat[torch.randperm(flat.numel())].reshape(-1, k).int()


def _boundary_counts(bm: int) -> list[int]:
    """Experts with no pair, and counts just below, at and above bm / 2, bm, 3 bm / 2 and 2 bm."""
    h = bm // 2
    return [0, 1] + [c + d for c in (h, bm, bm + h, 2 * bm) for d in (-1, 0, 1)] + [0, 3]


BOUNDARY_CASES = [(4, 1), (16, 2), (32, 8), (128, 8)]  # (bm, k)


@INTERPRETER_ONLY
@pytest.mark.parametrize("T,E,k,bm", GROUP_CASES, ids=[f"T{t}-E{e}-k{k}-bm{b}" for t, e, k, b in GROUP_CASES])
def test_group_by_expert_kernels_match_the_reference_interpreted(T, E, k, bm, poisoned):
    _check_grouping(_routes(T, E, k, "cpu"), E, bm)


@INTERPRETER_ONLY
@pytest.mark.parametrize("bm,k", BOUNDARY_CASES, ids=[f"bm{b}-k{k}" for b, k in BOUNDARY_CASES])
def test_group_by_expert_boundary_counts_interpreted(bm, k, poisoned):
    """Counts around the multiples of bm / 2 and bm, empty experts; then one expert with every pair."""
    counts = _boundary_counts(bm)
    _check_grouping(_counted_routes(counts, k), len(counts), bm)
    _check_grouping(torch.full((3 * bm // k + 1, k), 5, dtype=torch.int32), 9, bm)


@pytest.mark.cuda
@pytest.mark.parametrize("T,E,k", [(1, 256, 8), (4096, 256, 8), (8192, 512, 10)],
                         ids=["T1-E256-k8", "T4096-E256-k8", "T8192-E512-k10"])
def test_group_by_expert_kernels_match_the_reference_cuda(T, E, k, poisoned):
    _check_grouping(_routes(T, E, k, "cuda"), E, 128)
    counts = _boundary_counts(128) * 16
    _check_grouping(_counted_routes(counts, k).cuda(), len(counts), 128)


GPU_SHAPES = [(8, 2), (64, 8), (256, 8), (512, 10)]  # (E, top_k) at H 2048, I 512
PREFILL_RUNS = ([("random", t) for t in (2, 7, 64, 333, 4096, 8192)]
                + [(m, t) for m in ("ties", "hot", "cold") for t in (333, 4096)])


@pytest.fixture(scope="module")
def gpu_weights():
    cache = {}

    def get(E, dtype):
        if (E, dtype) not in cache:
            cache.clear()
            cache[(E, dtype)] = make_weights(E, 2048, 512, dtype, "cuda")
        return cache[(E, dtype)]

    return get


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("E,top_k", GPU_SHAPES, ids=[f"E{e}-k{k}" for e, k in GPU_SHAPES])
@pytest.mark.parametrize("mode,T", PREFILL_RUNS, ids=[f"{m}-T{t}" for m, t in PREFILL_RUNS])
def test_prefill_cuda(mode, T, E, top_k, dtype, gpu_weights, poisoned):
    """The routed experts at T > 1 (at T = 8192 about half of E 256's experts end in a half block)."""
    gate_up, down = gpu_weights(E, dtype)
    x = torch.randn(T, 2048, device="cuda").to(dtype)
    logits = make_logits(T, E, mode, dtype, "cuda")
    renorm = mode != "cold"
    got = moe_prefill(x, logits, gate_up, down, top_k, renorm)
    check(got, x, logits, gate_up, down, top_k, renorm, mode)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("E,top_k", GPU_SHAPES, ids=[f"E{e}-k{k}" for e, k in GPU_SHAPES])
@pytest.mark.parametrize("mode,renorm", DECODE_ROUTES, ids=ROUTE_IDS)
def test_decode_cuda(mode, renorm, E, top_k, dtype, gpu_weights, poisoned):
    """torch.ops.gdn.moe_shared at T == 1 (the kernels launched with PDL), shared expert 512."""
    gate_up, down = gpu_weights(E, dtype)
    x = torch.randn(1, 2048, device="cuda").to(dtype)
    router_shared, shared_down = make_shared(E, 2048, 512, 1, mode, dtype, "cuda")
    got = torch.ops.gdn.moe_shared(x, router_shared, gate_up, down, shared_down, top_k, renorm)
    check_shared(got, x, router_shared, gate_up, down, shared_down, top_k, renorm, mode)


@pytest.mark.cuda
@pytest.mark.parametrize("T", [1, 333])
def test_gdn_moe_shared_cuda(T, poisoned):
    E, H, I, S, k = 256, 2048, 512, 512, 8
    gate_up, down = make_weights(E, H, I, torch.bfloat16, "cuda")
    x = torch.randn(T, H, device="cuda").bfloat16()
    router_shared = torch.randn(T, E + 2 * S + 1, device="cuda").bfloat16()
    shared_down = (torch.randn(H, S, device="cuda") * S**-0.5).bfloat16()
    got = torch.ops.gdn.moe_shared(x, router_shared, gate_up, down, shared_down, k, True)
    want = reference.moe_shared_float64(x, router_shared, gate_up, down, shared_down, k, True)
    assert not got.isnan().any()
    assert (got.double() - want).abs().max().item() <= 1.5e-2 * want.abs().max().item()


@pytest.mark.cuda
def test_decode_pdl_chain_cuda():
    """Three layers (projection + MoE, each its own weights, fed the last output) in one CUDA graph, all
    kernels launched with PDL, replayed on fresh inputs: bit-equal each time to the same kernels launched in
    stream order ("serial"). A kernel that reads or writes before its grid wait what an earlier one still
    writes would move the output."""
    E, H, I, S, k = 256, 2048, 512, 512, 8
    layers = []
    for _ in range(3):
        w_rs = (torch.randn(E + 2 * S + 1, H, device="cuda") * H**-0.5).bfloat16()
        gate_up, down = make_weights(E, H, I, torch.bfloat16, "cuda")
        layers.append((w_rs, gate_up, down, (torch.randn(H, S, device="cuda") * S**-0.5).bfloat16()))

    def chain(x, pdl):
        for w_rs, gate_up, down, shared_down in layers:
            router_shared = gemv(x, w_rs, "none", GemvConfig(4, 2048, 4, pdl=pdl))
            x = op.moe_shared_triton(x, router_shared, gate_up, down, shared_down, k, True, pdl)
        return x

    def capture(pdl):
        x = torch.randn(1, H, device="cuda").bfloat16()
        chain(x, pdl)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = chain(x, pdl)
        return g, x, y

    (g, x, y), (g0, x0, y0) = capture("on"), capture("serial")
    for _ in range(20):
        x.copy_(torch.randn(1, H, device="cuda").bfloat16())
        x0.copy_(x)
        y.fill_(float("nan"))
        g.replay()
        g0.replay()
        torch.cuda.synchronize()
        assert not y.isnan().any() and torch.equal(y, y0)
