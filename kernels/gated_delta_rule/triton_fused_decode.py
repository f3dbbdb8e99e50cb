"""One GDN decode step from the in_proj output: causal conv (+ SiLU), gates, L2 norms and the recurrence in one
Triton kernel, then the conv state's roll in a second, small one.

Kernel 1, grid (cdiv(V, BV), Hv), as `triton_decode`: program (i_v, h) reads `projected` whole at static offsets
(q | k | v | z | b | a, no split) and computes the conv of exactly the channels it needs from the conv state and
the new input: the q and k channels of its key head (recomputed by every program of that key head: 2 K
channels) and its BV channels of v. Then the gates, the norms and the update of its [K, BV] state tile, as
`triton_decode`; the recurrent state's tile has one reader and writer, this program.

Kernel 2, grid cdiv(conv_dim, BC): the conv state's roll, each channel written by the one program owning its
column block, after kernel 1 (stream order; with PDL, after its grid wait). Kernel 1 never writes the conv state:
the q and k channels are read by every program of their key head, and a grid has no barrier after which one of
them could overwrite the shared rows.

Pads (count 0) and reset exactly as `causal_conv1d` + `recurrent_gated_delta_rule`: a pad's conv output is 0 (so
q = k = v = 0) and g = beta = 0 are selected, the conv state keeps its rows; reset reads both states as zero.
PDL form ("on" / "serial", kernels/pdl.py): kernel 1 loads its recurrent-state tile and A_log, dt_bias before
the grid wait (no kernel of the step writes them); projected, reset, count and the conv rows after it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import launcher
from ..pdl import grid_release, grid_wait, pdl_args
from .reference import fused_heads
from .triton_decode import BLOCK_V, WARPS

BC = 128  # conv-state channels per program of the roll kernel


@triton.jit
def _conv(x_ptr, cs_ptr, cw_ptr, ch, ok, reset, real, s_cw, C: tl.constexpr, W: tl.constexpr):
    """[B] float32: silu(conv) of channels `ch` for the new token, rounded to x's dtype as the conv op's output,
    0 for a pad. The taps in the conv kernel's order: state rows 0 .. W - 2 (0 on reset), then x."""
    dt = x_ptr.dtype.element_ty
    acc = tl.zeros(ch.shape, dtype=tl.float32)
    for j in tl.static_range(W):
        if j < W - 1:
            sv = tl.load(cs_ptr + j * C + ch, mask=ok, other=0.0)
            xin = 0.0 + tl.where(reset, 0.0, sv.to(dt).to(tl.float32))
        else:
            xin = tl.load(x_ptr + ch, mask=ok, other=0.0).to(tl.float32)
        acc += xin * tl.load(cw_ptr + ch * s_cw + j, mask=ok, other=0.0).to(tl.float32)
    y = tl.where(real, acc * tl.sigmoid(acc), 0.0)
    return y.to(dt).to(tl.float32)


@triton.jit
def _gates(x_ptr, alog, dtb, i_h, B_OFF: tl.constexpr, HV: tl.constexpr):
    """Scalar g (log decay) and beta of value head i_h from the raw b, a columns of x."""
    x = tl.load(x_ptr + B_OFF + HV + i_h).to(tl.float32) + dtb
    softplus = tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))
    return -tl.exp(alog) * softplus, tl.sigmoid(tl.load(x_ptr + B_OFF + i_h).to(tl.float32))


@triton.jit
def _fused_kernel(
    x_ptr, cs_ptr, cw_ptr, alog_ptr, dtb_ptr, state_ptr, reset_ptr, count_ptr, o_ptr, s_cw,
    HK: tl.constexpr, GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr, W: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, COUNT: tl.constexpr,
    GDC: tl.constexpr,
):
    grid_release(GDC)
    i_v, i_h = tl.program_id(0), tl.program_id(1)
    HV: tl.constexpr = HK * GROUP
    C: tl.constexpr = 2 * HK * K + HV * V  # conv channels; z follows them, then b, then a
    hk = i_h // GROUP
    ck = tl.arange(0, BK)  # K padded to a power of two; padding loads zeros
    cv = i_v * BV + tl.arange(0, BV)
    kin, vin = ck < K, cv < V
    offs = i_h * K * V + ck[:, None] * V + cv[None, :]  # [BK, BV]
    smask = kin[:, None] & vin[None, :]
    s = tl.load(state_ptr + offs, mask=smask, other=0.0)  # this op's own buffer: before the wait
    alog, dtb = tl.load(alog_ptr + i_h).to(tl.float32), tl.load(dtb_ptr + i_h).to(tl.float32)
    grid_wait(GDC)  # projected, reset and count are earlier kernels' outputs
    reset = tl.load(reset_ptr)
    real = True
    if COUNT:  # a pad (count 0): conv output 0, no decay and no write, whatever its inputs
        real = tl.load(count_ptr) > 0
    q = _conv(x_ptr, cs_ptr, cw_ptr, hk * K + ck, kin, reset, real, s_cw, C, W)  # [BK]
    k = _conv(x_ptr, cs_ptr, cw_ptr, (HK + hk) * K + ck, kin, reset, real, s_cw, C, W)
    v = _conv(x_ptr, cs_ptr, cw_ptr, 2 * HK * K + i_h * V + cv, vin, reset, real, s_cw, C, W)  # [BV]
    q = q * tl.rsqrt(tl.sum(q * q, 0) + 1e-6) * (K ** -0.5)
    k = k * tl.rsqrt(tl.sum(k * k, 0) + 1e-6)
    g, beta = _gates(x_ptr, alog, dtb, i_h, C + HV * V, HV)
    g, beta = tl.where(real, g, 0.0), tl.where(real, beta, 0.0)
    s = tl.where(reset, 0.0, s) * tl.exp(g)
    delta = (v - tl.sum(s * k[:, None], 0)) * beta  # [BV]
    s = s + k[:, None] * delta[None, :]
    o = tl.sum(s * q[:, None], 0)
    tl.store(state_ptr + offs, s, mask=smask)
    tl.store(o_ptr + i_h * V + cv, o.to(o_ptr.dtype.element_ty), mask=vin)


