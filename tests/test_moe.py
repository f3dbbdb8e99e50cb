"""The MoE Triton kernels (router, fused decode mat-vec, grouped-GEMM prefill) against the float64 loop over
experts. CPU: small shapes through TRITON_INTERPRET=1 (marked `interpret`, see tests/conftest.py). GPU: real shapes via torch.ops.gdn.

Tolerances: float32, max |out - out_float64| within 1e-4 of max |out_float64| (fp32 accumulation over
H <= 2048). bfloat16, every output within 4 u (|out_float64| + sum_k |w_k| (|h_k| @ |down_k|^T)), u = 2^-8 the
unit roundoff: bf16 inputs are exact in both, and the kernels round the output, silu*up and (prefill) each
slot's expert output to bf16, each error within u of its value; a bound taken on the largest output
instead (1.5e-2 of it) failed in ~2 % of runs on correct kernels. Also: never worse than 4x the plain
PyTorch reference's own error plus a quarter of that tolerance (routing without ties only, since
torch.topk breaks ties its own way; and where its gathered weight copy fits in 4 GB)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import triton
import triton.language as tl

from gdn.kernels.gemv.triton_gemv import GemvConfig, gemv
from gdn.kernels.moe import op, reference
from gdn.kernels.moe.decode import BASELINE, UNROLLED, DecodeConfig, decode_route
from gdn.kernels.moe import decode_layer
from gdn.kernels.moe.decode_layer import LayerConfig, moe_layer_decode, sync_len, ticket_items
from gdn.kernels.moe.prefill import PrefillConfig, group_by_expert, moe_prefill
from gdn.kernels.launch import next_pow2
from gdn.kernels.moe.route import PICKS, route_kernel

TOL = {torch.float32: 1e-4, torch.bfloat16: 1.5e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the op allocates starts as NaN (float) or a huge value (int), not zeros or leftovers."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(2**30)

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))


def check(got, x, logits, gate_up, down, top_k, renorm, mode):
    want = reference.moe_float64(x, logits, gate_up, down, top_k, renorm)  # [T, H] float64
    assert got.dtype == x.dtype and got.shape == x.shape
    assert not got.isnan().any()
    scale = want.abs().max().item()
    diff = (got.double() - want).abs()
    err = diff.max().item()
    tol = TOL[x.dtype]
    if x.dtype == torch.bfloat16:
        bound = 4 * 2**-8 * (want.abs() + reference.moe_float64(x, logits, gate_up, down, top_k, renorm, absolute=True))
        worst = (diff / bound).max().item()
        assert worst <= 1, f"an output's error is {worst:.2f}x its rounding bound (max err {err:.3e})"
    else:
        assert err <= tol * scale, f"max err {err:.3e} > {tol} * {scale:.3e}"
    gathered_bytes = x.shape[0] * top_k * (gate_up[0].numel() + down[0].numel()) * x.element_size()
    if mode != "ties" and gathered_bytes < 4e9:  # the reference copies every token's experts
        ref_err = (reference.moe(x, logits, gate_up, down, top_k, renorm).double() - want).abs().max().item()
        assert err <= 4 * ref_err + tol / 4 * scale, f"max err {err:.3e} vs reference {ref_err:.3e}"


CPU_CASES = [
    # (T, E, top_k, H, I)
    (1, 8, 2, 48, 20),
    (2, 8, 2, 64, 32),
    (7, 64, 8, 64, 32),
    (1, 64, 10, 32, 48),
    (65, 8, 2, 48, 20),
    (63, 16, 10, 32, 16),
]


INTERPRETER_ONLY = pytest.mark.interpret  # on the GPU the real shapes run instead


@INTERPRETER_ONLY
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("mode", ["random", "ties", "hot", "cold"])
@pytest.mark.parametrize("T,E,top_k,H,I", CPU_CASES, ids=[f"T{c[0]}-E{c[1]}-k{c[2]}-H{c[3]}-I{c[4]}" for c in CPU_CASES])
def test_triton_moe_interpreted(T, E, top_k, H, I, mode, dtype, poisoned):
    x = torch.randn(T, H).to(dtype)
    logits = make_logits(T, E, mode, dtype, "cpu")
    gate_up, down = make_weights(E, H, I, dtype, "cpu")
    renorm = mode != "cold"
    got = op.moe_triton(x, logits, gate_up, down, top_k, renorm)
    check(got, x, logits, gate_up, down, top_k, renorm, mode)


@INTERPRETER_ONLY
@pytest.mark.parametrize("T", [1, 7])
def test_moe_shared_interpreted(T, poisoned):
    """The fused-shared variant (decode fuses the shared expert into the down kernel), with the router
    logits as a strided column slice of the fused router/shared projection output."""
    E, H, I, S, k = 16, 64, 32, 24, 4
    x = torch.randn(T, H)
    router_shared = torch.randn(T, E + 2 * S + 1)
    gate_up, down = make_weights(E, H, I, torch.float32, "cpu")
    shared_down = torch.randn(H, S) * S**-0.5
    got = op.moe_shared_triton(x, router_shared, gate_up, down, shared_down, k, True)
    want = reference.moe_shared_float64(x, router_shared, gate_up, down, shared_down, k, True)
    assert not got.isnan().any()
    assert (got.double() - want).abs().max().item() <= 1e-4 * want.abs().max().item()


DECODE_CONFIGS = {  # the inline router runs in every kernel-1 program, slow in the interpreter: default blocks only
    "baseline": BASELINE,
    "default": DecodeConfig(),
    "unrolled": UNROLLED,
    "unrolled-inline": replace(UNROLLED, router="inline"),
    "unrolled-argmax-small": replace(UNROLLED, pick="argmax", block_i=2, block_h=16, block_out=2, block_inner=16,
                                     warps_router=4),
    "tile-routerkernel-small": DecodeConfig(router="kernel", gate_up="tile", down="tile", block_h=16, tile_down=64),
    # the PDL form (weights before the grid wait); the interpreter launches it in stream order
    "pdl": DecodeConfig(pdl="on"),
}
# the shared expert's down projection beside the router program: one block per 4 rows, and one block past H
SHARED_CONFIGS = {**DECODE_CONFIGS, "shared-router": DecodeConfig(shared="router", block_shared=4),
                  "shared-router-masked": DecodeConfig(shared="router", block_shared=32, warps_router=4),
                  "pdl-shared-router": DecodeConfig(shared="router", block_shared=4, pdl="on")}
DECODE_SHAPES = [(8, 2, 48, 20), (64, 8, 64, 24), (64, 10, 40, 24)]  # (E, top_k, H, I); H, I not powers of 2 too
DECODE_ROUTES = [("random", True), ("ties", True), ("ties", False), ("cold", False)]
ROUTE_IDS = [f"{mode}-{'renorm' if renorm else 'fullsoftmax'}" for mode, renorm in DECODE_ROUTES]


@INTERPRETER_ONLY
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("mode,renorm", DECODE_ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("E,top_k,H,I", DECODE_SHAPES, ids=[f"E{e}-k{k}-H{h}-I{i}" for e, k, h, i in DECODE_SHAPES])
@pytest.mark.parametrize("cfg", DECODE_CONFIGS.values(), ids=DECODE_CONFIGS.keys())
def test_decode_configs_interpreted(cfg, E, top_k, H, I, mode, renorm, dtype, poisoned):
    """Every decode design (the measured baseline, the new kernels, the router kernel, blocks smaller than
    H and I so that the steps and masks run) against float64."""
    x = torch.randn(1, H).to(dtype)
    logits = make_logits(1, E, mode, dtype, "cpu")
    gate_up, down = make_weights(E, H, I, dtype, "cpu")
    got = op.moe_triton(x, logits, gate_up, down, top_k, renorm, decode_cfg=cfg)
    check(got, x, logits, gate_up, down, top_k, renorm, mode)


@INTERPRETER_ONLY
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("cfg", SHARED_CONFIGS.values(), ids=SHARED_CONFIGS.keys())
def test_decode_shared_configs_interpreted(cfg, dtype, poisoned):
    """The shared expert (in kernel 2 or beside the router) in every decode design; S differs from I and is
    not a power of 2."""
    check_shared_decode(cfg, 16, 48, 32, 40, 4, False, dtype, "cpu", trials=1)


def check_shared_decode(cfg, E, H, I, S, k, renorm, dtype, device, trials):
    """moe_shared_triton at T == 1 under cfg against float64, fresh inputs each trial."""
    gate_up, down = make_weights(E, H, I, dtype, device)
    shared_down = (torch.randn(H, S, device=device) * S**-0.5).to(dtype)
    for _ in range(trials):
        x = torch.randn(1, H, device=device).to(dtype)
        router_shared = torch.randn(1, E + 2 * S + 1, device=device).to(dtype)
        got = op.moe_shared_triton(x, router_shared, gate_up, down, shared_down, k, renorm, decode_cfg=cfg)
        want = reference.moe_shared_float64(x, router_shared, gate_up, down, shared_down, k, renorm)
        assert got.dtype == dtype and not got.isnan().any()
        assert (got.double() - want).abs().max().item() <= TOL[dtype] * want.abs().max().item()


def layer_inputs(E: int, H: int, I: int, S: int, dtype, device):
    """x [1, H], W_rs [E + 2S + 1, H], gate_up, down, shared_down."""
    x = torch.randn(1, H, device=device).to(dtype)
    w_rs = (torch.randn(E + 2 * S + 1, H, device=device) * H**-0.5).to(dtype)
    gate_up, down = make_weights(E, H, I, dtype, device)
    shared_down = (torch.randn(H, S, device=device) * S**-0.5).to(dtype)
    return x, w_rs, gate_up, down, shared_down


def check_layer(x, w_rs, gate_up, down, shared_down, k, renorm, cfg):
    """Against float64 on the projection rounded to x's dtype (as the kernel rounds it); twice, bit-equal (a
    race would move it); the counters back at zero after each call."""
    sync = torch.zeros(sync_len(x.shape[1], k, cfg), dtype=torch.int32, device=x.device)
    got = moe_layer_decode(x, w_rs, gate_up, down, shared_down, sync, k, renorm, cfg)
    assert sync.abs().sum().item() == 0, "the counters were not reset"
    again = moe_layer_decode(x, w_rs, gate_up, down, shared_down, sync, k, renorm, cfg)
    assert torch.equal(got, again)
    rs = (x.double() @ w_rs.double().T).to(x.dtype)
    want = reference.moe_shared_float64(x, rs, gate_up, down, shared_down, k, renorm)
    assert got.dtype == x.dtype and not got.isnan().any()
    err, scale = (got.double() - want).abs().max().item(), want.abs().max().item()
    assert err <= TOL[x.dtype] * scale, f"max err {err:.3e} > {TOL[x.dtype]} * {scale:.3e}"


LAYER_CONFIGS = {"default": LayerConfig(), "small-blocks-lag2": LayerConfig(block_r=4, block_i=2, block_h=16, block_out=2, lag=2),
                 "lag1": LayerConfig(block_out=4, lag=1), "lag0": LayerConfig(block_out=4, lag=0)}


@INTERPRETER_ONLY
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("renorm", [True, False], ids=["renorm", "fullsoftmax"])
@pytest.mark.parametrize("cfg", LAYER_CONFIGS.values(), ids=LAYER_CONFIGS.keys())
def test_one_launch_layer_interpreted(cfg, renorm, dtype, poisoned):
    """The one-launch decode layer (projection, routing, experts, shared expert): S differs from I, H and I
    are not powers of 2."""
    check_layer(*layer_inputs(16, 48, 24, 40, dtype, "cpu"), 4, renorm, cfg)


@triton.jit
def _items_kernel(out_ptr, N_R: tl.constexpr, N_S: tl.constexpr, N_G: tl.constexpr, N_D: tl.constexpr,
                  TOP_K: tl.constexpr, LAG: tl.constexpr):
    t = N_R + tl.program_id(0)
    is_g, slot, j = decode_layer._item_of_ticket(t, N_R, N_S, N_G, N_D, TOP_K, LAG)
    tl.store(out_ptr + 3 * tl.program_id(0), is_g.to(tl.int32))
    tl.store(out_ptr + 3 * tl.program_id(0) + 1, slot)
    tl.store(out_ptr + 3 * tl.program_id(0) + 2, j)


SCHEDULES = [(16, 48, 24, 40, 4, LayerConfig(lag=1)), (16, 48, 24, 40, 4, LayerConfig(block_i=2, block_out=2, lag=2)),
             (256, 2048, 512, 512, 8, LayerConfig()),
             (64, 96, 40, 24, 1, LayerConfig(block_out=32)), (16, 48, 24, 40, 4, LayerConfig(lag=0))]


@INTERPRETER_ONLY
@pytest.mark.parametrize("E,H,I,S,k,cfg", SCHEDULES, ids=[f"E{e}-H{h}-I{i}-S{s}-k{k}-lag{c.lag}-out{c.block_out}"
                                                          for e, h, i, s, k, c in SCHEDULES])
def test_one_launch_schedule_interpreted(E, H, I, S, k, cfg):
    """The kernel decodes each ticket into the item `ticket_items` lists (each item once), and every item comes
    after all the items it waits for (the order's deadlock freedom): G_s after R (routing), D_s after G_s, the
    shared expert's D after S and R."""
    items = ticket_items(E, H, I, S, k, cfg)
    n_r = sum(role == "R" for role, _ in items)
    n_s = sum(role == "S" for role, _ in items)
    n_g = sum(item == ("G", 0) for item in items)
    n_d = sum(item == ("D", 0) for item in items)
    out = torch.full((len(items) - n_r, 3), -1, dtype=torch.int32)
    _items_kernel[(len(items) - n_r,)](out, N_R=n_r, N_S=n_s, N_G=n_g, N_D=n_d, TOP_K=k, LAG=min(cfg.lag, k))
    got = [("G" if g else "D", slot) if slot < k or not g else ("S", slot) for g, slot, _ in out.tolist()]
    assert got == items[n_r:]
    for role, slot in set(items) - {("R", None)}:
        pairs = out[[i - n_r for i, it in enumerate(items) if it == (role, slot)], 2]
        assert sorted(pairs.tolist()) == list(range(n_s if role == "S" else n_g if role == "G" else n_d))
    first = {it: items.index(it) for it in set(items)}
    last = {it: len(items) - 1 - items[::-1].index(it) for it in set(items)}
    for s in range(k):
        assert last[("R", None)] < first[("G", s)] and last[("G", s)] < first[("D", s)]
    assert last[("R", None)] < first[("D", k)] and last[("S", k)] < first[("D", k)]


ROUTE_CASES = [(10, 1), (10, 10), (64, 8), (300, 10), (512, 10)]  # (E, top_k)


@INTERPRETER_ONLY
@pytest.mark.parametrize("renorm", [True, False], ids=["renorm", "fullsoftmax"])
@pytest.mark.parametrize("mode", ["random", "ties", "signed-zeros-and-inf"])
@pytest.mark.parametrize("E,top_k", ROUTE_CASES, ids=[f"E{e}-k{k}" for e, k in ROUTE_CASES])
def test_packed_top_k_equals_argmax_rounds_interpreted(E, top_k, mode, renorm, poisoned):
    """The router kernel's three top-k methods give the same ids and the same weights, bit for bit, and the ids
    are the float64 reference's (ties to the lower index; -0.0 ties with +0.0; -inf logits last)."""
    if mode == "signed-zeros-and-inf":
        logits = torch.tensor([0.0, -0.0, float("-inf"), 1.0, -1.0] * (E // 5 + 1))[:E].reshape(1, E)
        logits[0, -1] = -0.0
    else:
        logits = make_logits(1, E, mode, torch.float32, "cpu")
    got = {}
    for pick in PICKS:
        ids = torch.empty(top_k, dtype=torch.int32)
        weights = torch.empty(top_k, dtype=torch.float32)
        decode_route(logits, ids, weights, top_k, renorm, DecodeConfig(router="kernel", pick=pick))
        got[pick] = ids, weights
    for pick in ("packed", "topk"):
        assert torch.equal(got[pick][0], got["argmax"][0]), pick
        assert torch.equal(got[pick][1], got["argmax"][1]), pick
    want_w, want_ids = reference.route_stable(logits.double(), top_k, renorm)
    assert got["packed"][0].tolist() == want_ids[0].tolist()
    torch.testing.assert_close(got["packed"][1].double(), want_w[0], rtol=1e-6, atol=1e-7)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["random", "ties"])
@pytest.mark.parametrize("E,top_k", [(256, 8), (512, 10)], ids=["E256-k8", "E512-k10"])
def test_top_k_methods_agree_cuda(E, top_k, mode, poisoned):
    """On the GPU too, over 4096 tokens of bf16 logits (the prefill router's grid): the three top-k methods give
    the float64 reference's ids in its slot order; "packed" the same weights as "argmax" bit for bit, "topk"
    within 2 float32 ulps (its renormalising sum over the slots reduces in another order after `tl.topk`; the
    H100 showed last-bit differences, where the interpreter adds in one order)."""
    T = 4096
    logits = make_logits(T, E, mode, torch.bfloat16, "cuda")
    got = {}
    for pick in PICKS:
        ids = torch.empty(T, top_k, dtype=torch.int32, device="cuda")
        weights = torch.empty(T, top_k, dtype=torch.float32, device="cuda")
        torch.library.wrap_triton(route_kernel)[(T,)](
            logits, logits.stride(0), logits.stride(1), ids, weights, E=E, E_P2=next_pow2(E), TOP_K=top_k,
            K_P2=next_pow2(top_k), RENORM=True, PICK=PICKS.index(pick), num_warps=4)
        got[pick] = ids.cpu(), weights.cpu()
    want_ids = reference.route_stable(logits.double().cpu(), top_k, True)[1]
    for pick, (ids, weights) in got.items():
        rows = (ids != want_ids).any(1)
        same_sets = torch.equal(ids.sort(1).values, want_ids.sort(1).values.to(ids.dtype))
        assert not rows.any(), f"{pick}: {rows.sum().item()} of {T} rows differ (same sets: {same_sets})"
        if pick == "topk":
            torch.testing.assert_close(weights, got["argmax"][1], rtol=4.8e-7, atol=0)
        else:
            assert torch.equal(weights, got["argmax"][1]), pick


PREFILL_CONFIGS = {
    "argmax-blocks-first": PrefillConfig(pick="argmax", n_first=False),
    "n-first-bm16": PrefillConfig(block_m=16, block_n=16, block_k=16, down_block_n=16),
    "half-tail": PrefillConfig(half_tail=True),
    "topk-half-tail-bm32": PrefillConfig(pick="topk", block_m=32, block_n=16, block_k=16, down_block_n=16, half_tail=True),
}


PREFILL_SHAPES = {"T65-E8-k2": (65, 8, 2, 48, 20), "T7-E64-k8": (7, 64, 8, 64, 32)}  # (T, E, top_k, H, I)
PREFILL_CASES = [(m, s) for s in PREFILL_SHAPES for m in ("random", "ties", "cold")] + [("hot", "T65-E8-k2")]


@INTERPRETER_ONLY
@pytest.mark.parametrize("mode,shape", PREFILL_CASES, ids=[f"{s}-{m}" for m, s in PREFILL_CASES])
@pytest.mark.parametrize("cfg", PREFILL_CONFIGS.values(), ids=PREFILL_CONFIGS.keys())
def test_prefill_configs_interpreted(cfg, shape, mode, poisoned):
    """The prefill's other router methods, grid orders and block sizes, full and half tail blocks (the ops'
    config, op.ARTIFACT_PREFILL, runs in test_triton_moe_interpreted). T65-E8-k2 at BLOCK_M 32 gives experts of half blocks only, of full ones,
    and of full ones then a half one; "hot" puts 65 pairs on one expert, just above half of BLOCK_M 128."""
    T, E, top_k, H, I = PREFILL_SHAPES[shape]
    x = torch.randn(T, H)
    logits = make_logits(T, E, mode, torch.float32, "cpu")
    gate_up, down = make_weights(E, H, I, torch.float32, "cpu")
    renorm = mode != "cold"
    got = moe_prefill(x, logits, gate_up, down, top_k, renorm, cfg=cfg)
    check(got, x, logits, gate_up, down, top_k, renorm, mode)


@INTERPRETER_ONLY
@pytest.mark.parametrize("mode", ["random", "hot"])
@pytest.mark.parametrize("cfg", [c for c in PREFILL_CONFIGS.values() if c.half_tail],
                         ids=[n for n, c in PREFILL_CONFIGS.items() if c.half_tail])
def test_prefill_blocks_in_reverse_order_interpreted(cfg, mode, monkeypatch, poisoned):
    """The interpreter runs the blocks in row order, so a tile that ran past its block's rows would be
    overwritten by the next block's: with the blocks reversed it would overwrite finished rows instead."""
    def reversed_blocks(*args):
        pairs, *blocks = group_by_expert(*args)
        return pairs, *(b.flip(0) for b in blocks)

    monkeypatch.setattr("gdn.kernels.moe.prefill.group_by_expert", reversed_blocks)
    T, E, top_k, H, I = PREFILL_SHAPES["T65-E8-k2"]
    x = torch.randn(T, H)
    logits = make_logits(T, E, mode, torch.float32, "cpu")
    gate_up, down = make_weights(E, H, I, torch.float32, "cpu")
    got = moe_prefill(x, logits, gate_up, down, top_k, True, cfg=cfg)
    check(got, x, logits, gate_up, down, top_k, True, mode)


def test_half_tail_needs_a_16_row_half_block():
    with pytest.raises(ValueError, match="half_tail"):
        PrefillConfig(block_m=16, half_tail=True)


GROUP_CASES = [(1, 8, 2, 16), (9, 6, 2, 4), (65, 64, 8, 16), (63, 512, 10, 128), (333, 16, 4, 128)]
HALF_TAIL = pytest.mark.parametrize("half_tail", [False, True], ids=["bm-padded", "half-tail"])


def _check_grouping(ids: torch.Tensor, E: int, bm: int, half_tail: bool) -> None:
    """The kernels' layout equals the reference's: the same block owners, first rows and half flags, the same
    padding rows, and each expert's segment holds the same pairs. Within a segment the order is the atomics'
    arrival order, so an expert spanning several blocks may split its pairs over them differently: compare per
    segment. And the spec itself: cdiv(count, bm) blocks per expert, the last one half where half_tail and
    0 < count % bm <= bm / 2, every pair in a row of a block of its own expert."""
    pairs, block_expert, block_start, block_half = group_by_expert(ids, E, bm, half_tail)
    want_pairs, *want_blocks = reference.group_by_expert(ids, E, bm, half_tail)
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
    assert torch.equal(torch.bincount(expert[half == 1], minlength=E), ((rem > 0) & (rem <= bm // 2) & half_tail).long())


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


@pytest.mark.interpret
@HALF_TAIL
@pytest.mark.parametrize("T,E,k,bm", GROUP_CASES, ids=[f"T{t}-E{e}-k{k}-bm{b}" for t, e, k, b in GROUP_CASES])
def test_group_by_expert_kernels_match_the_reference_interpreted(T, E, k, bm, half_tail, poisoned):
    _check_grouping(_routes(T, E, k, "cpu"), E, bm, half_tail)


@pytest.mark.interpret
@HALF_TAIL
@pytest.mark.parametrize("bm,k", BOUNDARY_CASES, ids=[f"bm{b}-k{k}" for b, k in BOUNDARY_CASES])
def test_group_by_expert_boundary_counts_interpreted(bm, k, half_tail, poisoned):
    """Counts around the multiples of bm / 2 and bm, empty experts; then one expert with every pair."""
    counts = _boundary_counts(bm)
    _check_grouping(_counted_routes(counts, k), len(counts), bm, half_tail)
    _check_grouping(torch.full((3 * bm // k + 1, k), 5, dtype=torch.int32), 9, bm, half_tail)


@pytest.mark.cuda
@HALF_TAIL
@pytest.mark.parametrize("T,E,k", [(1, 256, 8), (4096, 256, 8), (8192, 512, 10)], ids=["T1-E256-k8", "T4096-E256-k8", "T8192-E512-k10"])
def test_group_by_expert_kernels_match_the_reference_cuda(T, E, k, half_tail, poisoned):
    _check_grouping(_routes(T, E, k, "cuda"), E, 128, half_tail)
    counts = _boundary_counts(128) * 16
    _check_grouping(_counted_routes(counts, k).cuda(), len(counts), 128, half_tail)


@pytest.mark.cuda
@pytest.mark.parametrize("cfg", [PrefillConfig(), PrefillConfig(half_tail=True)], ids=["full-blocks", "half-tail"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("mode,T", [("random", 333), ("random", 8192), ("hot", 4096)], ids=["random-T333", "random-T8192", "hot-T4096"])
def test_prefill_blocks_cuda(mode, T, dtype, cfg, gpu_weights, poisoned):
    """Full blocks and half tail blocks (the ops' config, which test_gdn_moe_cuda runs up to T = 4096) at the
    Qwen3.5-35B-A3B shapes (E 256, top-8): at T = 8192 about half the experts end in a half block."""
    gate_up, down = gpu_weights(256, dtype)
    x = torch.randn(T, 2048, device="cuda").to(dtype)
    logits = make_logits(T, 256, mode, dtype, "cuda")
    got = moe_prefill(x, logits, gate_up, down, 8, True, cfg=cfg)
    check(got, x, logits, gate_up, down, 8, True, mode)


def test_cpu_op_is_the_reference():
    """torch.ops.gdn.moe on CPU tensors runs the plain-PyTorch reference (what ExecuTorch CPU exports)."""
    x, logits = torch.randn(5, 32), torch.randn(5, 8)
    gate_up, down = make_weights(8, 32, 16, torch.float32, "cpu")
    got = torch.ops.gdn.moe(x, logits, gate_up, down, 2, True)
    torch.testing.assert_close(got, reference.moe(x, logits, gate_up, down, 2, True), rtol=0, atol=0)


GPU_SHAPES = [(8, 2), (64, 8), (256, 8), (512, 10)]  # (E, top_k) at H 2048, I 512
GPU_RUNS = [("random", t) for t in (1, 2, 7, 64, 333, 4096)] + [(m, t) for m in ("ties", "hot", "cold") for t in (1, 333, 4096)]


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
@pytest.mark.parametrize("mode,T", GPU_RUNS, ids=[f"{m}-T{t}" for m, t in GPU_RUNS])
def test_gdn_moe_cuda(mode, T, E, top_k, dtype, gpu_weights, poisoned):
    gate_up, down = gpu_weights(E, dtype)
    x = torch.randn(T, 2048, device="cuda").to(dtype)
    logits = make_logits(T, E, mode, dtype, "cuda")
    renorm = mode != "cold"
    got = torch.ops.gdn.moe(x, logits, gate_up, down, top_k, renorm)
    check(got, x, logits, gate_up, down, top_k, renorm, mode)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("E,top_k", [(256, 8), (512, 10)], ids=["E256-k8", "E512-k10"])
def test_one_launch_layer_cuda(E, top_k, dtype, poisoned):
    """Qwen3.5-35B-A3B and Qwen3-Next shapes, polling with and without sleeps, down items one slot behind the
    gate/up ones or after all of them; every call on fresh inputs."""
    for cfg in (LayerConfig(), LayerConfig(backoff=True), LayerConfig(lag=1)):
        for _ in range(5):
            check_layer(*layer_inputs(E, 2048, 512, 512, dtype, "cuda"), top_k, True, cfg)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("cfg", SHARED_CONFIGS.values(), ids=SHARED_CONFIGS.keys())
def test_decode_shared_configs_cuda(cfg, dtype, poisoned):
    """Every decode design with the shared expert at Qwen3.5-35B-A3B shapes (the shared expert's down
    projection fused into kernel 2 or beside the routing program), fresh inputs each trial."""
    check_shared_decode(cfg, 256, 2048, 512, 512, 8, True, dtype, "cuda", trials=3)


PDL_CONFIGS = {k: SHARED_CONFIGS[k] for k in ("pdl", "pdl-shared-router")}


@pytest.mark.cuda
@pytest.mark.parametrize("cfg", PDL_CONFIGS.values(), ids=PDL_CONFIGS.keys())
def test_decode_pdl_chain_cuda(cfg):
    """Three layers (projection + MoE, each its own weights, fed the last output) in one CUDA graph, all
    kernels launched with PDL, replayed on fresh inputs: bit-equal each time to the same kernels launched in
    stream order ("serial"). A kernel that reads or writes before its grid wait what an earlier one still
    writes would move the output."""
    E, H, I, S, k = 256, 2048, 512, 512, 8
    layers = [layer_inputs(E, H, I, S, torch.bfloat16, "cuda")[1:] for _ in range(3)]
    proj = GemvConfig(4, 2048, 4, pdl="on")

    def chain(x, dcfg, pcfg):
        for w_rs, gate_up, down, shared_down in layers:
            x = op.moe_shared_triton(x, gemv(x, w_rs, "none", pcfg), gate_up, down, shared_down, k, True,
                                     decode_cfg=dcfg)
        return x

    def capture(dcfg, pcfg):
        x = torch.randn(1, H, device="cuda").bfloat16()
        chain(x, dcfg, pcfg)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = chain(x, dcfg, pcfg)
        return g, x, y

    (g, x, y), (g0, x0, y0) = capture(cfg, proj), capture(replace(cfg, pdl="serial"), replace(proj, pdl="serial"))
    for _ in range(20):
        x.copy_(torch.randn(1, H, device="cuda").bfloat16())
        x0.copy_(x)
        y.fill_(float("nan"))
        g.replay()
        g0.replay()
        torch.cuda.synchronize()
        assert not y.isnan().any() and torch.equal(y, y0)


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
