"""Chunked gated delta rule (prefill) in Triton.

1. `_prep_kernel`, grid (chunks, Hv), fully parallel: per chunk of BT tokens, L2-norm k, the in-chunk
   cumulative log decay G, the WY matrix T = (I + strict_lower(beta k k^T * exp(G_i - G_j)))^-1 by
   recursive 2 x 2 block inversion (2-row blocks elementwise, then 2 -> 4 -> ... -> 64), and
   w = T (beta k exp(G)) [BT, K], u = T (beta v) [BT, V] written to scratch, with the row scale of k
   ks = exp(G_last - G) / |k| and the chunk decay exp(G_last) per row [BT]. For the fused path also the
   in-chunk attention att = causal(q k^T exp(G_i - G_j)) / (|q| |k| sqrt(K)) [BT, BT] and the row scale
   qs = exp(G) / (|q| sqrt(K)).
Fused path (default):
2. `_state_output_kernel`, grid (V / BV, Hv), sequential over chunks with the state tile S [K, BV] in
   registers: v_new = u - w S, o = qs (q S) + att v_new, S <- S exp(G_last) + (k ks)^T v_new. The state is
   read once and written once; no per-chunk state or v_new goes through memory.
Split path (`path="split"`, kept for A/B timing and its more precise options):
2. `_state_kernel`, grid (V / BV, Hv), sequential: stores S (the state at the chunk start) into
   h [Hv, NT, K, V], v_new (over u where their dtypes agree), and updates S as above.
3. `_output_kernel`, grid (NT, Hv, V / BVO), fully parallel: o = (q exp(G)) h + causal(q k^T exp(G_i - G_j)) v_new.
q and k enter the dots as given (no norm, no rounding of a decayed copy); their norms scale the products.
Dots on float32 inputs use IEEE float32. On 16-bit inputs the dots take their 16-bit operands (k, q, w, att,
h) as given, straight from memory into shared memory, and a float32 operand either as hi + lo 16-bit parts
(`_dot_f32_x16`: two exact-product dots, about 16 mantissa bits, where TF32 would keep 11 and stage both
operands through registers) or rounded to 16 bits, as `Precision16` says. The WY inverse keeps TF32 (`PREC`).
The cumulative decays G are summed and differenced in float64 (`_decay`): in float32, G_i - G_j loses |G| ulps
and held the fp32 state error at 1e-5 where the last chunk is nearly full (T = 63, 127 on the H100).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..launch import INTERPRETED, dense, launcher
from .triton_decode import check_heads

CHUNK = 64  # `_unit_lower_inverse` is written for 64-row chunks
PATHS = ("fused", "split")
# V tile of the sequential pass: V / 32 x Hv = 128 sequential programs at V = 128, Hv = 32 (0.251-0.254 against
# 0.254-0.286 ms for 16 at T = 8192 in three H100 runs; 64 took 0.552)
STATE_BV = 32
# 4 warps: 8 take 0.305 against 0.241 ms for the fused pass at T = 8192 on the H100, though 4 spill where
# the update is split
STATE_WARPS, STATE_STAGES = 4, 3
PREP_WARPS = 4
# V tile of the output pass (each V tile recomputes q k^T): 128 for 16-bit inputs (0.182 against 0.219 ms
# for 64 at T = 8192 on the H100); 64 for float32, whose [K, V] h tile would not fit shared memory at 128
OUTPUT_BV, OUTPUT_BV_FP32 = 128, 64
OUTPUT_WARPS = 4  # 4 of 4 and 8 the fastest on the H100
# K and V tiles of 16-bit inputs are at least 64 wide: with 16- or 32-wide tiles Triton 3.6's sm_90 code for
# the prep kernel's 16-bit dots (A from registers, B under a 32- or 64-byte swizzle) faults or computes wrong
# values on the H100 while the interpreter is right (scripts/device/chunk_tiny_probe.py)
MIN_TILE_16 = 64


@dataclass(frozen=True)
class Precision16:
    """Precision choices on 16-bit inputs (float32 inputs ignore them): which dots keep their float32 operand
    as hi + lo 16-bit parts (two exact-product dots) or round it to the input dtype (one dot), and in which
    dtype the u and v_new scratch is stored. The defaults round S in its dots and v_new in the state update,
    as FLA does, and keep att as hi + lo: through the fused path 0.53 ms at T = 8192 against FLA 0.6.0's
    0.56-0.58, with o and state errors of 2.4e-3 and 1.7e-3 (aligned keys 4.4e-3, 4.7e-3) against FLA's
    3.9e-3 and 2.7e-3 (8.8e-3, 9.1e-3) on the same inputs (H100, T = 1000, NOTES.md session 11). Rounding
    att too (qkv_terms=1) was as fast within noise and raised the o error to 2.9e-3 (5.7e-3);
    `PRECISE_STATE16` holds the state error at 1e-5 for 0.55 ms."""

    ws_split: bool = False  # v_new = u - w S: S as hi + lo (w itself is stored in 16 bits)
    update_split: bool = False  # S += k^T (ks v_new): v_new as hi + lo
    qkv_terms: int = 2  # att v_new (att: causal q k^T): 3 = both split, 2 = att split, v_new rounded, 1 = both rounded
    vnew_16: bool = True  # split path: v_new stored in the input dtype (else float32)
    u_16: bool = False  # u stored in the input dtype (else float32)

    def __post_init__(self) -> None:
        if self.qkv_terms not in (1, 2, 3):
            raise ValueError(f"qkv_terms must be 1, 2 or 3, got {self.qkv_terms}")


# session 10's default: the state update and att split (state error ~1e-5), the split path's best choice
PRECISE_STATE16 = Precision16(update_split=True, qkv_terms=2)
# session 9's choices: every float32 operand as hi + lo, u and v_new in float32
PRECISE16 = Precision16(ws_split=True, update_split=True, vnew_16=False, qkv_terms=3)


@triton.jit
def _l2norm_rows(x):
    return x * tl.rsqrt(tl.sum(x * x, 1) + 1e-6)[:, None]


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
def _dot_x16_f32(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """a (input dtype) @ b (float32), as `_dot_f32_x16` with b split."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, input_precision="ieee")
    hi, lo = _hilo(b, a.dtype)
    return _dot_inputs(a, hi, PREC, UPCAST) + _dot_inputs(a, lo, PREC, UPCAST)


