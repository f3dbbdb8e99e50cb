"""Triton helpers that turn packed int8 / int4 weights (kernels/qgemv/reference.py's layout) into arithmetic:
per-group dots for the one-token kernels, dequantized tiles for the tensor-core GEMMs of prefill."""

from __future__ import annotations

import triton
import triton.language as tl

from ..qgemv.triton_qgemv import MAGIC, NIBBLE, ONE


@triton.jit
def activation_cols(g0, BG: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr):
    """Columns of the BG groups from group g0 in a packed tile's order: [BG, GROUP] (int8), or [BG, GROUP / 2, 2]
    (int4: byte j of a group holds columns 2j and 2j + 1)."""
    g = g0 + tl.arange(0, BG)
    if BITS == 4:
        j = tl.arange(0, GROUP // 2)
        t = tl.arange(0, 2)
        cols = g[:, None, None] * GROUP + 2 * j[None, :, None] + t[None, None, :]
    else:
        cols = g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    return cols


@triton.jit
def group_dot(q, s, a, BITS: tl.constexpr):
    """-> [..., BG] float32: per group, (sum_k q_k a_k) * s. q [..., BG, GB] the raw bytes, s [..., BG] the
    scales, a float32 activations broadcastable to `activation_cols`' shape behind q's leading dims.
    No I2F (quarter rate on sm_90): kernels/qgemv/DESIGN.md's exponent tricks."""
    b = q.to(tl.int32)  # int4: uint8 zero-extends; int8: sign-extends
    if BITS == 4:
        # nibble u as 1 + u / 16; q = u - 8, so sum q a = 16 (sum (1 + u / 16) a - 1.5 sum a)
        lo = (((b << 19) & NIBBLE) | ONE).to(tl.float32, bitcast=True)
        hi = (((b << 15) & NIBBLE) | ONE).to(tl.float32, bitcast=True)
        a_lo, a_hi = tl.split(a)
        p = tl.sum(lo * a_lo + hi * a_hi, -1) - 1.5 * tl.sum(a_lo + a_hi, -1)
        out = p * (16.0 * s.to(tl.float32))
    else:
        w = (b + (MAGIC + 128)).to(tl.float32, bitcast=True) - 8388736.0  # 2^23 + 128
        out = tl.sum(w * a, -1) * s.to(tl.float32)
    return out


@triton.jit
def load_groups(q_ptr, s_ptr, q_rows, s_rows, ok, g0, KG: tl.constexpr, BG: tl.constexpr,
                GROUP: tl.constexpr, BITS: tl.constexpr):
    """-> raw bytes [..., BG, GB] and scales [..., BG] of BG groups from g0 (zero where masked or past KG).
    q_rows / s_rows: each row's element offset [...] (already times its row stride), ok: the rows' mask [...]."""
    GB: tl.constexpr = GROUP * BITS // 8
    g = g0 + tl.arange(0, BG)
    g_ok = tl.expand_dims(ok, -1) & (g < KG)  # [..., BG]
    hb = tl.arange(0, GB)
    q_offs = tl.expand_dims(tl.expand_dims(q_rows, -1) + g * GB, -1) + hb  # [..., BG, GB]
    q = tl.load(q_ptr + q_offs, mask=tl.expand_dims(g_ok, -1), other=0)
    s = tl.load(s_ptr + tl.expand_dims(s_rows, -1) + g, mask=g_ok, other=0.0)
    return q, s


@triton.jit
def dequant_tile(q_ptr, s_ptr, n, n_ok, k0, K: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DTYPE: tl.constexpr):
    """Rows n [BLOCK_N] of a packed weight [N, K] (q_ptr, s_ptr: its first row), columns k0 .. k0 + BLOCK_K,
    dequantized as the reference does (q * s in float32, rounded once to DTYPE; 0 where masked), transposed
    for the dot: [BLOCK_K, BLOCK_N]."""
    KB: tl.constexpr = K * BITS // 8
    KG: tl.constexpr = K // GROUP
    if BITS == 4:
        j = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        ok = n_ok[:, None] & (j < KB)[None, :]
        b = tl.load(q_ptr + n[:, None].to(tl.int64) * KB + j[None, :], mask=ok, other=0x88).to(tl.int32)
        # [BLOCK_N, BLOCK_K / 2, 2] -> [BLOCK_N, BLOCK_K]: column 2j from the low nibble, 2j + 1 the high
        qv = tl.reshape(tl.join((b & 15) - 8, (b >> 4) - 8), [BLOCK_N, BLOCK_K])
    else:
        k = k0 + tl.arange(0, BLOCK_K)
        ok = n_ok[:, None] & (k < K)[None, :]
        qv = tl.load(q_ptr + n[:, None].to(tl.int64) * KB + k[None, :], mask=ok, other=0).to(tl.int32)
    w = qv.to(tl.float32)
    if GROUP >= BLOCK_K:  # a step lies in one group (both powers of two)
        s = tl.load(s_ptr + n.to(tl.int64) * KG + k0 // GROUP, mask=n_ok, other=0.0)
        w = w * s.to(tl.float32)[:, None]
    else:
        NG: tl.constexpr = BLOCK_K // GROUP
        g = k0 // GROUP + tl.arange(0, NG)
        s = tl.load(s_ptr + n[:, None].to(tl.int64) * KG + g[None, :], mask=n_ok[:, None] & (g < KG)[None, :],
                    other=0.0)
        w = tl.reshape(tl.reshape(w, [BLOCK_N, NG, GROUP]) * s.to(tl.float32)[:, :, None], [BLOCK_N, BLOCK_K])
    return tl.trans(w.to(DTYPE))