@triton.jit
def _roll_kernel(
    x_ptr, cs_ptr, reset_ptr, count_ptr,
    C: tl.constexpr, W: tl.constexpr, WP: tl.constexpr, BC: tl.constexpr, COUNT: tl.constexpr,
    GDC: tl.constexpr,
):
    """conv_state <- [state; x][n : n + W - 1] for one token (n = 1, or 0 for a pad), this program's channels."""
    grid_release(GDC)
    cols = tl.program_id(0) * BC + tl.arange(0, BC)
    cok = cols < C
    si = tl.arange(0, WP)  # WP: W - 1 rounded up to a power of two
    live = si < W - 1
    grid_wait(GDC)  # kernel 1 reads these rows; x and the flags are earlier kernels' outputs
    reset = tl.load(reset_ptr)
    n = 1
    if COUNT:
        n = tl.minimum(tl.load(count_ptr).to(tl.int32), 1)
    xi = n + si - (W - 1)  # >= 0: row xi of x (only row 0 exists), else old state row n + si
    x_rows = x_ptr + 0 * si[:, None] + cols[None, :]  # [WP, BC]: x's one row, where xi >= 0
    nx = tl.load(x_rows, mask=((xi >= 0) & live)[:, None] & cok[None, :], other=0.0)
    old = tl.load(cs_ptr + (n + si)[:, None] * C + cols[None, :], mask=((xi < 0) & live)[:, None] & cok[None, :],
                  other=0.0)
    sdt = cs_ptr.dtype.element_ty
    new = nx.to(sdt) + tl.where(reset, 0.0, old.to(tl.float32)).to(sdt)
    tl.debug_barrier()  # every row of this block read before any is written
    tl.store(cs_ptr + si[:, None] * C + cols[None, :], new, mask=live[:, None] & cok[None, :])


def check_fused(projected, conv_state, conv_weight, state) -> tuple[int, int, int, int, int]:
    """-> (Hk, K, Hv, V, W); one clear line for what the kernels cannot take."""
    Hk, K, Hv, V = fused_heads(projected, conv_state, state)
    C, W = conv_state.shape[-1], conv_weight.shape[-1]
    if tuple(conv_weight.shape) != (C, W) or tuple(conv_state.shape) != (1, W - 1, C) or not conv_state.is_contiguous():
        raise ValueError(f"conv state must be a contiguous [1, W - 1, {C}] and conv weight [{C}, W], got "
                         f"{tuple(conv_state.shape)} and {tuple(conv_weight.shape)}")
    if state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError(f"state must be a contiguous float32 [1, {Hv}, {K}, {V}], got {state.dtype}")
    return Hk, K, Hv, V, W


def conv_recurrent_gated_delta_rule(
    projected: torch.Tensor,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    state: torch.Tensor,
    reset: torch.Tensor,
    count: torch.Tensor | None = None,
    pdl: str = "on",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as `reference.conv_recurrent_gated_delta_rule`; both states must be contiguous. pdl: "on"
    (the op), "serial" or "off" (kernels/pdl.py). `out` [1, Hv, V], if given, receives o (tests poison it)."""
    Hk, K, Hv, V, W = check_fused(projected, conv_state, conv_weight, state)
    C = conv_state.shape[-1]
    x = projected.contiguous()
    cw = conv_weight if conv_weight.stride(-1) == 1 else conv_weight.contiguous()
    o = x.new_empty((1, Hv, V)) if out is None else out
    BV = min(triton.next_power_of_2(V), BLOCK_V)
    gdc = pdl_args(pdl, o)
    flags = (reset, reset if count is None else count)
    launcher(_fused_kernel)[(triton.cdiv(V, BV), Hv)](
        x, conv_state, cw, A_log, dt_bias, state, *flags, o, cw.stride(0),
        HK=Hk, GROUP=Hv // Hk, K=K, V=V, W=W, BK=triton.next_power_of_2(K), BV=BV, COUNT=count is not None,
        num_warps=WARPS, **_without_pdl_flag(gdc),
    )
    launcher(_roll_kernel)[(triton.cdiv(C, BC),)](
        x, conv_state, *flags, C=C, W=W, WP=triton.next_power_of_2(max(W - 1, 1)), BC=BC, COUNT=count is not None,
        **_without_pdl_flag(gdc),
    )
    return o


def _without_pdl_flag(args: dict) -> dict:
    """pdl_args' launch arguments less the PDL constexpr (both kernels have a single form)."""
    return {k: v for k, v in args.items() if k != "PDL"}
