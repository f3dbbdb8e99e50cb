"""Chunked gated delta rule (prefill) in Triton: two kernels per call (design and numbers: DESIGN.md).

1. `_prep_kernel`, grid (chunks, Hv), fully parallel: per chunk of BT tokens, the in-chunk cumulative log decay
   G, the WY matrix T = (I + strict_lower(beta k k^T exp(G_i - G_j)))^-1 (k L2-normalised) by recursive 2 x 2
   block inversion (2-row blocks elementwise, then 2 -> 4 -> ... -> 64), and into scratch
   w = T (beta k exp(G)) [BT, K], u = T (beta v) [BT, V], the in-chunk attention
   att = causal(q k^T exp(G_i - G_j)) / (|q| |k| sqrt(K)) [BT, BT], the row scales ks = exp(G_last - G) / |k|
   and qs = exp(G) / (|q| sqrt(K)), and each row's chunk decay exp(G_last).
2. `_state_output_kernel`, grid (V / BV, Hv), sequential over chunks with the state tile S [K, BV] in registers:
   v_new = u - w S, o = qs (q S) + att v_new, S <- S exp(G_last) + k^T (ks v_new). The state is read once and
   written once; no per-chunk state or v_new goes through memory.
q and k enter the dots as given; their norms scale the products. Dots on float32 inputs use IEEE float32. On
16-bit inputs the dots take their 16-bit operands (q, k, w, att) straight from memory into shared memory; a
float32 operand goes in as hi + lo 16-bit parts (`_hilo`: two exact-product dots, about 16 mantissa bits) where
precision needs it (w, u, att) and rounded to 16 bits elsewhere (S in q S and w S, v_new in att v_new, ks v_new
in the state update). The WY inverse keeps TF32 (`PREC`). The cumulative decays G are summed and differenced in
float64 (`_decay`): in float32, G_i - G_j loses |G| ulps, the largest part of the float32 state error.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import INTERPRETED, dense, launcher
from .triton_decode import check_heads

CHUNK = 64  # `_unit_lower_inverse` is written for 64-row chunks
# V tile of the sequential pass where the K tile is 128: V / 32 x Hv sequential programs (the fastest of 16, 32, 64)
STATE_BV = 32
# 4 warps: 8 run slower (DESIGN.md)
STATE_WARPS, STATE_STAGES = 4, 3
PREP_WARPS = 4
# K and V tiles of 16-bit inputs are at least 64 wide: with 16- or 32-wide tiles Triton 3.6's sm_90 code for
# the 16-bit dots (B under a 32- or 64-byte swizzle) faults or computes wrong values while the interpreter is right
MIN_TILE_16 = 64


@triton.jit
def _decay(G64, mask):
    """exp(G_i - G_j) where mask, else 0, from float64 cumulative log decays G [BT]: the difference of two
    float32 sums of up to 64 decays (|G| reaches hundreds) would lose |G| ulps, the state's largest error."""
    return tl.where(mask, tl.exp(tl.where(mask, (G64[:, None] - G64[None, :]).to(tl.float32), 0.0)), 0.0)


