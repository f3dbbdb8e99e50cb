"""T-token quantized MoE: `kernels/moe/prefill.py`'s router, grouping by expert, segment blocks and slot sum (its
kernels, imported), with grouped GEMMs whose weight tiles are dequantized in registers (q * s rounded to the
activation dtype, exactly the reference's weights) before the tensor-core dot."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import INTERPRETED, dense, launcher, next_pow2
from ..moe.prefill import (BLOCK_K, BLOCK_M, BLOCK_N, DOWN_BLOCK_N, MAX_GRID_Y, STAGES, SUM_BLOCK_H, WARPS,
                           group_by_expert, mma, route, sum_slots_kernel)
from .dequant import dequant_tile


@triton.jit
def qgate_up_tile(
    x_ptr, q_ptr, s_ptr, pairs_ptr, h_ptr, row0, e, n_tile, num_pairs,
    H: tl.constexpr, I: tl.constexpr, TOP_K: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """h[row0 : row0 + ROWS, n-tile] = silu(x_tok gate_e^T) * (x_tok up_e^T), gate and up tiles dequantized."""
    m = row0 + tl.arange(0, ROWS)
    pair = tl.load(pairs_ptr + m)
    valid = pair < num_pairs
    tok = (pair // TOP_K).to(tl.int64)
    n = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < I
    kk = tl.arange(0, BLOCK_K)
    q_gate = q_ptr + e * (2 * I * (H * BITS // 8))
    s_gate = s_ptr + e * (2 * I * (H // GROUP))
    acc_g = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        a = tl.load(x_ptr + tok[:, None] * H + (k0 + kk)[None, :], mask=valid[:, None] & (k0 + kk < H)[None, :],
                    other=0.0)  # [ROWS, BLOCK_K]
        g = dequant_tile(q_gate, s_gate, n, n_ok, k0, H, GROUP, BITS, BLOCK_N, BLOCK_K, a.dtype)
        u = dequant_tile(q_gate + I * (H * BITS // 8), s_gate + I * (H // GROUP), n, n_ok, k0, H, GROUP, BITS,
                         BLOCK_N, BLOCK_K, a.dtype)
        acc_g = mma(a, g, acc_g, PRECISION, UPCAST)
        acc_u = mma(a, u, acc_u, PRECISION, UPCAST)
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    tl.store(h_ptr + m[:, None].to(tl.int64) * I + n[None, :], h.to(h_ptr.dtype.element_ty),
             mask=valid[:, None] & n_ok[None, :])


@triton.jit
def qgrouped_gate_up_kernel(
    x_ptr, q_ptr, s_ptr, pairs_ptr, block_expert_ptr, block_start_ptr, block_half_ptr, h_ptr, num_pairs,
    H: tl.constexpr, I: tl.constexpr, E: tl.constexpr, TOP_K: tl.constexpr, GROUP: tl.constexpr,
    BITS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One segment block's gate/up tile; blocks, half blocks and grid order as `moe.prefill`'s float kernel."""
    blk, n_tile = tl.program_id(1), tl.program_id(0)
    e = tl.load(block_expert_ptr + blk).to(tl.int64)
    if e >= E:
        return
    row0 = tl.load(block_start_ptr + blk)
    if tl.load(block_half_ptr + blk) != 0:
        qgate_up_tile(x_ptr, q_ptr, s_ptr, pairs_ptr, h_ptr, row0, e, n_tile, num_pairs, H, I, TOP_K, GROUP, BITS,
                      PRECISION, UPCAST, BLOCK_M // 2, BLOCK_N, BLOCK_K)
    else:
        qgate_up_tile(x_ptr, q_ptr, s_ptr, pairs_ptr, h_ptr, row0, e, n_tile, num_pairs, H, I, TOP_K, GROUP, BITS,
                      PRECISION, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def qdown_tile(
    h_ptr, q_ptr, s_ptr, pairs_ptr, weights_ptr, y_ptr, row0, e, n_tile, num_pairs,
    H: tl.constexpr, I: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[pair, n-tile] = w_pair * (h_pair down_e^T), the down tiles dequantized."""
    m = row0 + tl.arange(0, ROWS)
    pair = tl.load(pairs_ptr + m)
    valid = pair < num_pairs
    n = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < H
    kk = tl.arange(0, BLOCK_K)
    q_down = q_ptr + e * (H * (I * BITS // 8))
    s_down = s_ptr + e * (H * (I // GROUP))
    acc = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, I, BLOCK_K):
        a = tl.load(h_ptr + m[:, None].to(tl.int64) * I + (k0 + kk)[None, :],
                    mask=valid[:, None] & (k0 + kk < I)[None, :], other=0.0)  # [ROWS, BLOCK_K]
        b = dequant_tile(q_down, s_down, n, n_ok, k0, I, GROUP, BITS, BLOCK_N, BLOCK_K, a.dtype)
        acc = mma(a, b, acc, PRECISION, UPCAST)
    w = tl.load(weights_ptr + pair, mask=valid, other=0.0)
    acc = acc * w[:, None]
    tl.store(y_ptr + pair[:, None].to(tl.int64) * H + n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=valid[:, None] & n_ok[None, :])


@triton.jit
def qgrouped_down_kernel(
    h_ptr, q_ptr, s_ptr, pairs_ptr, block_expert_ptr, block_start_ptr, block_half_ptr, weights_ptr, y_ptr,
    num_pairs, H: tl.constexpr, I: tl.constexpr, E: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One segment block's down tile, written at the pair's unsorted row t * k + slot."""
    blk, n_tile = tl.program_id(1), tl.program_id(0)
    e = tl.load(block_expert_ptr + blk).to(tl.int64)
    if e >= E:
        return
    row0 = tl.load(block_start_ptr + blk)
    if tl.load(block_half_ptr + blk) != 0:
        qdown_tile(h_ptr, q_ptr, s_ptr, pairs_ptr, weights_ptr, y_ptr, row0, e, n_tile, num_pairs, H, I, GROUP,
                   BITS, PRECISION, UPCAST, BLOCK_M // 2, BLOCK_N, BLOCK_K)
    else:
        qdown_tile(h_ptr, q_ptr, s_ptr, pairs_ptr, weights_ptr, y_ptr, row0, e, n_tile, num_pairs, H, I, GROUP,
                   BITS, PRECISION, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)


def tile_k(K: int) -> int:
    """A K step of the GEMMs: the float kernels' BLOCK_K, smaller for narrow K (tl.dot's 16 at least)."""
    return min(BLOCK_K, max(16, next_pow2(K)))


def gate_up_meta(H: int, I: int, top_k: int) -> dict:
    """The gate/up kernel's shape constexprs (the tiles of moe.prefill)."""
    return dict(H=H, I=I, TOP_K=top_k, BLOCK_N=min(BLOCK_N, max(16, next_pow2(I))), BLOCK_K=tile_k(H))


def down_meta(H: int, I: int) -> dict:
    """The down kernel's shape constexprs."""
    return dict(H=H, I=I, BLOCK_N=min(DOWN_BLOCK_N, max(16, next_pow2(H))), BLOCK_K=tile_k(I))


def common_meta(E: int, bits: int, group: int, dtype: torch.dtype) -> dict:
    """Both GEMM kernels' other constexprs and launch options."""
    return dict(E=E, GROUP=group, BITS=bits, PRECISION="ieee" if dtype == torch.float32 else "tf32",
                UPCAST=INTERPRETED, BLOCK_M=BLOCK_M, num_warps=WARPS, num_stages=STAGES)


def qmoe_prefill(
    x: torch.Tensor, router_logits: torch.Tensor, experts: tuple[torch.Tensor, ...], top_k: int, renormalize: bool,
    bits: int, group: int,
) -> torch.Tensor:
    """x [T, H]; router_logits [T, E] (any strides); experts = (gate_up_q, gate_up_s, down_q, down_s) -> the
    routed experts' output [T, H] in x's dtype."""
    gate_up_q, gate_up_s, down_q, down_s = dense(*experts)
    E, I = gate_up_s.shape[0], gate_up_s.shape[1] // 2
    T, H = x.shape
    x, router_logits = dense(x, router_logits)
    ids, weights = route(router_logits, top_k, renormalize)
    pairs, *blocks = group_by_expert(ids, E, BLOCK_M)
    n_blocks = blocks[0].shape[0]
    if isinstance(n_blocks, int) and n_blocks > MAX_GRID_Y:
        raise ValueError(f"qmoe_prefill: {n_blocks} segment blocks exceed the grid's {MAX_GRID_Y} (T {T}, top-{top_k})")
    num_pairs = T * top_k
    common = common_meta(E, bits, group, x.dtype)
    h = torch.empty((n_blocks * BLOCK_M, I), device=x.device, dtype=x.dtype)
    meta = gate_up_meta(H, I, top_k)
    launcher(qgrouped_gate_up_kernel)[(triton.cdiv(I, meta["BLOCK_N"]), n_blocks)](
        x, gate_up_q, gate_up_s, pairs, *blocks, h, num_pairs, **meta, **common,
    )
    y = torch.empty((num_pairs, H), device=x.device, dtype=x.dtype)
    meta = down_meta(H, I)
    launcher(qgrouped_down_kernel)[(triton.cdiv(H, meta["BLOCK_N"]), n_blocks)](
        h, down_q, down_s, pairs, *blocks, weights, y, num_pairs, **meta, **common,
    )
    out = torch.empty_like(x)
    bh = min(SUM_BLOCK_H, max(16, next_pow2(H)))
    launcher(sum_slots_kernel)[(T, triton.cdiv(H, bh))](y, out, H=H, TOP_K=top_k, BLOCK_H=bh)
    return out
