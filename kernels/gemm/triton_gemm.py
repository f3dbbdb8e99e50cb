"""Prefill projection y = x @ w^T (`reference.gemm`) as Triton kernels, one per range of M (`tiles.GemmConfig`); a
call runs the one whose range holds M (design and numbers: DESIGN.md).

- `_wide_kernel` (persistent parts, compute-bound M): grid min(#SMs * ctas, tiles); program p walks tiles
  p, p + grid, ... of [BM, BN] outputs in grouped order (GROUP_M row blocks share each weight column block while it
  is in L2), accumulating [BM, BK] x [BK, BN] tensor-core dots in float32 over K.
- `_stream_kernel` (stream parts, weight-bandwidth-bound M): grid (N / BN, SPLIT_K); a program owns BN weight rows
  and one K slice and streams them once per BM block of rows (later blocks read its weights from L2). With
  SPLIT_K > 1 it writes float32 partials [M, SPLIT_K, N] that `_reduce_kernel` sums in slice order.

The grids of the parts outside M's range are empty, computed from the symbolic M (no host-side branch, no guard),
so one exported graph serves every M and AOTInductor skips the empty launches. Tile sizes come from the static
(N, K, dtype) through `config`. Loads go through pointer tiles, not TMA descriptors (DESIGN.md says why).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import INTERPRETED, dense, launcher
from .tiles import FP32, PERSISTENT, GemmConfig, Part, Tiles, config, configs  # noqa: F401  (the public names)

DTYPES = (torch.bfloat16, torch.float32)
INTERPRETER_PROGRAMS = 3  # persistent programs under the interpreter: several tiles each, unevenly
REDUCE_BM, REDUCE_BN = 8, 256  # the split-K sum's tile


def check_args(x: torch.Tensor, w: torch.Tensor) -> None:
    """One clear line for a bad call: x [M, K] and w [N, K] of one dtype (bf16 or fp32), 32-bit weight offsets."""
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"gemm wants x [M, K] and w [N, K], got x {tuple(x.shape)} and w {tuple(w.shape)}")
    if x.dtype != w.dtype or x.dtype not in DTYPES:
        raise ValueError(f"gemm wants x and w both bfloat16 or both float32, got {x.dtype} and {w.dtype}")
    if w.numel() >= 2**31:
        raise ValueError(f"gemm weights of {w.numel()} elements need 64-bit offsets (at most 2**31 - 1)")


@triton.jit
def _tile_coords(tile, grid_m, GRID_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Tile index -> (row block, column block), GROUP_M row blocks at a time down each column block."""
    per_group = GROUP_M * GRID_N
    first_m = (tile // per_group) * GROUP_M
    rows = tl.minimum(grid_m - first_m, GROUP_M)
    return first_m + (tile % per_group) % rows, (tile % per_group) // rows


@triton.jit
def _dot(acc, a, b, UPCAST: tl.constexpr):
    """acc [BM, BN] + a [BM, BK] @ b [BN, BK]^T. float32 operands in IEEE float32 (float32 artifacts are checked
    token-exact); 16-bit ones on the tensor cores. UPCAST (interpreter only) runs 16-bit operands in float32:
    Triton 3.6's interpreter multiplies the raw bits of bf16 operands."""
    if a.dtype == tl.float32 or UPCAST:
        return tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), acc, input_precision="ieee")
    return tl.dot(a, tl.trans(b), acc)


@triton.jit
def _store(y_ptr, acc, rm, rn, M, N: tl.constexpr):
    """acc [BM, BN] into y [M, N] at rows rm, columns rn, rounded to y's dtype."""
    ptrs = y_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :]
    tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=(rm < M)[:, None] & (rn < N)[None, :])


