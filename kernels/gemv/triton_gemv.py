"""One-token projection y = act(x) @ w^T as a Triton mat-vec kernel.

Grid: (N / BN,). A program owns BN output rows and streams their [BN, K] weights in [BN, BK] tiles along
the contiguous K axis, accumulating x * w in float32. A GEMM template's grid is N / BLOCK_N tiles of a
16-row M block; small BN gives enough programs to keep every SM loading even when N is only 2048.
The input activation (silu(gate) * up) is recomputed by every program from the [1, 2K] input, which is
tiny next to the weights.

Two forms, chosen by the static K (`default_config`): up to PDL_MAX_K the PDL form takes K in one step and
loads its weights before the grid wait (kernels/pdl.py); above it, the loop over K in BK steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import triton
import triton.language as tl

from ..launch import launcher
from ..pdl import grid_release, grid_wait, pdl_args
from .reference import ACTS

# the PDL form holds a program's [4, K] weights in registers: 64 per thread at 8 warps for K = 4096
PDL_MAX_K = 4096


@dataclass(frozen=True)
class GemvConfig:
    block_n: int = 4  # output rows per program
    block_k: int = 1024  # weight columns per step of the loop form
    warps: int = 4
    # programmatic dependent launch (kernels/pdl.py): "on" / "serial" run the PDL form, one step over K
    pdl: str = "off"


def default_config(K: int) -> GemvConfig:
    """The config gdn::gemv and gdn::norm_gemv run, from the static K: 4 rows by 1024 columns per program
    (the best of a block sweep at the decode shapes, kernels/gemv/DESIGN.md); 8 warps pay only for long rows;
    the PDL form where one step over K fits."""
    return GemvConfig(4, 1024, 8 if K >= 4096 else 4, pdl="on" if K <= PDL_MAX_K else "off")


def gemv_config(N: int, K: int) -> GemvConfig:
    """The config gdn::gemv runs (the norm forms keep `default_config`), from the static (N, K): outputs of at most
    2048 rows take more programs or longer steps, where the block sweep measured it (kernels/gemv/DESIGN.md):
    2 rows a program in the PDL form up to K 2048, 8 rows by 2048 columns in the loop form."""
    cfg = default_config(K)
    if N > 2048:
        return cfg
    if cfg.pdl == "on":
        return replace(cfg, block_n=2) if K <= 2048 else cfg
    return GemvConfig(8, 2048, 8)


def launch_args(cfg: GemvConfig, N: int, K: int, like: torch.Tensor) -> tuple[int, int, dict[str, Any]]:
    """-> (BN, BK, the launch's num_warps and PDL arguments) for [N, K] weights; `like`: one of the kernel's
    tensors (pdl_args). The PDL form takes the whole (power-of-two padded) K in one step."""
    pdl = pdl_args(cfg.pdl, like)
    whole_k = max(16, triton.next_power_of_2(K))
    bk = whole_k if pdl["PDL"] else min(cfg.block_k, whole_k)
    return min(cfg.block_n, triton.next_power_of_2(N)), bk, {"num_warps": cfg.warps, **pdl}


@triton.jit
def _activation(x_ptr, cols, col_ok, K: tl.constexpr, SILU_MUL: tl.constexpr):
    """[BK] float32 input columns: x, or silu(gate) * up rounded to x's dtype once, as the reference does."""
    if SILU_MUL:
        g = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        u = tl.load(x_ptr + K + cols, mask=col_ok, other=0.0).to(tl.float32)
        return (g * tl.sigmoid(g) * u).to(x_ptr.dtype.element_ty).to(tl.float32)
    return tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, y_ptr, s_wn,
    N: tl.constexpr, K: tl.constexpr, SILU_MUL: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    PDL: tl.constexpr,
    GDC: tl.constexpr,
):
    grid_release(GDC)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    if PDL:
        cols = tl.arange(0, BK)
        col_ok = cols < K
        w = tl.load(w_ptr + rows[:, None] * s_wn + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        grid_wait(GDC)  # x is the previous kernel's output
        acc = w.to(tl.float32) * _activation(x_ptr, cols, col_ok, K, SILU_MUL)[None, :]  # [BN, BK]
    else:
        acc = tl.zeros([BN, BK], dtype=tl.float32)
        for k0 in range(0, K, BK):
            cols = k0 + tl.arange(0, BK)
            col_ok = cols < K
            a = _activation(x_ptr, cols, col_ok, K, SILU_MUL)  # [BK]
            w = tl.load(w_ptr + rows[:, None] * s_wn + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                        other=0.0)
            acc += w.to(tl.float32) * a[None, :]  # [BN, BK]
    tl.store(y_ptr + rows, tl.sum(acc, 1).to(y_ptr.dtype.element_ty), mask=row_ok)


def gemv(
    x: torch.Tensor, w: torch.Tensor, act: str, cfg: GemvConfig | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Same contract as `reference.gemv`; w must have a unit stride along K. cfg: `gemv_config(N, K)` unless
    given."""
    if act not in ACTS:
        raise ValueError(f"unknown gemv activation {act!r} (expected one of {ACTS})")
    N, K = w.shape
    want = 2 * K if act == "silu_mul" else K
    if tuple(x.shape) != (1, want) or w.stride(1) != 1:
        got = f"x {tuple(x.shape)}, w stride {w.stride()}"
        raise ValueError(f"gemv wants x [1, {want}] and w [N, K] with unit K stride, got {got}")
    x = x.contiguous()
    y = torch.empty((1, N), dtype=x.dtype, device=x.device) if out is None else out
    bn, bk, launch = launch_args(cfg or gemv_config(N, K), N, K, y)
    launcher(_gemv_kernel)[(triton.cdiv(N, bn),)](
        x, w, y, w.stride(0), N=N, K=K, SILU_MUL=act == "silu_mul", BN=bn, BK=bk, **launch,
    )
    return y
