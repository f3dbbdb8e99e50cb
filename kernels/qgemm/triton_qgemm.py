"""Quantized prefill projection y = x @ dequantize(qweight, scales)^T (`reference.gemm`) as Triton kernels, one
per range of M (`tiles.config`); a call runs the one whose range holds M, through `kernels/gemm`'s grids.

A program loads a weight tile as stored (int8 [BN, BK], or int4 bytes [BN, BK / 2]) and its scales, dequantizes
it in registers to exactly the reference's rounded values (q s in float32, rounded once to x's dtype), and
feeds it as the first operand of the dot: acc [BN, BM] += w' [BN, BK] @ x [BM, BK]^T, float32 accumulation,
transposed once at the store. The weight is the register operand of the tensor-core dot and x the one read
from shared memory, and a small M is the dot's narrow side (DESIGN.md).

- `_wide_kernel` (persistent parts, compute-bound M): `gemm.triton_gemm._wide_kernel`'s tile walk.
- `_stream_kernel` (stream parts, weight-bandwidth-bound M): grid (N / BN, SPLIT_K), a program streams its BN
  packed weight rows over its K slice once per BM rows of x; split-K partials summed by gemm's `_reduce_kernel`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..gemm.tiles import PERSISTENT, GemmConfig, Part
from ..gemm.triton_gemm import REDUCE_BM, REDUCE_BN, _dot, _reduce_kernel, _store, _tile_coords, _workspace, grids, \
    programs
from ..launch import INTERPRETED, dense, launcher
from ..qgemv.reference import weight_shape
from ..qgemv.triton_qgemv import MAGIC, NIBBLE, ONE
from .tiles import config

DTYPES = (torch.bfloat16, torch.float32)
INT8_BIAS = tl.constexpr(8388736.0)  # float32 2^23 + 128: MAGIC + 128 + q read as a float, minus this, is q


def check_args(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int, group: int) -> tuple[int, int]:
    """-> (N, K); one clear line for a bad call (the scheme's checks are `qgemv.reference.weight_shape`'s)."""
    N, K = weight_shape(qweight, scales, bits, group)
    if group & (group - 1) or group < 2:
        raise ValueError(f"the Triton qgemm kernels take power-of-two group sizes >= 2, got {group}")
    if x.dim() != 2 or x.shape[1] != K:
        raise ValueError(f"qgemm wants x [M, {K}] for weights [{N}, {K}], got x {tuple(x.shape)}")
    if x.dtype != scales.dtype or x.dtype not in DTYPES:
        raise ValueError(f"qgemm wants x and scales both bfloat16 or both float32, got {x.dtype} and {scales.dtype}")
    if qweight.numel() >= 2**31:
        raise ValueError(f"qgemm weights of {qweight.numel()} bytes need 64-bit offsets (at most 2**31 - 1)")
    return N, K


@triton.jit
def _scale_tile(s_ptr, rows, k0, KG: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr,
                C: tl.constexpr):
    """The scales of rows [BN] at columns k0 .. k0 + BK, spread over the step's C stored units: [BN, C]. A step
    inside one group has one scale a row; a step of BK / GROUP groups one a row and group (zero past K)."""
    if GROUP >= BK:
        s = tl.broadcast_to(tl.load(s_ptr + rows * KG + k0 // GROUP)[:, None], (BN, C))
    else:
        BG: tl.constexpr = BK // GROUP
        g = k0 // GROUP + tl.arange(0, BG)
        s3 = tl.load(s_ptr + rows[:, None] * KG + g[None, :], mask=(g < KG)[None, :], other=0.0)  # [BN, BG]
        s = tl.reshape(tl.broadcast_to(s3[:, :, None], (BN, BG, C // BG)), (BN, C))
    return s


@triton.jit
def _dequant(q, s, BITS: tl.constexpr, BN: tl.constexpr, C: tl.constexpr):
    """Stored q [BN, C] (int8, or uint8 bytes of two int4) and scales [BN, C] -> w' [BN, C * 8 / BITS] = q s
    rounded once to the scales' dtype. Integers become floats without I2F (DESIGN.md)."""
    b = q.to(tl.int32)  # int8 sign-extends, uint8 zero-extends
    sf = s.to(tl.float32)
    if BITS == 8:
        w = (((b + (MAGIC + 128)).to(tl.float32, bitcast=True) - INT8_BIAS) * sf).to(s.dtype)
    else:
        # a nibble u into 1.0's mantissa is 1 + u / 16; (that - 1.5) 16 = u - 8 = q; column 2j low, 2j + 1 high
        s16 = 16.0 * sf
        lo = ((((b << 19) & NIBBLE) | ONE).to(tl.float32, bitcast=True) - 1.5) * s16
        hi = ((((b << 15) & NIBBLE) | ONE).to(tl.float32, bitcast=True) - 1.5) * s16
        w = tl.reshape(tl.join(lo.to(s.dtype), hi.to(s.dtype)), (BN, 2 * C))
    return w


