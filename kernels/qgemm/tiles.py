"""What the quantized prefill GEMM runs for each range of M, from the static (N, K, bits, group, dtype) only: a
`kernels.gemm.tiles.GemmConfig` (parts per M range, the same grid machinery). In a part's tiles, block_m is the
rows of x a program takes at once and block_n the weight rows; a K step is block_k columns, whole groups or a
part of one (DESIGN.md states the rule)."""

from __future__ import annotations

import torch

from ..gemm.tiles import FP32, PERSISTENT, STREAM, GemmConfig, Part, Tiles, split_k

SMALL_MAX_M, STREAM_MAX_M = 32, 128  # the stream parts' ranges; the persistent part takes M above


def stream_part(tiles: Tiles, N: int, K: int, max_m: int) -> Part:
    """A stream part split along K so that N / BN x slices keeps the SMs streaming (`gemm.tiles.split_k`)."""
    return Part(STREAM, tiles, max_m=max_m, split_k=split_k(N, K, tiles))


def config(N: int, K: int, bits: int, group: int, dtype: torch.dtype) -> GemmConfig:
    """The configuration gdn::qgemm and gdn::norm_qgemm run for int`bits` [N, K] weights in groups of `group`:
    16-bit: M <= 32 on 64 weight rows a program, M <= 128 all rows at once on 128 weight rows (both split along
    K), above that 128 x 128 persistent tiles (DESIGN.md says why). float32 runs gemm's fp32 tiles (IEEE dots on
    the CUDA cores)."""
    if dtype == torch.float32:
        return FP32
    small = Tiles(SMALL_MAX_M, 64, 128, 4, 4)
    medium = Tiles(STREAM_MAX_M, 128, 64, 8, 3)
    return GemmConfig((
        stream_part(small, N, K, SMALL_MAX_M),
        stream_part(medium, N, K, STREAM_MAX_M),
        Part(PERSISTENT, Tiles(128, 128, 64, 8, 4)),
    ))