@triton.jit(do_not_specialize=["M"])  # one binary for every chunk length
def _wide_kernel(
    x_ptr, w_ptr, y_ptr, M,
    N: tl.constexpr, K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    GROUP_M: tl.constexpr, FLATTEN: tl.constexpr, UPCAST: tl.constexpr,
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
        b_ptrs = w_ptr + (rn % N)[:, None] * K + ck[None, :]  # [BN, BK]
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            if K % BK == 0:
                a = tl.load(a_ptrs)
                b = tl.load(b_ptrs)
            else:
                kin = ck < K - k0
                a = tl.load(a_ptrs, mask=kin[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=kin[None, :], other=0.0)
            acc = _dot(acc, a, b, UPCAST)
            a_ptrs += BK
            b_ptrs += BK
        _store(y_ptr, acc, rm, rn, M, N)


@triton.jit
def _k_slice(acc, a_ptrs, b_ptrs, row_ok, k_lo, k_hi, K: tl.constexpr, BK: tl.constexpr, UPCAST: tl.constexpr):
    """acc [BM, BN] + the dots of K steps k_lo, k_lo + BK, ... < k_hi; rows of x past M masked (no traffic)."""
    ck = tl.arange(0, BK)
    for k0 in range(k_lo, k_hi, BK):
        if K % BK == 0:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
            b = tl.load(b_ptrs)
        else:
            kin = ck < K - k0
            a = tl.load(a_ptrs, mask=row_ok[:, None] & kin[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=kin[None, :], other=0.0)
        acc = _dot(acc, a, b, UPCAST)
        a_ptrs += BK
        b_ptrs += BK
    return acc


@triton.jit(do_not_specialize=["M"])
def _stream_kernel(
    x_ptr, w_ptr, y_ptr, ws_ptr, M,
    N: tl.constexpr, K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    SPLIT_K: tl.constexpr, UPCAST: tl.constexpr,
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
        b_ptrs = w_ptr + (rn % N)[:, None] * K + (k_lo + ck)[None, :]  # [BN, BK]
        acc = _k_slice(tl.zeros((BM, BN), dtype=tl.float32), a_ptrs, b_ptrs, rm < M, k_lo, k_hi, K, BK, UPCAST)
        if SPLIT_K == 1:
            _store(y_ptr, acc, rm, rn, M, N)
        else:  # partials [M, SPLIT_K, N] in float32: row rm's slices sit side by side
            _store(ws_ptr + tl.program_id(1) * N, acc, rm * SPLIT_K, rn, M * SPLIT_K, N)


@triton.jit(do_not_specialize=["M"])
def _reduce_kernel(ws_ptr, y_ptr, M, N: tl.constexpr, SPLIT_K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """y [M, N] = the sum over s of ws [M, s, N], in order s = 0, 1, ..., rounded once to y's dtype."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    ok = (rm < M)[:, None] & (rn < N)[None, :]
    ptrs = ws_ptr + (rm.to(tl.int64) * SPLIT_K)[:, None] * N + rn[None, :]  # [BM, BN]
    acc = tl.load(ptrs, mask=ok, other=0.0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(ptrs + s * N, mask=ok, other=0.0)
    _store(y_ptr, acc, rm, rn, M, N)


def programs(device: torch.device) -> int:
    """Persistent programs: one per SM (a static property of the device)."""
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def _above(M: int | torch.SymInt, m: int) -> int | torch.SymInt:
    """1 where M > m, else 0, by arithmetic (M >= 1)."""
    return torch.sym_min(1, M // (m + 1))


def grids(M: int | torch.SymInt, N: int, cfg: GemmConfig, sms: int) -> list[tuple[tuple, tuple | None]]:
    """Per part: (its grid, the split-K sum's grid or None), for M rows (an int, or the exported graph's symbolic
    length). Exactly one part's grids are non-empty, by arithmetic on M rather than a host-side branch, so
    tracing records no guard on M."""
    out, lo = [], 0
    for part in cfg.parts:
        on = _above(M, lo) - (_above(M, part.max_m) if part.max_m else 0)
        t = part.tiles
        if part.kernel == PERSISTENT:
            tiles = triton.cdiv(M, t.block_m) * triton.cdiv(N, t.block_n)
            out.append(((torch.sym_min(sms * part.ctas, tiles) * on,), None))
        else:
            reduce = (triton.cdiv(M, REDUCE_BM) * on, triton.cdiv(N, REDUCE_BN)) if part.split_k > 1 else None
            out.append(((triton.cdiv(N, t.block_n) * on, part.split_k), reduce))
        lo = part.max_m
    return out


def _workspace(x: torch.Tensor, N: int, part: Part) -> torch.Tensor:
    """The split-K partials [rows, split_k, N] in float32 (rows: the part's max_m, static, or M when unbounded);
    NaN-filled under the interpreter, so that a slice left unwritten shows in y. Without split-K, x stands in:
    an argument the kernel never stores to, so that torch does not copy it (nor y) around the launch."""
    if part.split_k == 1:
        return x
    shape = (part.max_m or x.shape[0], part.split_k, N)
    if INTERPRETED:
        return torch.full(shape, float("nan"), dtype=torch.float32, device=x.device)
    return torch.empty(shape, dtype=torch.float32, device=x.device)


def _launch(part: Part, grid: tuple, reduce: tuple | None, x: torch.Tensor, w: torch.Tensor,
            y: torch.Tensor) -> None:
    (M, K), N, t = x.shape, w.shape[0], part.tiles
    tiles = {"N": N, "K": K, "BM": t.block_m, "BN": t.block_n, "BK": t.block_k, "UPCAST": INTERPRETED,
             "num_warps": t.warps, "num_stages": t.stages}
    if part.kernel == PERSISTENT:
        launcher(_wide_kernel)[grid](x, w, y, M, GROUP_M=part.group_m, FLATTEN=part.flatten, **tiles)
        return
    ws = _workspace(x, N, part)
    launcher(_stream_kernel)[grid](x, w, y, ws, M, SPLIT_K=part.split_k, **tiles)
    if reduce is not None:
        launcher(_reduce_kernel)[reduce](ws, y, M, N=N, SPLIT_K=part.split_k, BM=REDUCE_BM, BN=REDUCE_BN,
                                         num_warps=4)


def gemm(x: torch.Tensor, w: torch.Tensor, cfg: GemmConfig | None = None,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as `reference.gemm` (bf16 or fp32). cfg: `config(N, K, dtype)` unless given (tests, sweeps);
    out [M, N], if given, receives y."""
    check_args(x, w)
    x, w = dense(x, w)
    M, (N, K) = x.shape[0], w.shape
    cfg = cfg or config(N, K, x.dtype)
    y = x.new_empty((M, N)) if out is None else out
    for part, (grid, reduce) in zip(cfg.parts, grids(M, N, cfg, programs(x.device))):
        _launch(part, grid, reduce, x, w, y)
    return y
