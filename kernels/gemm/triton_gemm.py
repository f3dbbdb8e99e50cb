"""Prefill projection y = x @ w^T (`reference.gemm`) as two Triton kernels, of which each call runs one, chosen by
M through the grids (design and numbers: DESIGN.md).

- `_wide_kernel`, M > narrow_max_m (compute-bound): persistent. Grid min(#SMs, tiles); program p walks tiles
  p, p + grid, ... of [BM, BN] outputs in grouped order (GROUP_M row blocks share each weight column block while it
  is in L2), accumulating [BM, BK] x [BK, BN] tensor-core dots in float32 over K.
- `_narrow_kernel`, M <= narrow_max_m (weight-bandwidth-bound): grid N / BN; a program owns BN weight rows and
  streams them along K once per BM block of rows (one block up to BM rows, later blocks read its weights from L2).

The grid of the kernel outside its M range is empty, computed from the symbolic M (no host-side branch, no guard),
so one exported graph serves every M and AOTInductor skips the empty launch. Tile sizes come from the static
(N, K, dtype) through `config`. Loads go through pointer tiles, not TMA descriptors (DESIGN.md says why).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..launch import INTERPRETED, dense, launcher

DTYPES = (torch.bfloat16, torch.float32)
INTERPRETER_PROGRAMS = 3  # persistent programs under the interpreter: several tiles each, unevenly


@dataclass(frozen=True)
class Tiles:
    block_m: int
    block_n: int
    block_k: int
    warps: int
    stages: int


@dataclass(frozen=True)
class GemmConfig:
    wide: Tiles  # the persistent kernel, M > narrow_max_m
    narrow: Tiles  # the weight-streaming kernel, M <= narrow_max_m
    narrow_max_m: int
    group_m: int = 8  # row blocks per group of the wide kernel's tile order
    flatten: bool = True  # the wide kernel's tile and K loops as one software-pipelined loop


WIDE_128 = Tiles(128, 128, 64, 8, 4)
WIDE_256 = Tiles(128, 256, 64, 8, 3)
NARROW = {32: Tiles(64, 32, 256, 4, 4), 64: Tiles(64, 64, 128, 4, 4)}
FP32 = GemmConfig(Tiles(64, 64, 32, 4, 2), Tiles(32, 32, 32, 4, 2), narrow_max_m=64)


def config(N: int, K: int, dtype: torch.dtype) -> GemmConfig:
    """The configuration the ops run for [N, K] weights of `dtype` (static shapes only). bf16: BN 256 where the
    M >= 1024 tile count stays >= 2 waves, narrow BN so that N / BN keeps about half the SMs or more streaming."""
    if dtype == torch.float32:  # IEEE float32 dots run on the CUDA cores, with operands in registers
        return FP32
    wide = WIDE_256 if N >= 8192 else WIDE_128
    return GemmConfig(wide, NARROW[32 if N <= 4096 else 64], narrow_max_m=128)


def configs() -> tuple[GemmConfig, ...]:
    """Every configuration `config` can return."""
    return tuple(GemmConfig(w, n, 128) for w in (WIDE_128, WIDE_256) for n in NARROW.values()) + (FP32,)


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


@triton.jit(do_not_specialize=["M"])
def _narrow_kernel(
    x_ptr, w_ptr, y_ptr, M,
    N: tl.constexpr, K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    UPCAST: tl.constexpr,
):
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    ck = tl.arange(0, BK)
    for m0 in range(0, M, BM):
        rm = m0 + tl.arange(0, BM)
        row_ok = rm < M  # rows past M are masked, not loaded: at small M most of the x tile
        a_ptrs = x_ptr + rm.to(tl.int64)[:, None] * K + ck[None, :]  # [BM, BK]
        b_ptrs = w_ptr + (rn % N)[:, None] * K + ck[None, :]  # [BN, BK]
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            kin = ck < K - k0
            if K % BK == 0:
                a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
                b = tl.load(b_ptrs)
            else:
                a = tl.load(a_ptrs, mask=row_ok[:, None] & kin[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=kin[None, :], other=0.0)
            acc = _dot(acc, a, b, UPCAST)
            a_ptrs += BK
            b_ptrs += BK
        _store(y_ptr, acc, rm, rn, M, N)


def programs(device: torch.device) -> int:
    """Persistent programs: one per SM (a static property of the device)."""
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def grids(M: int | torch.SymInt, N: int, cfg: GemmConfig, sms: int) -> tuple[int, int]:
    """(narrow grid, wide grid) for M rows (an int, or the exported graph's symbolic length): exactly one is
    non-empty, by arithmetic on M rather than a host-side branch, so tracing records no guard on M."""
    wide = torch.sym_min(1, M // (cfg.narrow_max_m + 1))  # 1 where M > narrow_max_m, else 0
    tiles = triton.cdiv(M, cfg.wide.block_m) * triton.cdiv(N, cfg.wide.block_n)
    return triton.cdiv(N, cfg.narrow.block_n) * (1 - wide), torch.sym_min(sms, tiles) * wide


def gemm(x: torch.Tensor, w: torch.Tensor, cfg: GemmConfig | None = None,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as `reference.gemm` (bf16 or fp32). cfg: `config(N, K, dtype)` unless given (tests, sweeps);
    out [M, N], if given, receives y."""
    check_args(x, w)
    x, w = dense(x, w)
    M, (N, K) = x.shape[0], w.shape
    cfg = cfg or config(N, K, x.dtype)
    y = x.new_empty((M, N)) if out is None else out
    narrow_grid, wide_grid = grids(M, N, cfg, programs(x.device))
    nt, wt = cfg.narrow, cfg.wide
    launcher(_narrow_kernel)[(narrow_grid,)](
        x, w, y, M, N=N, K=K, BM=nt.block_m, BN=nt.block_n, BK=nt.block_k, UPCAST=INTERPRETED,
        num_warps=nt.warps, num_stages=nt.stages,
    )
    launcher(_wide_kernel)[(wide_grid,)](
        x, w, y, M, N=N, K=K, BM=wt.block_m, BN=wt.block_n, BK=wt.block_k, GROUP_M=cfg.group_m,
        FLATTEN=cfg.flatten, UPCAST=INTERPRETED, num_warps=wt.warps, num_stages=wt.stages,
    )
    return y