@triton.jit
def _dot_inputs(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b on operands in the input dtype: 16-bit dots multiply them exactly (as TF32 would, at half the
    shared memory). UPCAST (interpreter only) goes through float32: Triton 3.6's interpreter multiplies bf16
    operands wrongly (its matmul runs on their raw bits)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _hilo(x, dt: tl.constexpr):
    """float32 x as hi + lo in the 16-bit dtype dt: about 16 mantissa bits, for two exact-product 16-bit dots."""
    hi = x.to(dt)
    return hi, (x - hi.to(tl.float32)).to(dt)


@triton.jit
def _dot_f32_x16(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """a (float32) @ b (input dtype). 16-bit b: a as hi + lo, two 16-bit dots whose operands load straight
    into shared memory (TF32 would convert b and keep 11 bits of a); float32 b: one IEEE dot."""
    if b.dtype == tl.float32:
        return tl.dot(a, b, input_precision="ieee")
    hi, lo = _hilo(a, b.dtype)
    return _dot_inputs(hi, b, PREC, UPCAST) + _dot_inputs(lo, b, PREC, UPCAST)


@triton.jit
def _dot_rounded(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """a (input dtype) @ b (float32) in one dot, b rounded to a's dtype (8 mantissa bits on bf16 inputs)."""
    return _dot_inputs(a, b.to(a.dtype), PREC, UPCAST)


@triton.jit
def _double_blocks(x, a, ri, B: tl.constexpr, PREC: tl.constexpr):
    """From X = (I + a within B-row blocks)^-1 to the inverse within 2B-row blocks: X - (X L) X, L the
    lower-left B-blocks of a inside each 2B-block."""
    lower = ((ri // (2 * B))[:, None] == (ri // (2 * B))[None, :]) & ((ri // B)[:, None] != (ri // B)[None, :])
    xl = tl.dot(x, tl.where(lower, a, 0.0), input_precision=PREC)  # [BT, BT]
    return x - tl.dot(xl, x, input_precision=PREC)


@triton.jit
def _unit_lower_inverse(a, ri, PREC: tl.constexpr):
    """(I + a)^-1 for a strictly lower-triangular [64, 64], by recursive 2 x 2 block inversion: X inverts
    I + a within b-row blocks; with L the lower-left b-blocks of a inside each 2b-block (L X L = 0),
    (I + a within 2b-blocks)^-1 = X - (X L) X. b = 1 is elementwise (X = I - a within 2-row blocks); five
    levels b = 2 .. 32 are 10 dependent dots, where X L takes X from registers and the L masks are known up
    front. Keys of trained models are strongly aligned, which makes the product of repeated squarings
    (I - a)(I + a^2)(I + a^4)... lose every digit by row ~40 in float32 (DESIGN.md); block inversion does not."""
    same2 = (ri // 2)[:, None] == (ri // 2)[None, :]
    x = tl.where(ri[:, None] == ri[None, :], 1.0, tl.where(same2, -a, 0.0))
    x = _double_blocks(x, a, ri, 2, PREC)
    x = _double_blocks(x, a, ri, 4, PREC)
    x = _double_blocks(x, a, ri, 8, PREC)
    x = _double_blocks(x, a, ri, 16, PREC)
    return _double_blocks(x, a, ri, 32, PREC)


@triton.jit(do_not_specialize=["T"])  # one binary for every prefill length
def _prep_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, w_ptr, u_ptr, gc_ptr, ks_ptr, el_ptr, a_ptr, qs_ptr, T,
    s_qt, s_qh, s_kt, s_kh, s_vt, s_vh, s_gt, s_gh, s_bt, s_bh,
    GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr, NH: tl.constexpr, UPCAST: tl.constexpr,
):
    i_t = tl.program_id(0)
    i_h = tl.program_id(1)
    hk = i_h // GROUP
    ri = tl.arange(0, BT)
    rows = i_t * BT + ri
    live = rows < T
    ck = tl.arange(0, BK)  # K padded to a power of two >= 16 (64 for 16-bit inputs); padding loads zeros
    km = live[:, None] & (ck < K)[None, :]
    kin = tl.load(k_ptr + rows[:, None] * s_kt + hk * s_kh + ck[None, :], mask=km, other=0.0)  # [BT, BK]
    kt = kin.to(tl.float32)
    rnorm = tl.rsqrt(tl.sum(kt * kt, 1) + 1e-6)  # [BT], as the reference's l2norm
    g = tl.load(g_ptr + rows * s_gt + i_h * s_gh, mask=live, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + rows * s_bt + i_h * s_bh, mask=live, other=0.0).to(tl.float32)
    G64 = tl.cumsum(g.to(tl.float64), 0)  # [BT]
    # G goes to scratch though nothing reads it: without this store ptxas allocates this kernel's registers
    # differently, spills, and the call runs slower (DESIGN.md)
    tl.store(gc_ptr + i_h * T + rows, G64, mask=live)
    G = G64.to(tl.float32)
    strict = ri[:, None] > ri[None, :]
    decay = _decay(G64, strict)
    # the in-chunk attention causal(q k^T exp(G_i - G_j)) with both norms and the scale applied, and the row
    # scale of the state pass's q S; here, before k k^T, it spills nothing
    qin = tl.load(q_ptr + rows[:, None] * s_qt + hk * s_qh + ck[None, :], mask=km, other=0.0)  # [BT, BK]
    qf = qin.to(tl.float32)
    rq = tl.rsqrt(tl.sum(qf * qf, 1) + 1e-6) * (K ** -0.5)  # [BT], as the reference's l2norm
    qk = _dot_inputs(qin, tl.trans(kin), PREC, UPCAST) * rq[:, None] * rnorm[None, :]
    att = tl.where(ri[:, None] == ri[None, :], qk, qk * decay)  # [BT, BT]: decay is 0 on and above the diagonal
    a_offs = (i_h * T + rows[:, None]) * BT + ri[None, :]  # [BT, BT]
    hi, lo = _hilo(att, a_ptr.dtype.element_ty)
    tl.store(a_ptr + a_offs, hi, mask=live[:, None])
    if a_ptr.dtype.element_ty != tl.float32:  # 16 bits: the rounding remainder as a second matrix behind the first
        tl.store(a_ptr + NH * T * BT + a_offs, lo, mask=live[:, None])
    tl.store(qs_ptr + i_h * T + rows, rq * tl.exp(G), mask=live)
    # k k^T on k as given (16-bit dots multiply it exactly), the norms and beta scale the product
    kk = _dot_inputs(kin, tl.trans(kin), PREC, UPCAST) * (beta * rnorm)[:, None] * rnorm[None, :]
    a = tl.where(strict, kk * decay, 0.0)  # [BT, BT]
    inv = _unit_lower_inverse(a, ri, PREC)
    # the row scales of k (beta exp(G) / |k|) fold into inv's columns; k enters the dot as given
    w = _dot_f32_x16(inv * (beta * rnorm * tl.exp(G))[None, :], kin, PREC, UPCAST)  # [BT, BK]
    tl.store(w_ptr + (i_h * T + rows[:, None]) * K + ck[None, :], w.to(w_ptr.dtype.element_ty), mask=km)
    # rows past T hold G_last (g loads as 0 there), so the last row's G is the chunk's G_last
    g_last = tl.sum(tl.where(ri == BT - 1, G64, 0.0), 0)
    tl.store(ks_ptr + i_h * T + rows, rnorm * tl.exp((g_last - G64).to(tl.float32)), mask=live)
    tl.store(el_ptr + i_h * T + rows, tl.zeros_like(g) + tl.exp(g_last.to(tl.float32)), mask=live)
    inv_b = inv * beta[None, :]
    for v0 in tl.static_range(0, V, BV):
        cv = v0 + tl.arange(0, BV)
        vm = live[:, None] & (cv < V)[None, :]
        vt = tl.load(v_ptr + rows[:, None] * s_vt + i_h * s_vh + cv[None, :], mask=vm, other=0.0)
        u = _dot_f32_x16(inv_b, vt, PREC, UPCAST)  # [BT, BV]
        tl.store(u_ptr + (i_h * T + rows[:, None]) * V + cv[None, :], u.to(u_ptr.dtype.element_ty), mask=vm)


@triton.jit(do_not_specialize=["T", "NT"])
def _state_output_kernel(
    q_ptr, k_ptr, w_ptr, ks_ptr, el_ptr, u_ptr, a_ptr, qs_ptr, o_ptr, state_ptr, reset_ptr, T, NT,
    s_qt, s_qh, s_kt, s_kh, s_ot, s_oh,
    GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, NH: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_h = tl.program_id(1)
    hk = i_h // GROUP
    ri = tl.arange(0, BT)
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    kin, vin = ck < K, cv < V
    tile = ck[:, None] * V + cv[None, :]  # [BK, BV]
    s_mask = kin[:, None] & vin[None, :]
    s = tl.where(tl.load(reset_ptr), 0.0, tl.load(state_ptr + i_h * K * V + tile, mask=s_mask, other=0.0))
    # each row's chunk decay exp(G_last), loaded one chunk ahead: the pipeliner prefetches only loads that feed
    # dots, and a load in the chunk that uses it would put a memory round trip on the chain every chunk
    el_next = tl.load(el_ptr + i_h * T + ri, mask=ri < T, other=0.0)  # [BT]
    for i_t in tl.range(0, NT):
        rows = i_t * BT + ri
        live = rows < T
        km = live[:, None] & kin[None, :]
        vm = live[:, None] & vin[None, :]
        el = el_next
        el_next = tl.load(el_ptr + i_h * T + rows + BT, mask=rows + BT < T, other=0.0)
        w = tl.load(w_ptr + (i_h * T + rows[:, None]) * K + ck[None, :], mask=km, other=0.0)  # [BT, BK]
        kt = tl.load(k_ptr + rows[:, None] * s_kt + hk * s_kh + ck[None, :], mask=km, other=0.0)
        qt = tl.load(q_ptr + rows[:, None] * s_qt + hk * s_qh + ck[None, :], mask=km, other=0.0)
        a_offs = (i_h * T + rows[:, None]) * BT + ri[None, :]  # [BT, BT]
        att = tl.load(a_ptr + a_offs, mask=live[:, None], other=0.0)  # [BT, BT]
        ks = tl.load(ks_ptr + i_h * T + rows, mask=live, other=0.0)  # [BT]: exp(G_last - G) / |k|
        qs = tl.load(qs_ptr + i_h * T + rows, mask=live, other=0.0)  # [BT]: exp(G) / (|q| sqrt(K))
        u = tl.load(u_ptr + (i_h * T + rows[:, None]) * V + cv[None, :], mask=vm, other=0.0).to(tl.float32)
        q_s = _dot_rounded(qt, s, PREC, UPCAST)  # [BT, BV]
        v_new = u - _dot_rounded(w, s, PREC, UPCAST)  # [BT, BV]
        if qt.dtype == tl.float32:
            qkv = tl.dot(att, v_new, input_precision=PREC)
        else:
            vh = v_new.to(qt.dtype)
            qkv = _dot_inputs(att, vh, PREC, UPCAST)  # [BT, BV]
            # att's rounding remainder, stored behind it
            att_lo = tl.load(a_ptr + NH * T * BT + a_offs, mask=live[:, None], other=0.0)
            qkv += _dot_inputs(att_lo, vh, PREC, UPCAST)
        o = q_s * qs[:, None] + qkv
        tl.store(o_ptr + rows[:, None] * s_ot + i_h * s_oh + cv[None, :], o.to(o_ptr.dtype.element_ty), mask=vm)
        # (k ks)^T v_new as k^T (ks v_new): the row scale on the [BT, BV] side, k (an input) exact in the dot
        s = s * tl.max(el, 0) + _dot_rounded(tl.trans(kt), v_new * ks[:, None], PREC, UPCAST)
    tl.store(state_ptr + i_h * K * V + tile, s, mask=s_mask)


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    reset: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as `reference.chunk_gated_delta_rule`; `state` must be contiguous. `out` [1, T, Hv, V],
    if given, receives o (tests pass a NaN-filled one)."""
    check_heads(q, k, v, state)
    T, Hk, K = q.shape[1], q.shape[2], q.shape[3]
    Hv, V = v.shape[2], v.shape[3]
    q, k, v, g, beta = dense(q, k, v, g, beta)
    fp32 = v.dtype == torch.float32
    prec = "ieee" if fp32 else "tf32"  # the float32 dots of the WY inverse on 16-bit inputs: TF32
    BT = CHUNK
    NT = (T + BT - 1) // BT
    w = torch.empty((Hv, T, K), dtype=v.dtype, device=v.device)
    u = torch.empty((Hv, T, V), dtype=torch.float32, device=v.device)
    gc = torch.empty((Hv, T), dtype=torch.float64, device=v.device)  # G, stored by the prep kernel for its speed
    # the row scale ks of k, each row's chunk decay exp(G_last), the row scale qs of q S
    ks, el, qs = (torch.empty((Hv, T), dtype=torch.float32, device=v.device) for _ in range(3))
    # causal(q k^T) in the input dtype; 16-bit inputs: its rounding remainder behind it
    att = torch.empty((1 if fp32 else 2, Hv, T, BT), dtype=v.dtype, device=v.device)
    o = torch.empty((1, T, Hv, V), dtype=v.dtype, device=v.device) if out is None else out
    floor = 16 if fp32 else MIN_TILE_16
    BK = max(floor, triton.next_power_of_2(K))
    PV = max(floor, triton.next_power_of_2(V))
    group = Hv // Hk
    launcher(_prep_kernel)[(NT, Hv)](
        q, k, v, g, beta, w, u, gc, ks, el, att, qs, T,
        q.stride(1), q.stride(2), k.stride(1), k.stride(2), v.stride(1), v.stride(2), g.stride(1), g.stride(2),
        beta.stride(1), beta.stride(2),
        GROUP=group, K=K, V=V, BT=BT, BK=BK, BV=min(PV, 64), PREC=prec, NH=Hv, UPCAST=INTERPRETED,
        num_warps=PREP_WARPS,
    )
    # at BK = 64, 32-wide V tiles compute wrong values on the H100 under Triton 3.6 (K 8 and 16); 64 wide are right
    BV = min(PV, STATE_BV if BK >= 128 else 64)
    # fp32 inputs at K = 128: q, k, w tiles of 32 KB and att 16 KB per pipeline stage; two overflow 227 KB
    stages = 1 if fp32 and BK >= 128 else STATE_STAGES
    launcher(_state_output_kernel)[((V + BV - 1) // BV, Hv)](
        q, k, w, ks, el, u, att, qs, o, state, reset, T, NT,
        q.stride(1), q.stride(2), k.stride(1), k.stride(2), o.stride(1), o.stride(2),
        GROUP=group, K=K, V=V, BT=BT, BK=BK, BV=BV, PREC=prec, UPCAST=INTERPRETED, NH=Hv,
        num_warps=STATE_WARPS, num_stages=stages,
    )
    return o
