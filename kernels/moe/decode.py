"""One-token MoE: two fused mat-vec kernels that read the selected experts' weights in place, by index.

Kernel 1, grid (top_k, I / BLOCK_I): routes the token (every program recomputes the tiny router, so no
extra launch), then h[slot] = silu(gate_e x) * (up_e x) for its slice of rows of expert e = ids[slot].
Kernel 2, grid (H / BLOCK_H): y = sum_slot w_slot * down_e h[slot] for its slice of output rows, plus
optionally the shared expert sigmoid(g) * down_s (silu(gate_s) * up_s), whose gate/up come precomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .launch import launch, next_pow2
from .route import route_row


@dataclass(frozen=True)
class DecodeConfig:
    block_i: int = 4  # gate/up rows per program (of each of gate and up)
    block_h: int = 512  # columns per step of the gate/up mat-vec
    block_out: int = 8  # output rows per program of the down mat-vec
    block_inner: int = 512  # columns per step of the down mat-vec
    warps_gate_up: int = 4
    warps_down: int = 4


@triton.jit
def decode_gate_up_kernel(
    x_ptr,
    logits_ptr,
    logits_col_stride,
    w_ptr,
    h_ptr,
    ids_ptr,
    weights_ptr,
    H: tl.constexpr,
    I: tl.constexpr,
    E: tl.constexpr,
    E_P2: tl.constexpr,
    TOP_K: tl.constexpr,
    K_P2: tl.constexpr,
    RENORM: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    slot = tl.program_id(0)
    pid_i = tl.program_id(1)
    ids, top = route_row(logits_ptr, 0, logits_col_stride, E, E_P2, TOP_K, K_P2, RENORM)
    slots = tl.arange(0, K_P2)
    if (slot == 0) & (pid_i == 0):
        tl.store(ids_ptr + slots, ids, mask=slots < TOP_K)
        tl.store(weights_ptr + slots, top, mask=slots < TOP_K)
    e = tl.sum(tl.where(slots == slot, ids, 0), 0).to(tl.int64)
    rows = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    row_ok = rows < I
    gate_ptrs = w_ptr + e * (2 * I * H) + rows[:, None] * H  # [BLOCK_I, 1]
    acc_g = tl.zeros([BLOCK_I, BLOCK_H], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_I, BLOCK_H], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H)
        col_ok = cols < H
        xv = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        ok = row_ok[:, None] & col_ok[None, :]
        g = tl.load(gate_ptrs + cols[None, :], mask=ok, other=0.0)
        u = tl.load(gate_ptrs + I * H + cols[None, :], mask=ok, other=0.0)
        acc_g += g.to(tl.float32) * xv[None, :]
        acc_u += u.to(tl.float32) * xv[None, :]
    g = tl.sum(acc_g, 1)
    u = tl.sum(acc_u, 1)
    tl.store(h_ptr + slot * I + rows, g * tl.sigmoid(g) * u, mask=row_ok)


@triton.jit
def decode_down_kernel(
    h_ptr,
    ids_ptr,
    weights_ptr,
    down_ptr,
    out_ptr,
    shared_act_ptr,
    shared_act_stride,
    shared_gate_ptr,
    shared_down_ptr,
    H: tl.constexpr,
    I: tl.constexpr,
    S: tl.constexpr,
    TOP_K: tl.constexpr,
    HAS_SHARED: tl.constexpr,
    BLOCK_OUT: tl.constexpr,
    BLOCK_INNER: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    row_ok = rows < H
    acc = tl.zeros([BLOCK_OUT], dtype=tl.float32)
    for slot in tl.static_range(TOP_K):
        e = tl.load(ids_ptr + slot).to(tl.int64)
        w = tl.load(weights_ptr + slot)
        part = tl.zeros([BLOCK_OUT, BLOCK_INNER], dtype=tl.float32)
        for i0 in range(0, I, BLOCK_INNER):
            cols = i0 + tl.arange(0, BLOCK_INNER)
            col_ok = cols < I
            hv = tl.load(h_ptr + slot * I + cols, mask=col_ok, other=0.0)
            d = tl.load(down_ptr + e * (H * I) + rows[:, None] * I + cols[None, :],
                        mask=row_ok[:, None] & col_ok[None, :], other=0.0)
            part += d.to(tl.float32) * hv[None, :]
        acc += w * tl.sum(part, 1)
    if HAS_SHARED:
        part = tl.zeros([BLOCK_OUT, BLOCK_INNER], dtype=tl.float32)
        for i0 in range(0, S, BLOCK_INNER):
            cols = i0 + tl.arange(0, BLOCK_INNER)
            col_ok = cols < S
            g = tl.load(shared_act_ptr + cols * shared_act_stride, mask=col_ok, other=0.0).to(tl.float32)
            u = tl.load(shared_act_ptr + (S + cols) * shared_act_stride, mask=col_ok, other=0.0).to(tl.float32)
            d = tl.load(shared_down_ptr + rows[:, None] * S + cols[None, :],
                        mask=row_ok[:, None] & col_ok[None, :], other=0.0)
            part += d.to(tl.float32) * (g * tl.sigmoid(g) * u)[None, :]
        gate = tl.load(shared_gate_ptr).to(tl.float32)
        acc += tl.sigmoid(gate) * tl.sum(part, 1)
    tl.store(out_ptr + rows, acc.to(out_ptr.dtype.element_ty), mask=row_ok)


def moe_decode(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    top_k: int,
    renormalize: bool,
    shared: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    cfg: DecodeConfig = DecodeConfig(),
) -> torch.Tensor:
    """x [1, H]; router_logits [1, E]; shared = (gate|up [1, 2S] (any column stride), gate logit [1, 1],
    down [H, S]) or None -> [1, H] in x's dtype."""
    E, I2, H = gate_up.shape
    I = I2 // 2
    x = x.contiguous()
    h = torch.empty((top_k, I), device=x.device, dtype=torch.float32)
    ids = torch.empty((top_k,), device=x.device, dtype=torch.int32)
    weights = torch.empty((top_k,), device=x.device, dtype=torch.float32)
    out = torch.empty_like(x)
    block_i = min(cfg.block_i, next_pow2(I))
    block_h = min(cfg.block_h, next_pow2(H))
    launch(decode_gate_up_kernel)[(top_k, triton.cdiv(I, block_i))](
        x, router_logits, router_logits.stride(1), gate_up, h, ids, weights,
        H=H, I=I, E=E, E_P2=next_pow2(E), TOP_K=top_k, K_P2=next_pow2(top_k), RENORM=renormalize,
        BLOCK_I=block_i, BLOCK_H=block_h, num_warps=cfg.warps_gate_up,
    )
    if shared is None:
        act, gate, s_down, S = h, h, h, 1
    else:
        act, gate, s_down = shared
        S = s_down.shape[1]
    block_out = min(cfg.block_out, next_pow2(H))
    block_inner = min(cfg.block_inner, next_pow2(max(I, S)))
    launch(decode_down_kernel)[(triton.cdiv(H, block_out),)](
        h, ids, weights, down, out, act, act.stride(-1), gate, s_down,
        H=H, I=I, S=S, TOP_K=top_k, HAS_SHARED=shared is not None,
        BLOCK_OUT=block_out, BLOCK_INNER=block_inner, num_warps=cfg.warps_down,
    )
    return out
