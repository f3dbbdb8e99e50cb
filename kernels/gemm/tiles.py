"""What the prefill GEMM runs for each range of M: a configuration is a list of parts, each one kernel with its
tiles for the rows in (the previous part's max_m, its max_m], chosen from the static (N, K, dtype) only. Also the
candidates that `scripts/bench_gemm.py --configs` times for each site (DESIGN.md)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

SMS = 132  # the H100 SXM's SMs: split factors are sized for it (a static design target, not the running device)
STREAM, PERSISTENT = "stream", "persistent"


@dataclass(frozen=True)
class Tiles:
    block_m: int
    block_n: int
    block_k: int
    warps: int
    stages: int


@dataclass(frozen=True)
class Part:
    """One kernel for one range of M.

    stream: grid (N / BN, split_k); a program streams its BN weight rows over its K slice once per BM rows of x;
    split_k > 1 writes float32 partials that a second kernel sums in a fixed order. persistent: grid
    min(SMs * ctas, tiles), tiles in grouped order (group_m row blocks down each column block)."""

    kernel: str
    tiles: Tiles
    max_m: int = 0  # the range's last row count; 0: unbounded (the last part)
    split_k: int = 1
    group_m: int = 8
    ctas: int = 1
    flatten: bool = True  # persistent: tile and K loops as one software-pipelined loop


@dataclass(frozen=True)
class GemmConfig:
    parts: tuple[Part, ...]  # ascending max_m, the last unbounded


WIDE_128 = Tiles(128, 128, 64, 8, 4)
WIDE_256 = Tiles(128, 256, 64, 8, 3)
NARROW = {32: Tiles(64, 32, 256, 4, 4), 64: Tiles(64, 64, 128, 4, 4)}
NARROW_MAX_M = 128
FP32 = GemmConfig((Part(STREAM, Tiles(32, 32, 32, 4, 2), max_m=64), Part(PERSISTENT, Tiles(64, 64, 32, 4, 2))))


def two_ranges(narrow: Tiles, wide: Tiles, narrow_max_m: int = NARROW_MAX_M) -> GemmConfig:
    return GemmConfig((Part(STREAM, narrow, max_m=narrow_max_m), Part(PERSISTENT, wide)))


def config(N: int, K: int, dtype: torch.dtype) -> GemmConfig:
    """The configuration the ops run for [N, K] weights of `dtype` (static shapes only). bf16: BN 256 where the
    M >= 1024 tile count stays >= 2 waves, narrow BN so that N / BN keeps about half the SMs or more streaming."""
    if dtype == torch.float32:  # IEEE float32 dots run on the CUDA cores, with operands in registers
        return FP32
    return two_ranges(NARROW[32 if N <= 4096 else 64], WIDE_256 if N >= 8192 else WIDE_128)


def configs() -> tuple[GemmConfig, ...]:
    """Every configuration `config` can return."""
    return tuple(two_ranges(n, w) for w in (WIDE_128, WIDE_256) for n in NARROW.values()) + (FP32,)


def split_k(N: int, K: int, tiles: Tiles) -> int:
    """K slices for a stream part: as many as keep N / BN * slices <= SMS (one wave), each slice >= 2 K steps, <= 16."""
    n_blocks, k_steps = -(-N // tiles.block_n), -(-K // tiles.block_k)
    return max(1, min(SMS // n_blocks, k_steps // 2, 16))


# name -> (kernel, tiles, split the K loop (stream) / programs per SM (persistent), group_m)
_STREAM = {
    "s64x64x128": (Tiles(64, 64, 128, 4, 4), True),
    "s128x64x64": (Tiles(128, 64, 64, 4, 4), True),  # 96 KiB of stages: two programs an SM
    "s128x64x64-st6": (Tiles(128, 64, 64, 4, 6), True),
    "s128x128x64": (Tiles(128, 128, 64, 8, 4), True),
    "s128x128x64-nosplit": (Tiles(128, 128, 64, 8, 4), False),
    "s64x128x64-st6": (Tiles(64, 128, 64, 4, 6), True),
}
_PERSISTENT = {
    "p128x256-st3": (WIDE_256, 1, 8),
    "p128x256-st4": (Tiles(128, 256, 64, 8, 4), 1, 8),
    "p128x128-st4": (WIDE_128, 1, 8),
    "p128x128-st5": (Tiles(128, 128, 64, 8, 5), 1, 8),
    "p128x128-st4-g4": (WIDE_128, 1, 4),
    "p128x128-w4": (Tiles(128, 128, 64, 4, 4), 1, 8),
    "p128x128-st2-2cta": (Tiles(128, 128, 64, 8, 2), 2, 8),  # 96 KiB shared: two programs an SM
    "p64x256-st4": (Tiles(64, 256, 64, 4, 4), 1, 8),
    "p64x128-st4": (Tiles(64, 128, 64, 4, 4), 1, 8),
}


def candidates(N: int, K: int) -> dict[str, Part]:
    """bf16 parts to time for [N, K] weights, each unbounded (a one-part configuration runs it at every M):
    the shipped narrow and wide tiles first, then the stream tiles (split-K sized by `split_k`) and the
    persistent ones; a part that two names give appears once, under the first."""
    shipped = config(N, K, torch.bfloat16).parts
    out = {"shipped-narrow": replace(shipped[0], max_m=0), "shipped-wide": shipped[1]}
    for name, (tiles, split) in _STREAM.items():
        out[name] = Part(STREAM, tiles, split_k=split_k(N, K, tiles) if split else 1)
    for name, (tiles, ctas, group_m) in _PERSISTENT.items():
        out[name] = Part(PERSISTENT, tiles, ctas=ctas, group_m=group_m)
    unique: dict[Part, str] = {}
    for name, part in out.items():
        unique.setdefault(part, name)  # the first name of a part that several give
    return {name: part for part, name in unique.items()}


def waves(M: int, N: int, tiles: Tiles, programs: int = SMS) -> tuple[int, float]:
    """(output tiles, waves) of a persistent part: the last wave's fill is waves - floor(waves)."""
    count = -(-M // tiles.block_m) * -(-N // tiles.block_n)
    return count, count / programs
