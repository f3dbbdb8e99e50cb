"""The "chunks" layout of gdn::qgemv / gdn::norm_qgemv: a candidate to the group-tile kernels of triton_qgemv.py
and triton_norm_qgemv.py, selected by `QGemvConfig(layout="chunks")`.

The packed weights are read as int32 words in [BC, BN, 4] tiles: BC chunks of 16 bytes (32 int4 or 16 int8
columns) of BN rows, chunks outermost, so Triton spreads the threads over the chunks and keeps a thread's BN / 2
(4 warps) rows in its registers, where the activations of its chunk are shared by those rows. A chunk lies in one
group (group >= one chunk's columns), so its scale is one load per row.

Each word yields its values by one shift and one LOP3 (mask and OR in one, because the float bits `one` are a
kernel argument, not an immediate): the value's bits at the top of float32's mantissa, 1 + u / 16 (int4, u = q + 8)
or 1 + b / 256 (int8, b = q + 128 after one XOR per word), so sum q a = M (sum f a - 1.5 sum a) with M = 16 or 256.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..gemv.triton_gemv import _activation
from ..gemv.triton_norm_gemv import _residual, _store_norm
from ..pdl import grid_release, grid_wait

ONE_BITS = 0x3F800000  # float32 1.0: passed as the kernel argument `one`
FLIP = tl.constexpr(-0x7F7F7F80)  # int32 0x80808080: int8 two's complement bytes to offset binary
CHUNK_BYTES = 16


@triton.jit
def _top(w, SHIFT: tl.constexpr, MASK: tl.constexpr, one):
    """float32 1 + v / 2^width: the field that MASK selects after a left shift by SHIFT, OR-ed into 1.0."""
    return (((w << SHIFT) & MASK) | one).to(tl.float32, bitcast=True)


@triton.jit
def _value(w, hi, I: tl.constexpr, BITS: tl.constexpr, one):
    """Value I of each word (column I of the word's 8 int4 / 4 int8 columns) as 1 + u / 16 or 1 + b / 256."""
    if BITS == 4:
        if I < 4:
            f = _top(w, 19 - 4 * I, 0xF << 19, one)
        else:
            f = _top(hi, 19 - 4 * (I - 4), 0xF << 19, one)
    else:
        if I < 2:
            f = _top(w, 15 - 8 * I, 0xFF << 15, one)
        else:
            f = _top(hi, 15 - 8 * (I - 2), 0xFF << 15, one)
    return f


@triton.jit
def _load_chunks(w_ptr, s_ptr, s_wn, s_sn, rows, row_ok, c0,
                 KC: tl.constexpr, CG: tl.constexpr, BC: tl.constexpr, BITS: tl.constexpr):
    """-> words [BC, BN, 4] (int8: flipped to offset binary; zero past N and K) and scales [BC, BN] float32 of
    BC chunks from chunk c0. w_ptr: the packed weights as int32, s_wn their row stride in words."""
    c = c0 + tl.arange(0, BC)
    ok = (c < KC)[:, None] & row_ok[None, :]  # [BC, BN]
    e = tl.arange(0, 4)
    w = tl.load(w_ptr + c[:, None, None] * 4 + rows[None, :, None] * s_wn + e[None, None, :], mask=ok[:, :, None],
                other=0)
    if BITS == 8:
        w = w ^ FLIP
    s = tl.load(s_ptr + rows[None, :] * s_sn + (c // CG)[:, None], mask=ok, other=0.0)
    return w, s.to(tl.float32)


@triton.jit
def _chunk_cols(c0, BC: tl.constexpr, BITS: tl.constexpr):
    """[BC, 4]: the first column of each word of BC chunks from c0; value I of a word is column + I."""
    VALS: tl.constexpr = 32 // BITS
    c = c0 + tl.arange(0, BC)
    return c[:, None] * (4 * VALS) + tl.arange(0, 4)[None, :] * VALS


@triton.jit
def _accumulate(acc, asum, w, hi, a, I: tl.constexpr, BITS: tl.constexpr, one):
    """acc [BC, BN, 4] += value I of each word times its activation a [BC, 4]; asum [BC, 4] += a."""
    return acc + _value(w, hi, I, BITS, one) * a[:, None, :], asum + a


@triton.jit
def _finish(acc, asum, s, BITS: tl.constexpr):
    """-> [BN]: sum over the chunks of M (sum f a - 1.5 sum a) s (M = 16 int4, 256 int8)."""
    M: tl.constexpr = 16.0 if BITS == 4 else 256.0
    p = tl.sum(acc, 2) - 1.5 * tl.sum(asum, 1)[:, None]  # [BC, BN]
    return tl.sum(p * (M * s), 0)


@triton.jit
def _step(x_ptr, w, s, c0, K: tl.constexpr, SILU_MUL: tl.constexpr, BC: tl.constexpr, BN: tl.constexpr,
          BITS: tl.constexpr, one):
    """One step of qgemv over BC chunks: -> [BN] partial dots."""
    VALS: tl.constexpr = 32 // BITS
    cols = _chunk_cols(c0, BC, BITS)
    hi = w >> 16
    acc = tl.zeros([BC, BN, 4], dtype=tl.float32)
    asum = tl.zeros([BC, 4], dtype=tl.float32)
    for i in tl.static_range(VALS):
        a = _activation(x_ptr, cols + i, cols + i < K, K, SILU_MUL)  # [BC, 4]
        acc, asum = _accumulate(acc, asum, w, hi, a, i, BITS, one)
    return _finish(acc, asum, s, BITS)


@triton.jit
def _qgemv_chunks_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr, s_wn, s_sn, one,
    N: tl.constexpr, K: tl.constexpr, KC: tl.constexpr, CG: tl.constexpr, BITS: tl.constexpr,
    SILU_MUL: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, STAGES: tl.constexpr,
    PDL: tl.constexpr,
    GDC: tl.constexpr,
):
    grid_release(GDC)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    if PDL:
        w, s = _load_chunks(w_ptr, s_ptr, s_wn, s_sn, rows, row_ok, 0, KC, CG, BC, BITS)
        grid_wait(GDC)  # x is the previous kernel's output
        y = _step(x_ptr, w, s, 0, K, SILU_MUL, BC, BN, BITS, one)
    else:
        y = tl.zeros([BN], dtype=tl.float32)
        for c0 in tl.range(0, KC, BC, num_stages=STAGES):
            w, s = _load_chunks(w_ptr, s_ptr, s_wn, s_sn, rows, row_ok, c0, KC, CG, BC, BITS)
            y += _step(x_ptr, w, s, c0, K, SILU_MUL, BC, BN, BITS, one)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _norm_step(x_ptr, d_ptr, g_ptr, w, s, c0, K: tl.constexpr, HAS_DELTA: tl.constexpr, BC: tl.constexpr,
               BN: tl.constexpr, BITS: tl.constexpr, one):
    """One step of norm_qgemv over BC chunks: -> ([BN] partial dots of r (1 + g), the step's sum of r^2)."""
    VALS: tl.constexpr = 32 // BITS
    cols = _chunk_cols(c0, BC, BITS)
    hi = w >> 16
    acc = tl.zeros([BC, BN, 4], dtype=tl.float32)
    asum = tl.zeros([BC, 4], dtype=tl.float32)
    squares = tl.zeros([BC, 4], dtype=tl.float32)
    for i in tl.static_range(VALS):
        ok = cols + i < K
        r = _residual(x_ptr, d_ptr, cols + i, ok, HAS_DELTA)  # [BC, 4]
        g = tl.load(g_ptr + cols + i, mask=ok, other=0.0).to(tl.float32)
        squares += r * r
        acc, asum = _accumulate(acc, asum, w, hi, r * (1.0 + g), i, BITS, one)
    return _finish(acc, asum, s, BITS), tl.sum(tl.sum(squares, 1), 0)


@triton.jit
def _norm_qgemv_chunks_kernel(
    x_ptr, d_ptr, g_ptr, w_ptr, s_ptr, y_ptr, r_ptr, n_ptr, s_wn, s_sn, one,
    N: tl.constexpr, K: tl.constexpr, KC: tl.constexpr, CG: tl.constexpr, BITS: tl.constexpr,
    EPS: tl.constexpr, HAS_DELTA: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, STAGES: tl.constexpr,
    SLICE: tl.constexpr, SLICE_P2: tl.constexpr,
    PDL: tl.constexpr,
    GDC: tl.constexpr,
):
    grid_release(GDC)
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    row_ok = rows < N
    if PDL:
        w, s = _load_chunks(w_ptr, s_ptr, s_wn, s_sn, rows, row_ok, 0, KC, CG, BC, BITS)
        grid_wait(GDC)  # x and delta are earlier kernels' outputs
        y, squares = _norm_step(x_ptr, d_ptr, g_ptr, w, s, 0, K, HAS_DELTA, BC, BN, BITS, one)
    else:
        y = tl.zeros([BN], dtype=tl.float32)
        squares = 0.0
        for c0 in tl.range(0, KC, BC, num_stages=STAGES):
            w, s = _load_chunks(w_ptr, s_ptr, s_wn, s_sn, rows, row_ok, c0, KC, CG, BC, BITS)
            part, sq = _norm_step(x_ptr, d_ptr, g_ptr, w, s, c0, K, HAS_DELTA, BC, BN, BITS, one)
            y += part
            squares += sq
    inv_rms = tl.rsqrt(squares / K + EPS)
    tl.store(y_ptr + rows, (y * inv_rms).to(y_ptr.dtype.element_ty), mask=row_ok)
    # this program's SLICE columns of r and n, read again (the chunk layout holds them strided)
    cols = pid * SLICE + tl.arange(0, SLICE_P2)
    col_ok = (cols < K) & (cols < (pid + 1) * SLICE)
    r = _residual(x_ptr, d_ptr, cols, col_ok, HAS_DELTA)
    g = tl.load(g_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    _store_norm(r_ptr, n_ptr, r, g, inv_rms, cols, col_ok)


def chunk_shape(K: int, bits: int, group: int) -> tuple[int, int]:
    """-> (KC: chunks per row, CG: chunks per group); ValueError when a group is smaller than a chunk."""
    cols = CHUNK_BYTES * 8 // bits
    if group < cols:
        raise ValueError(f"the chunks layout needs int{bits} groups of at least {cols} columns, got {group}")
    return K // cols, group // cols


def block_chunks(pdl: bool, block_k: int, K: int, bits: int) -> int:
    """BC: all (power-of-two padded) chunks in the PDL form, block_k columns' worth in the loop form."""
    cols = CHUNK_BYTES * 8 // bits
    whole = triton.next_power_of_2(K // cols)
    return whole if pdl else min(max(1, block_k // cols), whole)