@triton.jit
def _weight_tile(w_ptr, s_ptr, rows, k0, K: tl.constexpr, KG: tl.constexpr, GROUP: tl.constexpr,
                 BITS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Rows [BN] (in range) of the weights at columns k0 .. k0 + BK, dequantized: [BN, BK] (zero past K)."""
    C: tl.constexpr = BK * BITS // 8  # stored units (bytes) a row and step
    KB: tl.constexpr = K * BITS // 8
    c = k0 * BITS // 8 + tl.arange(0, C)
    ptrs = w_ptr + rows[:, None] * KB + c[None, :]  # [BN, C]
    if K % BK == 0:
        q = tl.load(ptrs)
    else:
        q = tl.load(ptrs, mask=(c < KB)[None, :], other=0)
    return _dequant(q, _scale_tile(s_ptr, rows, k0, KG, BN, BK, GROUP, C), BITS, BN, C)


@triton.jit
def _x_tile(a_ptrs, k0, row_ok, K: tl.constexpr, BK: tl.constexpr, MASK_ROWS: tl.constexpr):
    """x [BM, BK] at columns k0 .. k0 + BK; rows past M masked when MASK_ROWS, columns past K zero."""
    ck = tl.arange(0, BK)
    if K % BK == 0:
        if MASK_ROWS:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
        else:
            a = tl.load(a_ptrs)
    else:
        a = tl.load(a_ptrs, mask=row_ok[:, None] & (ck < K - k0)[None, :], other=0.0)
    return a


@triton.jit(do_not_specialize=["M"])  # one binary for every chunk length
def _wide_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr, M,
    N: tl.constexpr, K: tl.constexpr, KG: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, FLATTEN: tl.constexpr,
    UPCAST: tl.constexpr,
):
    grid_m = tl.cdiv(M, BM)
    GRID_N: tl.constexpr = (N + BN - 1) // BN
    ck = tl.arange(0, BK)
    for tile in tl.range(tl.program_id(0), grid_m * GRID_N, tl.num_programs(0), flatten=FLATTEN):
        pid_m, pid_n = _tile_coords(tile, grid_m, GRID_N, GROUP_M)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        # rows past M and N read rows in range instead (no load masks); their results are never stored
        a_ptrs = x_ptr + (rm % M).to(tl.int64)[:, None] * K + ck[None, :]  # [BM, BK]
        acc = tl.zeros((BN, BM), dtype=tl.float32)
        for k0 in range(0, K, BK):
            a = _x_tile(a_ptrs, k0, rm < M, K, BK, False)
            w = _weight_tile(w_ptr, s_ptr, rn % N, k0, K, KG, GROUP, BITS, BN, BK)
            acc = _dot(acc, w, a, UPCAST)  # [BN, BM]
            a_ptrs += BK
        _store(y_ptr, tl.trans(acc), rm, rn, M, N)


@triton.jit(do_not_specialize=["M"])
def _stream_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr, ws_ptr, M,
    N: tl.constexpr, K: tl.constexpr, KG: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr, UPCAST: tl.constexpr,
):
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    ck = tl.arange(0, BK)
    if SPLIT_K == 1:
        k_lo = 0
        k_hi = K
    else:  # slices of whole K steps; the last may be shorter, or empty (it then writes zeros)
        KS: tl.constexpr = ((K + BK - 1) // BK + SPLIT_K - 1) // SPLIT_K * BK
        k_lo = tl.program_id(1) * KS
        k_hi = tl.minimum(k_lo + KS, K)
    for m0 in range(0, M, BM):
        rm = m0 + tl.arange(0, BM)
        a_ptrs = x_ptr + rm.to(tl.int64)[:, None] * K + (k_lo + ck)[None, :]  # [BM, BK]
        acc = tl.zeros((BN, BM), dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BK):
            a = _x_tile(a_ptrs, k0, rm < M, K, BK, True)  # rows past M masked: no traffic
            w = _weight_tile(w_ptr, s_ptr, rn % N, k0, K, KG, GROUP, BITS, BN, BK)
            acc = _dot(acc, w, a, UPCAST)  # [BN, BM]
            a_ptrs += BK
        if SPLIT_K == 1:
            _store(y_ptr, tl.trans(acc), rm, rn, M, N)
        else:  # partials [M, SPLIT_K, N] in float32: row rm's slices sit side by side
            _store(ws_ptr + tl.program_id(1) * N, tl.trans(acc), rm * SPLIT_K, rn, M * SPLIT_K, N)


def _launch(part: Part, grid: tuple, reduce: tuple | None, x: torch.Tensor, qweight: torch.Tensor,
            scales: torch.Tensor, bits: int, group: int, y: torch.Tensor) -> None:
    (M, K), N, t = x.shape, scales.shape[0], part.tiles
    args = {"N": N, "K": K, "KG": K // group, "GROUP": group, "BITS": bits, "BM": t.block_m, "BN": t.block_n,
            "BK": t.block_k, "UPCAST": INTERPRETED, "num_warps": t.warps, "num_stages": t.stages}
    if part.kernel == PERSISTENT:
        launcher(_wide_kernel)[grid](x, qweight, scales, y, M, GROUP_M=part.group_m, FLATTEN=part.flatten, **args)
        return
    ws = _workspace(x, N, part)
    launcher(_stream_kernel)[grid](x, qweight, scales, y, ws, M, SPLIT_K=part.split_k, **args)
    if reduce is not None:
        launcher(_reduce_kernel)[reduce](ws, y, M, N=N, SPLIT_K=part.split_k, BM=REDUCE_BM, BN=REDUCE_BN,
                                         num_warps=4)


def qgemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int, group: int,
          cfg: GemmConfig | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as `reference.gemm` (bf16 or fp32). cfg: `config(N, K, bits, group, dtype)` unless given
    (tests, sweeps); out [M, N], if given, receives y."""
    N, K = check_args(x, qweight, scales, bits, group)
    x, qweight, scales = dense(x, qweight, scales)
    M = x.shape[0]
    cfg = cfg or config(N, K, bits, group, x.dtype)
    y = x.new_empty((M, N)) if out is None else out
    for part, (grid, reduce) in zip(cfg.parts, grids(M, N, cfg, programs(x.device))):
        _launch(part, grid, reduce, x, qweight, scales, bits, group, y)
    return y
