"""One-token MoE: two fused mat-vec kernels that read the selected experts' weights in place, by index.

Kernel 1, grid (top_k, I / BLOCK_I): routes the token (every program recomputes the tiny router, so no
extra launch), then h[slot] = silu(gate_e x) * (up_e x) for its slice of rows of expert e = ids[slot].
Kernel 2, grid (H / BLOCK_OUT): y = sum_slot w_slot * down_e h[slot] for its slice of output rows, plus
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
    block_h: int = 2048  # columns per step of the gate/up mat-vec (all of H at Qwen3.5/Qwen3-Next shapes)
    block_out: int = 4  # output rows per program of the down mat-vec
    tile_down: int = 16384  # elements per step of the down mat-vec: k_p2 * block_out * block_inner
    warps_gate_up: int = 8
    warps_down: int = 8


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
    K_P2: tl.constexpr,
    HAS_SHARED: tl.constexpr,
    BLOCK_OUT: tl.constexpr,
    BLOCK_INNER: tl.constexpr,
):
    """All slots' down rows in one [K_P2, BLOCK_OUT, BLOCK_INNER] load, so no load waits on another."""
    rows = tl.program_id(0) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    row_ok = rows < H
    slots = tl.arange(0, K_P2)
    slot_ok = slots < TOP_K
    e = tl.load(ids_ptr + slots, mask=slot_ok, other=0).to(tl.int64)  # [K_P2]
    w = tl.load(weights_ptr + slots, mask=slot_ok, other=0.0)  # [K_P2]
    row_base = e[:, None, None] * (H * I) + rows[None, :, None] * I  # [K_P2, BLOCK_OUT, 1]
    row_mask = slot_ok[:, None, None] & row_ok[None, :, None]
    acc = tl.zeros([K_P2, BLOCK_OUT], dtype=tl.float32)
    for i0 in range(0, I, BLOCK_INNER):
        cols = i0 + tl.arange(0, BLOCK_INNER)
        col_ok = cols < I
        d = tl.load(down_ptr + row_base + cols[None, None, :], mask=row_mask & col_ok[None, None, :], other=0.0)
        hv = tl.load(h_ptr + slots[:, None] * I + cols[None, :], mask=slot_ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.sum(d.to(tl.float32) * hv[:, None, :], 2)
    out = tl.sum(acc * w[:, None], 0)  # [BLOCK_OUT]
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
        out += tl.sigmoid(gate) * tl.sum(part, 1)
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_ok)


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
    h, ids, weights = decode_gate_up(x.contiguous(), router_logits, gate_up, top_k, renormalize, cfg)
    return decode_down(h, ids, weights, down, torch.empty_like(x), shared, cfg)


def decode_gate_up(x, router_logits, gate_up, top_k: int, renormalize: bool, cfg: DecodeConfig):
    """-> h [top_k, I] float32, ids [top_k] int32, weights [top_k] float32."""
    E, I2, H = gate_up.shape
    I = I2 // 2
    h = torch.empty((top_k, I), device=x.device, dtype=torch.float32)
    ids = torch.empty((top_k,), device=x.device, dtype=torch.int32)
    weights = torch.empty((top_k,), device=x.device, dtype=torch.float32)
    block_i = min(cfg.block_i, next_pow2(I))
    block_h = min(cfg.block_h, next_pow2(H))
    launch(decode_gate_up_kernel)[(top_k, triton.cdiv(I, block_i))](
        x, router_logits, router_logits.stride(1), gate_up, h, ids, weights,
        H=H, I=I, E=E, E_P2=next_pow2(E), TOP_K=top_k, K_P2=next_pow2(top_k), RENORM=renormalize,
        BLOCK_I=block_i, BLOCK_H=block_h, num_warps=cfg.warps_gate_up,
    )
    return h, ids, weights


def decode_down(h, ids, weights, down, out, shared, cfg: DecodeConfig) -> torch.Tensor:
    """out [1, H] = sum_slot weights * down_ids h (+ the gated shared expert)."""
    top_k, I = h.shape
    H = down.shape[1]
    if shared is None:
        act, gate, s_down, S = h, h, h, 1
    else:
        act, gate, s_down = shared
        S = s_down.shape[1]
    block_out = min(cfg.block_out, next_pow2(H))
    k_p2 = next_pow2(top_k)
    block_inner = max(16, min(next_pow2(max(I, S)), cfg.tile_down // (k_p2 * block_out)))
    launch(decode_down_kernel)[(triton.cdiv(H, block_out),)](
        h, ids, weights, down, out, act, act.stride(-1), gate, s_down,
        H=H, I=I, S=S, TOP_K=top_k, K_P2=k_p2, HAS_SHARED=shared is not None,
        BLOCK_OUT=block_out, BLOCK_INNER=block_inner, num_warps=cfg.warps_down,
    )
    return out
