"""T-token MoE: route on the device, group (token, slot) pairs by expert into segments padded to BLOCK_M // 2
(a counting sort in three small kernels), run a tensor-core grouped GEMM per segment block, scatter back with
the routing weights, sum over the slots. An expert's last block, where its remainder fits, is a half block that
runs a BLOCK_M // 2-row tile.

Every shape is a function of T alone: an expert owns cdiv(count, BLOCK_M) blocks, so the number of blocks is
bounded by cdiv(T * k, BLOCK_M) + E, and blocks past the used ones exit at once, so there is no host sync and
nothing data-dependent escapes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import INTERPRETED, dense, launcher, next_pow2
from .route import route_kernel

BLOCK_M = 128  # rows of a segment block; its half (a half block's tile) must keep tl.dot's 16 rows
BLOCK_N = 64  # gate/up: columns of gate (and the same of up) per program
DOWN_BLOCK_N = 128  # down: output columns per program
BLOCK_K = 64
WARPS = 8
STAGES = 3
GROUP_BLOCK = 256  # pairs per program of the grouping kernels
# each expert's counter on its own 128-byte line: packed, the 256 counters sat on 8 lines, and every pair's
# atomic queued at one of those few L2 slices
COUNT_STRIDE = 32
SUM_BLOCK_H = 1024  # columns per program of the slot sum
MAX_GRID_Y = 65535  # the segment blocks are grid axis 1


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b; UPCAST (interpreter only) takes bf16 through float32, since Triton 3.6's interpreter
    multiplies bf16 operands wrongly."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def gate_up_tile(
    x_ptr, w_ptr, pairs_ptr, h_ptr, row0, e, n_tile, num_pairs,
    H: tl.constexpr, I: tl.constexpr, TOP_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """h[row0 : row0 + ROWS, n-tile] = silu(x_tok gate_e^T) * (x_tok up_e^T)."""
    m = row0 + tl.arange(0, ROWS)
    pair = tl.load(pairs_ptr + m)
    valid = pair < num_pairs
    tok = (pair // TOP_K).to(tl.int64)
    n = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < I
    kk = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + tok[:, None] * H + kk[None, :]  # [ROWS, BLOCK_K]
    g_ptrs = w_ptr + e * (2 * I * H) + n[None, :] * H + kk[:, None]  # [BLOCK_K, BLOCK_N]
    acc_g = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k_ok = (k0 + kk) < H
        a = tl.load(a_ptrs, mask=valid[:, None] & k_ok[None, :], other=0.0)
        g = tl.load(g_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        u = tl.load(g_ptrs + I * H, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc_g = mma(a, g, acc_g, PRECISION, UPCAST)
        acc_u = mma(a, u, acc_u, PRECISION, UPCAST)
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    tl.store(h_ptr + m[:, None].to(tl.int64) * I + n[None, :], h.to(h_ptr.dtype.element_ty),
             mask=valid[:, None] & n_ok[None, :])


@triton.jit
def grouped_gate_up_kernel(
    x_ptr,
    w_ptr,
    pairs_ptr,
    block_expert_ptr,
    block_start_ptr,
    block_half_ptr,
    h_ptr,
    num_pairs,
    H: tl.constexpr,
    I: tl.constexpr,
    E: tl.constexpr,
    TOP_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """h[block rows, n-tile] = silu(x_tok gate_e^T) * (x_tok up_e^T) for one expert segment block; a half
    block computes a BLOCK_M // 2-row tile (a smaller dot, not a masked full one). The N tiles are grid axis 0,
    so that a block's tiles run next to each other and its gathered x rows come from HBM once."""
    blk, n_tile = tl.program_id(1), tl.program_id(0)
    e = tl.load(block_expert_ptr + blk).to(tl.int64)
    if e >= E:
        return
    row0 = tl.load(block_start_ptr + blk)
    if tl.load(block_half_ptr + blk) != 0:
        gate_up_tile(x_ptr, w_ptr, pairs_ptr, h_ptr, row0, e, n_tile, num_pairs,
                     H, I, TOP_K, PRECISION, UPCAST, BLOCK_M // 2, BLOCK_N, BLOCK_K)
    else:
        gate_up_tile(x_ptr, w_ptr, pairs_ptr, h_ptr, row0, e, n_tile, num_pairs,
                     H, I, TOP_K, PRECISION, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def down_tile(
    h_ptr, down_ptr, pairs_ptr, weights_ptr, y_ptr, row0, e, n_tile, num_pairs,
    H: tl.constexpr, I: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[pair, n-tile] = w_pair * (h_pair down_e^T) for the pairs of rows row0 : row0 + ROWS."""
    m = row0 + tl.arange(0, ROWS)
    pair = tl.load(pairs_ptr + m)
    valid = pair < num_pairs
    n = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < H
    kk = tl.arange(0, BLOCK_K)
    a_ptrs = h_ptr + m[:, None].to(tl.int64) * I + kk[None, :]  # [ROWS, BLOCK_K]
    b_ptrs = down_ptr + e * (H * I) + n[None, :] * I + kk[:, None]  # [BLOCK_K, BLOCK_N]
    acc = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, I, BLOCK_K):
        k_ok = (k0 + kk) < I
        a = tl.load(a_ptrs, mask=valid[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = mma(a, b, acc, PRECISION, UPCAST)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    w = tl.load(weights_ptr + pair, mask=valid, other=0.0)
    acc = acc * w[:, None]
    tl.store(y_ptr + pair[:, None].to(tl.int64) * H + n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=valid[:, None] & n_ok[None, :])


@triton.jit
def grouped_down_kernel(
    h_ptr,
    down_ptr,
    pairs_ptr,
    block_expert_ptr,
    block_start_ptr,
    block_half_ptr,
    weights_ptr,
    y_ptr,
    num_pairs,
    H: tl.constexpr,
    I: tl.constexpr,
    E: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """y[pair, n-tile] = w_pair * (h_pair down_e^T), written at the pair's unsorted row t * k + slot; blocks,
    half blocks and grid order as in the gate/up kernel."""
    blk, n_tile = tl.program_id(1), tl.program_id(0)
    e = tl.load(block_expert_ptr + blk).to(tl.int64)
    if e >= E:
        return
    row0 = tl.load(block_start_ptr + blk)
    if tl.load(block_half_ptr + blk) != 0:
        down_tile(h_ptr, down_ptr, pairs_ptr, weights_ptr, y_ptr, row0, e, n_tile, num_pairs,
                  H, I, PRECISION, UPCAST, BLOCK_M // 2, BLOCK_N, BLOCK_K)
    else:
        down_tile(h_ptr, down_ptr, pairs_ptr, weights_ptr, y_ptr, row0, e, n_tile, num_pairs,
                  H, I, PRECISION, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def sum_slots_kernel(y_ptr, out_ptr, H: tl.constexpr, TOP_K: tl.constexpr, BLOCK_H: tl.constexpr):
    """out[t, cols] = sum over the slots of y[t * TOP_K + slot, cols], in float32, stored in out's dtype: one
    pass over y, where torch's sum wrote a float32 [T, H] and converted it in a second kernel."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ok = cols < H
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for slot in tl.static_range(TOP_K):
        acc += tl.load(y_ptr + (t * TOP_K + slot) * H + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * H + cols, acc.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def count_kernel(ids_ptr, counts_ptr, rank_ptr, num_pairs, STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    """counts[e * STRIDE] += 1 for each pair routed to e; rank[pair] = its arrival index within its expert."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < num_pairs
    e = tl.load(ids_ptr + offs, mask=ok, other=0)
    rank = tl.atomic_add(counts_ptr + e * STRIDE, tl.full([BLOCK], 1, tl.int32), mask=ok)
    tl.store(rank_ptr + offs, rank, mask=ok)


@triton.jit
def segments_kernel(
    counts_ptr, pad_start_ptr, block_expert_ptr, block_start_ptr, block_half_ptr, n_blocks,
    E: tl.constexpr, E_P2: tl.constexpr, BLOCK_M: tl.constexpr, STRIDE: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """One program: from the counts (expert e's at e * STRIDE), each expert's segment start (counts padded to
    BLOCK_M // 2, exclusive prefix sum) and every block's owner, first row and half flag: expert e writes its
    own blocks, the blocks past the used ones get (E, 0, 0). The two sets of writes are disjoint, so no
    ordering between the program's threads is needed."""
    SEG: tl.constexpr = BLOCK_M // 2
    e = tl.arange(0, E_P2)
    real = e < E
    count = tl.load(counts_ptr + e * STRIDE, mask=real, other=0)
    padded = (count + SEG - 1) // SEG * SEG
    start = tl.cumsum(padded, 0) - padded
    tl.store(pad_start_ptr + e, start, mask=real)
    n_own = (count + BLOCK_M - 1) // BLOCK_M  # [E_P2] blocks of each expert
    first = tl.cumsum(n_own, 0) - n_own
    used = tl.sum(n_own, 0)
    for b0 in range(0, n_blocks, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)
        unused = (b >= used) & (b < n_blocks)
        tl.store(block_expert_ptr + b, tl.full([BLOCK_B], E, tl.int32), mask=unused)
        tl.store(block_start_ptr + b, tl.zeros([BLOCK_B], tl.int32), mask=unused)
        tl.store(block_half_ptr + b, tl.zeros([BLOCK_B], tl.int32), mask=unused)
    for j in range(0, tl.max(n_own, 0)):
        mine = real & (j < n_own)
        tl.store(block_expert_ptr + first + j, e, mask=mine)
        tl.store(block_start_ptr + first + j, start + j * BLOCK_M, mask=mine)
        tl.store(block_half_ptr + first + j, (padded - j * BLOCK_M == BLOCK_M // 2).to(tl.int32), mask=mine)


@triton.jit
def place_kernel(ids_ptr, rank_ptr, pad_start_ptr, pairs_ptr, num_pairs, BLOCK: tl.constexpr):
    """pairs[segment start of the pair's expert + its rank] = pair."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < num_pairs
    e = tl.load(ids_ptr + offs, mask=ok, other=0)
    rank = tl.load(rank_ptr + offs, mask=ok, other=0)
    start = tl.load(pad_start_ptr + e, mask=ok, other=0)
    tl.store(pairs_ptr + start + rank, offs, mask=ok)


def group_by_expert(
    ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids [T, k] int32 -> the layout of `reference.group_by_expert`, in three small kernels (a counting
    sort: atomic counts, segment starts and the blocks' owners, rows and half flags, placement). The order of
    an expert's pairs within its segment is the atomics' arrival order; each row's result does not depend on it."""
    num_pairs = ids.numel()
    n_blocks = (num_pairs + block_m - 1) // block_m + num_experts
    flat = ids.reshape(-1).to(torch.int32)  # [T*k]
    counts = torch.zeros(num_experts * COUNT_STRIDE, dtype=torch.int32, device=ids.device)
    rank = torch.empty(num_pairs, dtype=torch.int32, device=ids.device)
    pad_start = torch.empty(num_experts, dtype=torch.int32, device=ids.device)
    block_expert = torch.empty(n_blocks, dtype=torch.int32, device=ids.device)
    block_start = torch.empty(n_blocks, dtype=torch.int32, device=ids.device)
    block_half = torch.empty(n_blocks, dtype=torch.int32, device=ids.device)
    pairs = torch.full((n_blocks * block_m,), num_pairs, dtype=torch.int32, device=ids.device)
    grid = ((num_pairs + GROUP_BLOCK - 1) // GROUP_BLOCK,)
    launcher(count_kernel)[grid](flat, counts, rank, num_pairs, STRIDE=COUNT_STRIDE, BLOCK=GROUP_BLOCK)
    launcher(segments_kernel)[(1,)](counts, pad_start, block_expert, block_start, block_half, n_blocks,
                                  E=num_experts, E_P2=next_pow2(num_experts), BLOCK_M=block_m,
                                  STRIDE=COUNT_STRIDE, BLOCK_B=256)
    launcher(place_kernel)[grid](flat, rank, pad_start, pairs, num_pairs, BLOCK=GROUP_BLOCK)
    return pairs, block_expert, block_start, block_half


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> ids [T, top_k] int32, weights [T, top_k] float32 (route.py's packed router)."""
    T, E = router_logits.shape
    ids = torch.empty((T, top_k), device=router_logits.device, dtype=torch.int32)
    weights = torch.empty((T, top_k), device=router_logits.device, dtype=torch.float32)
    launcher(route_kernel)[(T,)](
        router_logits, router_logits.stride(0), router_logits.stride(1), ids, weights,
        E=E, E_P2=next_pow2(E), TOP_K=top_k, K_P2=next_pow2(top_k), RENORM=renormalize,
    )
    return ids, weights


def moe_prefill(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    top_k: int,
    renormalize: bool,
) -> torch.Tensor:
    """x [T, H]; router_logits [T, E] (any strides) -> the routed experts' output [T, H] in x's dtype."""
    E, I2, H = gate_up.shape
    I = I2 // 2
    T = x.shape[0]
    x, router_logits = dense(x, router_logits)
    ids, weights = route(router_logits, top_k, renormalize)
    pairs, block_expert, block_start, block_half = group_by_expert(ids, E, BLOCK_M)
    n_blocks = block_expert.shape[0]
    if isinstance(n_blocks, int) and n_blocks > MAX_GRID_Y:
        raise ValueError(f"moe_prefill: {n_blocks} segment blocks exceed the grid's {MAX_GRID_Y} (T {T}, top-{top_k})")
    num_pairs = T * top_k
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    blocks = (block_expert, block_start, block_half)
    h = torch.empty((n_blocks * BLOCK_M, I), device=x.device, dtype=x.dtype)
    bn = min(BLOCK_N, max(16, next_pow2(I)))
    bk = min(BLOCK_K, max(16, next_pow2(H)))
    launcher(grouped_gate_up_kernel)[(triton.cdiv(I, bn), n_blocks)](
        x, gate_up, pairs, *blocks, h, num_pairs,
        H=H, I=I, E=E, TOP_K=top_k, PRECISION=precision, UPCAST=INTERPRETED, BLOCK_M=BLOCK_M, BLOCK_N=bn, BLOCK_K=bk,
        num_warps=WARPS, num_stages=STAGES,
    )
    y = torch.empty((num_pairs, H), device=x.device, dtype=x.dtype)
    bn = min(DOWN_BLOCK_N, max(16, next_pow2(H)))
    bk = min(BLOCK_K, max(16, next_pow2(I)))
    launcher(grouped_down_kernel)[(triton.cdiv(H, bn), n_blocks)](
        h, down, pairs, *blocks, weights, y, num_pairs,
        H=H, I=I, E=E, PRECISION=precision, UPCAST=INTERPRETED, BLOCK_M=BLOCK_M, BLOCK_N=bn, BLOCK_K=bk,
        num_warps=WARPS, num_stages=STAGES,
    )
    out = torch.empty_like(x)
    bh = min(SUM_BLOCK_H, max(16, next_pow2(H)))
    launcher(sum_slots_kernel)[(T, triton.cdiv(H, bh))](y, out, H=H, TOP_K=top_k, BLOCK_H=bh)
    return out