@triton.jit
def _dot_x16_f32x(a, b, SPLIT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """`_dot_x16_f32` where SPLIT, else one 16-bit dot with b rounded to a's dtype (8 mantissa bits)."""
    if SPLIT:
        return _dot_x16_f32(a, b, PREC, UPCAST)
    return _dot_inputs(a, b.to(a.dtype), PREC, UPCAST)


@triton.jit
def _dot_f32_f32(a, b, dt: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b, both float32: hi*hi + hi*lo + lo*hi in the 16-bit dtype dt (lo*lo is below float32's rounding)."""
    ah, al = _hilo(a, dt)
    bh, bl = _hilo(b, dt)
    return _dot_inputs(ah, bh, PREC, UPCAST) + _dot_inputs(ah, bl, PREC, UPCAST) + _dot_inputs(al, bh, PREC, UPCAST)


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
    (I - a)(I + a^2)(I + a^4)... lose every digit by row ~40 in float32 (NOTES.md); block inversion does not."""
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
    PREC: tl.constexpr, STORE_QK: tl.constexpr, ATT_LO: tl.constexpr, NH: tl.constexpr,
    UPCAST: tl.constexpr,
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
    rnorm = tl.rsqrt(tl.sum(kt * kt, 1) + 1e-6)  # [BT], as _l2norm_rows
    g = tl.load(g_ptr + rows * s_gt + i_h * s_gh, mask=live, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + rows * s_bt + i_h * s_bh, mask=live, other=0.0).to(tl.float32)
    G64 = tl.cumsum(g.to(tl.float64), 0)  # [BT]
    tl.store(gc_ptr + i_h * T + rows, G64, mask=live)
    G = G64.to(tl.float32)
    strict = ri[:, None] > ri[None, :]
    decay = _decay(G64, strict)
    if STORE_QK:
        # the fused pass's in-chunk attention causal(q k^T exp(G_i - G_j)) with both norms and the scale
        # applied, and the row scale of its q S product
        qin = tl.load(q_ptr + rows[:, None] * s_qt + hk * s_qh + ck[None, :], mask=km, other=0.0)  # [BT, BK]
        qf = qin.to(tl.float32)
        rq = tl.rsqrt(tl.sum(qf * qf, 1) + 1e-6) * (K ** -0.5)  # [BT], as _l2norm_rows
        qk = _dot_inputs(qin, tl.trans(kin), PREC, UPCAST) * rq[:, None] * rnorm[None, :]
        att = tl.where(ri[:, None] == ri[None, :], qk, qk * decay)  # [BT, BT]: decay is 0 on and above the diagonal
        a_offs = (i_h * T + rows[:, None]) * BT + ri[None, :]  # [BT, BT]
        hi, lo = _hilo(att, a_ptr.dtype.element_ty)
        tl.store(a_ptr + a_offs, hi, mask=live[:, None])
        if ATT_LO:  # the rounding remainder as a second 16-bit matrix, behind the first
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
def _state_kernel(
    k_ptr, w_ptr, ks_ptr, el_ptr, u_ptr, vn_ptr, h_ptr, state_ptr, reset_ptr, T, NT, s_kt, s_kh,
    GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, WS_SPLIT: tl.constexpr, UPDATE_SPLIT: tl.constexpr,
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
    # int64: Hv * NT * K * V passes 2^31 at T ~ 256k (Hv = 32, K = V = 128)
    h_head = h_ptr + i_h.to(tl.int64) * NT * K * V
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
        tl.store(h_head + i_t * K * V + tile, s.to(h_ptr.dtype.element_ty), mask=s_mask)
        w = tl.load(w_ptr + (i_h * T + rows[:, None]) * K + ck[None, :], mask=km, other=0.0)  # [BT, BK]
        kt = tl.load(k_ptr + rows[:, None] * s_kt + hk * s_kh + ck[None, :], mask=km, other=0.0)
        ks = tl.load(ks_ptr + i_h * T + rows, mask=live, other=0.0)  # [BT]: exp(G_last - G) / |k|
        u_offs = (i_h * T + rows[:, None]) * V + cv[None, :]  # [BT, BV]
        u = tl.load(u_ptr + u_offs, mask=vm, other=0.0).to(tl.float32)
        v_new = u - _dot_x16_f32x(w, s, WS_SPLIT, PREC, UPCAST)  # [BT, BV]
        # v_new may replace u: each element of u is read by this program only, just above
        tl.store(vn_ptr + u_offs, v_new.to(vn_ptr.dtype.element_ty), mask=vm)
        # (k ks)^T v_new as k^T (ks v_new): the row scale on the [BT, BV] side, k (an input) exact in the dot
        s = s * tl.max(el, 0) + _dot_x16_f32x(tl.trans(kt), v_new * ks[:, None], UPDATE_SPLIT, PREC, UPCAST)
    tl.store(state_ptr + i_h * K * V + tile, s, mask=s_mask)


@triton.jit(do_not_specialize=["T", "NT"])
def _state_output_kernel(
    q_ptr, k_ptr, w_ptr, ks_ptr, el_ptr, u_ptr, a_ptr, qs_ptr, o_ptr, state_ptr, reset_ptr, T, NT,
    s_qt, s_qh, s_kt, s_kh, s_ot, s_oh,
    GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, WS_SPLIT: tl.constexpr, UPDATE_SPLIT: tl.constexpr,
    QKV_TERMS: tl.constexpr, NH: tl.constexpr,
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
    # exp(G_last) loaded one chunk ahead, as in `_state_kernel`
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
        # q S and w S both take S rounded to 16 bits on 16-bit inputs (w S: unless WS_SPLIT)
        q_s = _dot_x16_f32x(qt, s, False, PREC, UPCAST)  # [BT, BV]
        v_new = u - _dot_x16_f32x(w, s, WS_SPLIT, PREC, UPCAST)  # [BT, BV]
        if qt.dtype == tl.float32:
            qkv = tl.dot(att, v_new, input_precision=PREC)
        else:
            vh, vl = _hilo(v_new, qt.dtype)
            qkv = _dot_inputs(att, vh, PREC, UPCAST)  # [BT, BV]
            if QKV_TERMS >= 2:  # att's rounding remainder, stored behind it
                att_lo = tl.load(a_ptr + NH * T * BT + a_offs, mask=live[:, None], other=0.0)
                qkv += _dot_inputs(att_lo, vh, PREC, UPCAST)
            if QKV_TERMS == 3:
                qkv += _dot_inputs(att, vl, PREC, UPCAST)
        o = q_s * qs[:, None] + qkv
        tl.store(o_ptr + rows[:, None] * s_ot + i_h * s_oh + cv[None, :], o.to(o_ptr.dtype.element_ty), mask=vm)
        s = s * tl.max(el, 0) + _dot_x16_f32x(tl.trans(kt), v_new * ks[:, None], UPDATE_SPLIT, PREC, UPCAST)
    tl.store(state_ptr + i_h * K * V + tile, s, mask=s_mask)


@triton.jit(do_not_specialize=["T", "NT"])
def _output_kernel(
    q_ptr, k_ptr, vn_ptr, gc_ptr, h_ptr, o_ptr, T, NT,
    s_qt, s_qh, s_kt, s_kh, s_ot, s_oh,
    GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, QKV_TERMS: tl.constexpr,
):
    i_t = tl.program_id(0)
    i_h = tl.program_id(1)
    i_v = tl.program_id(2)
    hk = i_h // GROUP
    ri = tl.arange(0, BT)
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    kin, vin = ck < K, cv < V
    rows = i_t * BT + ri
    live = rows < T
    km = live[:, None] & kin[None, :]
    vm = live[:, None] & vin[None, :]
    # q and k enter the dots as given (16-bit dots multiply them exactly); norms and decay scale the products
    qt = tl.load(q_ptr + rows[:, None] * s_qt + hk * s_qh + ck[None, :], mask=km, other=0.0)  # [BT, BK]
    kt = tl.load(k_ptr + rows[:, None] * s_kt + hk * s_kh + ck[None, :], mask=km, other=0.0)
    qf, kf = qt.to(tl.float32), kt.to(tl.float32)
    rq = tl.rsqrt(tl.sum(qf * qf, 1) + 1e-6) * (K ** -0.5)  # [BT], as _l2norm_rows
    rk = tl.rsqrt(tl.sum(kf * kf, 1) + 1e-6)
    g_last64 = tl.load(gc_ptr + i_h * T + tl.minimum(i_t * BT + BT, T) - 1)
    # rows past T carry g_last (as in the prep kernel), so exp(G_i - G_j) never overflows
    G64 = tl.where(live, tl.load(gc_ptr + i_h * T + rows, mask=live, other=0.0), g_last64)
    G = G64.to(tl.float32)
    h_offs = (i_h.to(tl.int64) * NT + i_t) * K * V + ck[:, None] * V + cv[None, :]  # [BK, BV]
    h = tl.load(h_ptr + h_offs, mask=kin[:, None] & vin[None, :], other=0.0).to(q_ptr.dtype.element_ty)
    v_new = tl.load(vn_ptr + (i_h * T + rows[:, None]) * V + cv[None, :], mask=vm, other=0.0)  # [BT, BV]
    causal = ri[:, None] >= ri[None, :]
    qk = _dot_inputs(qt, tl.trans(kt), PREC, UPCAST) * rq[:, None] * rk[None, :]  # [BT, BT]
    qk = qk * _decay(G64, causal)
    if qt.dtype == tl.float32:
        qkv = tl.dot(qk, v_new, input_precision=PREC)
    elif QKV_TERMS == 3:
        qkv = _dot_f32_f32(qk, v_new.to(tl.float32), qt.dtype, PREC, UPCAST)
    elif QKV_TERMS == 2:
        qkv = _dot_f32_x16(qk, v_new.to(qt.dtype), PREC, UPCAST)
    else:
        qkv = _dot_inputs(qk.to(qt.dtype), v_new.to(qt.dtype), PREC, UPCAST)
    o = _dot_inputs(qt, h, PREC, UPCAST) * (rq * tl.exp(G))[:, None] + qkv
    tl.store(o_ptr + rows[:, None] * s_ot + i_h * s_oh + cv[None, :], o.to(o_ptr.dtype.element_ty), mask=vm)


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    reset: torch.Tensor,
    block_v: int = 0,
    out: torch.Tensor | None = None,
    path: str = "fused",
    precision: Precision16 = Precision16(),
) -> torch.Tensor:
    """Same contract as `reference.chunk_gated_delta_rule`; `state` must be contiguous. `path`: "fused"
    (prep, then one sequential state + output pass) or "split" (prep, state pass, parallel output pass).
    `block_v` is the V tile of the sequential pass."""
    check_heads(q, k, v, state)
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    fused = path == "fused"
    T, Hk, K = q.shape[1], q.shape[2], q.shape[3]
    Hv, V = v.shape[2], v.shape[3]
    q, k, v, g, beta = dense(q, k, v, g, beta)
    prec = "ieee" if v.dtype == torch.float32 else "tf32"
    scratch = v.dtype
    BT = CHUNK
    NT = (T + BT - 1) // BT
    w = torch.empty((Hv, T, K), dtype=scratch, device=v.device)
    # u in the dtype `precision` asks for (float32 inputs: float32)
    u = torch.empty((Hv, T, V), dtype=scratch if precision.u_16 else torch.float32, device=v.device)
    gc = torch.empty((Hv, T), dtype=torch.float64, device=v.device)
    # the row scale ks of k, each row's chunk decay exp(G_last), and (fused) the row scale of q S
    ks, el, qs = (torch.empty((Hv, T), dtype=torch.float32, device=v.device) for _ in range(3))
    # fused: causal(q k^T) in the input dtype, with its rounding remainder behind it where qkv_terms > 1;
    # split: gc, an unused placeholder
    att_lo = fused and v.dtype != torch.float32 and precision.qkv_terms > 1
    att = torch.empty((1 + att_lo, Hv, T, BT), dtype=scratch, device=v.device) if fused else gc
    o = torch.empty((1, T, Hv, V), dtype=v.dtype, device=v.device) if out is None else out
    floor = 16 if v.dtype == torch.float32 else MIN_TILE_16
    BK = max(floor, triton.next_power_of_2(K))
    PV = max(floor, triton.next_power_of_2(V))
    group = Hv // Hk
    launcher(_prep_kernel)[(NT, Hv)](
        q, k, v, g, beta, w, u, gc, ks, el, att, qs, T,
        q.stride(1), q.stride(2), k.stride(1), k.stride(2), v.stride(1), v.stride(2), g.stride(1), g.stride(2),
        beta.stride(1), beta.stride(2),
        GROUP=group, K=K, V=V, BT=BT, BK=BK, BV=min(PV, 64), PREC=prec, STORE_QK=fused, ATT_LO=att_lo, NH=Hv,
        UPCAST=INTERPRETED, num_warps=PREP_WARPS,
    )
    fp32_wide = v.dtype == torch.float32 and BK >= 128
    if fused:
        # at BK = 64 the fused pass's 16-bit dots with a 32-wide B tile compute wrong values on the H100 under
        # Triton 3.6 (K 8 and 16, by pipeline depth; scripts/device/fused_block_v_probe.py); 64 wide are right
        BV = block_v or min(PV, STATE_BV if BK >= 128 else 64)
        # fp32 inputs at K = 128: q, k, w tiles of 32 KB, att 16 KB per pipeline stage; two overflow 227 KB
        launcher(_state_output_kernel)[((V + BV - 1) // BV, Hv)](
            q, k, w, ks, el, u, att, qs, o, state, reset, T, NT,
            q.stride(1), q.stride(2), k.stride(1), k.stride(2), o.stride(1), o.stride(2),
            GROUP=group, K=K, V=V, BT=BT, BK=BK, BV=BV, PREC=prec, UPCAST=INTERPRETED,
            WS_SPLIT=precision.ws_split, UPDATE_SPLIT=precision.update_split, QKV_TERMS=precision.qkv_terms,
            NH=Hv, num_warps=STATE_WARPS, num_stages=1 if fp32_wide else STATE_STAGES,
        )
        return o
    h = torch.empty((Hv, NT, K, V), dtype=scratch, device=v.device)
    # v_new over u where their dtypes agree: each element of u is read by its own state-pass program only
    vn_dtype = scratch if precision.vnew_16 else torch.float32
    vn = u if vn_dtype == u.dtype else torch.empty((Hv, T, V), dtype=vn_dtype, device=v.device)
    BV = block_v or min(PV, STATE_BV)
    # fp32 w/k tiles at K=128 take ~64 KB per pipeline stage
    launcher(_state_kernel)[((V + BV - 1) // BV, Hv)](
        k, w, ks, el, u, vn, h, state, reset, T, NT, k.stride(1), k.stride(2),
        GROUP=group, K=K, V=V, BT=BT, BK=BK, BV=BV, PREC=prec, UPCAST=INTERPRETED,
        WS_SPLIT=precision.ws_split, UPDATE_SPLIT=precision.update_split,
        num_warps=STATE_WARPS, num_stages=2 if fp32_wide else STATE_STAGES,
    )
    BVO = min(PV, OUTPUT_BV_FP32 if v.dtype == torch.float32 else OUTPUT_BV)
    launcher(_output_kernel)[(NT, Hv, (V + BVO - 1) // BVO)](
        q, k, vn, gc, h, o, T, NT,
        q.stride(1), q.stride(2), k.stride(1), k.stride(2), o.stride(1), o.stride(2),
        GROUP=group, K=K, V=V, BT=BT, BK=BK, BV=BVO, PREC=prec, UPCAST=INTERPRETED,
        QKV_TERMS=precision.qkv_terms, num_warps=OUTPUT_WARPS,
    )
    return o
