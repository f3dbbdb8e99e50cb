"""One-token projection with the decoder's residual add and RMS norm in front (`reference.norm_gemv`).

Grid: (N / BN,), as `triton_gemv`: a program owns BN output rows. Every program also computes the whole
[1, K] residual and its sum of squares (K values, tiny next to its [BN, K] weights) and stores its own slice of
r and n (SLICE columns), so no program reads what another writes and the norm costs no kernel of its own.
1 / rms is a scalar, so it factors out of the dot: y = (r (1 + g)) @ w^T / rms takes one pass over K with the
sum of squares beside the dot, and y does not see n's rounding to the model's dtype (the reference rounds n
first; the two agree within that rounding). In the PDL form (one step over K) the weights and the norm's gain
load before the grid wait, so behind a kernel that releases its dependents early this projection's weight
stream starts while that kernel drains. eps is a constant of the kernel: AOTInductor compiles a float argument
as float64, where Triton's own launch passes float32, so compiled and launched kernels would round the mean
square plus eps differently.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import launcher
from ..pdl import grid_release, grid_wait
from .triton_gemv import GemvConfig, default_config, launch_args


@triton.jit
def _residual(x_ptr, d_ptr, cols, col_ok, HAS_DELTA: tl.constexpr):
    """[BK] float32: x + delta rounded to x's dtype (the model's residual add), or x."""
    r = tl.load(x_ptr + cols, mask=col_ok, other=0.0)
    if HAS_DELTA:
        d = tl.load(d_ptr + cols, mask=col_ok, other=0.0)
        r = (r.to(tl.float32) + d.to(tl.float32)).to(x_ptr.dtype.element_ty)
    return r.to(tl.float32)


@triton.jit
def _store_norm(r_ptr, n_ptr, r, g, inv_rms, cols, mine):
    """r, and r / rms * (1 + g) rounded in the reference's order, at the columns `mine`."""
    tl.store(r_ptr + cols, r.to(r_ptr.dtype.element_ty), mask=mine)
    tl.store(n_ptr + cols, (r * inv_rms * (1.0 + g)).to(n_ptr.dtype.element_ty), mask=mine)


@triton.jit
def _norm_gemv_kernel(
    x_ptr, d_ptr, g_ptr, w_ptr, y_ptr, r_ptr, n_ptr, s_wn,
    N: tl.constexpr, K: tl.constexpr, EPS: tl.constexpr, HAS_DELTA: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr, SLICE: tl.constexpr, SLICE_P2: tl.constexpr,
    PDL: tl.constexpr,
    GDC: tl.constexpr,
):
    grid_release(GDC)
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    row_ok = rows < N
    if PDL:
        cols = tl.arange(0, BK)
        col_ok = cols < K
        w = tl.load(w_ptr + rows[:, None] * s_wn + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        g = tl.load(g_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        grid_wait(GDC)  # x and delta are earlier kernels' outputs
        r = _residual(x_ptr, d_ptr, cols, col_ok, HAS_DELTA)  # [BK]
        acc = w.to(tl.float32) * (r * (1.0 + g))[None, :]  # [BN, BK]
        inv_rms = tl.rsqrt(tl.sum(r * r, 0) / K + EPS)
        tl.store(y_ptr + rows, (tl.sum(acc, 1) * inv_rms).to(y_ptr.dtype.element_ty), mask=row_ok)
        # this program's SLICE columns of r and n, from the registers
        mine = col_ok & (cols >= pid * SLICE) & (cols < (pid + 1) * SLICE)
        _store_norm(r_ptr, n_ptr, r, g, inv_rms, cols, mine)
    else:
        squares = tl.zeros([BK], dtype=tl.float32)
        acc = tl.zeros([BN, BK], dtype=tl.float32)
        for k0 in range(0, K, BK):
            cols = k0 + tl.arange(0, BK)
            col_ok = cols < K
            w = tl.load(w_ptr + rows[:, None] * s_wn + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                        other=0.0)
            g = tl.load(g_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            r = _residual(x_ptr, d_ptr, cols, col_ok, HAS_DELTA)
            squares += r * r
            acc += w.to(tl.float32) * (r * (1.0 + g))[None, :]
        inv_rms = tl.rsqrt(tl.sum(squares, 0) / K + EPS)
        tl.store(y_ptr + rows, (tl.sum(acc, 1) * inv_rms).to(y_ptr.dtype.element_ty), mask=row_ok)
        # this program's SLICE columns of r and n, read again (the loop's registers hold the last step only)
        cols = pid * SLICE + tl.arange(0, SLICE_P2)
        col_ok = (cols < K) & (cols < (pid + 1) * SLICE)
        r = _residual(x_ptr, d_ptr, cols, col_ok, HAS_DELTA)
        g = tl.load(g_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        _store_norm(r_ptr, n_ptr, r, g, inv_rms, cols, col_ok)


def norm_gemv(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    w: torch.Tensor,
    cfg: GemvConfig | None = None,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as `reference.norm_gemv` for one row; w must have a unit stride along K. cfg:
    `default_config(K)` unless given; `out`: (y, r, n)."""
    N, K = w.shape
    shapes = [tuple(x.shape), None if delta is None else tuple(delta.shape), tuple(norm_weight.shape)]
    if shapes[0] != (1, K) or shapes[1] not in (None, (1, K)) or shapes[2] != (K,) or w.stride(1) != 1:
        got = f"x {shapes[0]}, delta {shapes[1]}, norm weight {shapes[2]}, w stride {w.stride()}"
        want = f"x and delta [1, {K}], norm weight [{K}] and w [N, K] with unit K stride"
        raise ValueError(f"norm_gemv wants {want}, got {got}")
    x, g = x.contiguous(), norm_weight.contiguous()
    d = x if delta is None else delta.contiguous()  # an unread stand-in without delta
    if out is None:
        out = (x.new_empty((1, N)), x.new_empty((1, K)), x.new_empty((1, K)))
    y, r, n = out
    bn, bk, launch = launch_args(cfg or default_config(K), N, K, y)
    programs = triton.cdiv(N, bn)
    cut = triton.cdiv(K, programs)
    launcher(_norm_gemv_kernel)[(programs,)](
        x, d, g, w, y, r, n, w.stride(0), N=N, K=K, EPS=eps, HAS_DELTA=delta is not None, BN=bn, BK=bk,
        SLICE=cut, SLICE_P2=max(16, triton.next_power_of_2(cut)), **launch,
    )
    return y, r, n
