"""One-token projection with the decoder's residual add and RMS norm in front (`reference.norm_gemv`).

Grid: (N / BN,), as `triton_gemv`: a program owns BN output rows. Every program also computes the whole
[1, K] residual and its norm (K values, tiny next to its [BN, K] weights) and stores its own slice of r and n
(SLICE columns), so no program reads what another writes and the norm costs no kernel of its own. In the PDL
form (one step over K) the weights and the norm's gain load before the grid wait: behind a kernel that releases
its dependents early (the MoE's down kernel, a PDL projection) this projection's weight stream starts while
that kernel drains.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..gated_delta_rule.launch import launcher
from ..pdl import grid_release, grid_wait, pdl_args
from .triton_gemv import GemvConfig, default_config


@triton.jit
def _residual(x_ptr, d_ptr, cols, col_ok, HAS_DELTA: tl.constexpr):
    """[BK] float32: x + delta rounded to x's dtype (the model's residual add), or x."""
    r = tl.load(x_ptr + cols, mask=col_ok, other=0.0)
    if HAS_DELTA:
        d = tl.load(d_ptr + cols, mask=col_ok, other=0.0)
        r = (r.to(tl.float32) + d.to(tl.float32)).to(x_ptr.dtype.element_ty)
    return r.to(tl.float32)


@triton.jit
def _normed(r, inv_rms, g, dtype: tl.constexpr):
    """[BK] float32: r / rms * (1 + g) rounded to the model's dtype, in the reference's order."""
    return (r * inv_rms * (1.0 + g)).to(dtype).to(tl.float32)


@triton.jit
def _store_slice(r_ptr, n_ptr, r, n, cols, col_ok, pid, SLICE: tl.constexpr):
    """This program's SLICE columns of r and n."""
    mine = col_ok & (cols >= pid * SLICE) & (cols < (pid + 1) * SLICE)
    tl.store(r_ptr + cols, r.to(r_ptr.dtype.element_ty), mask=mine)
    tl.store(n_ptr + cols, n.to(n_ptr.dtype.element_ty), mask=mine)


@triton.jit
def _norm_gemv_kernel(
    x_ptr, d_ptr, g_ptr, w_ptr, y_ptr, r_ptr, n_ptr, s_wn, eps,
    N: tl.constexpr, K: tl.constexpr, HAS_DELTA: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    SLICE: tl.constexpr,
    PDL: tl.constexpr,
    GDC: tl.constexpr,
):
    grid_release(GDC)
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    row_ok = rows < N
    dtype = x_ptr.dtype.element_ty
    if PDL:
        cols = tl.arange(0, BK)
        col_ok = cols < K
        w = tl.load(w_ptr + rows[:, None] * s_wn + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        g = tl.load(g_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        grid_wait(GDC)
        r = _residual(x_ptr, d_ptr, cols, col_ok, HAS_DELTA)  # [BK]
        n = _normed(r, tl.rsqrt(tl.sum(r * r, 0) / K + eps), g, dtype)
        _store_slice(r_ptr, n_ptr, r, n, cols, col_ok, pid, SLICE)
        acc = w.to(tl.float32) * n[None, :]  # [BN, BK]
    else:
        squares = tl.zeros([BK], dtype=tl.float32)
        for k0 in range(0, K, BK):
            cols = k0 + tl.arange(0, BK)
            r = _residual(x_ptr, d_ptr, cols, cols < K, HAS_DELTA)
            squares += r * r
        inv_rms = tl.rsqrt(tl.sum(squares, 0) / K + eps)
        acc = tl.zeros([BN, BK], dtype=tl.float32)
        for k0 in range(0, K, BK):
            cols = k0 + tl.arange(0, BK)
            col_ok = cols < K
            r = _residual(x_ptr, d_ptr, cols, col_ok, HAS_DELTA)
            g = tl.load(g_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            n = _normed(r, inv_rms, g, dtype)
            _store_slice(r_ptr, n_ptr, r, n, cols, col_ok, pid, SLICE)
            w = tl.load(w_ptr + rows[:, None] * s_wn + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                        other=0.0)
            acc += w.to(tl.float32) * n[None, :]  # [BN, BK]
    tl.store(y_ptr + rows, tl.sum(acc, 1).to(y_ptr.dtype.element_ty), mask=row_ok)


def norm_gemv(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    w: torch.Tensor,
    cfg: GemvConfig | None = None,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as `reference.norm_gemv` for one row; w must have a unit stride along K. `out`: (y, r, n)."""
    N, K = w.shape
    shapes = [tuple(x.shape), None if delta is None else tuple(delta.shape), tuple(norm_weight.shape)]
    if shapes[0] != (1, K) or shapes[1] not in (None, (1, K)) or shapes[2] != (K,) or w.stride(1) != 1:
        got = f"x {shapes[0]}, delta {shapes[1]}, norm weight {shapes[2]}, w stride {w.stride()}"
        raise ValueError(f"norm_gemv wants x and delta [1, {K}], norm weight [{K}] and w [N, K] with unit K stride, got {got}")
    x, g = x.contiguous(), norm_weight.contiguous()
    d = x if delta is None else delta.contiguous()
    cfg = cfg or default_config(K)
    if out is None:
        out = (x.new_empty((1, N)), x.new_empty((1, K)), x.new_empty((1, K)))
    y, r, n = out
    bn = min(cfg.block_n, triton.next_power_of_2(N))
    bk = min(cfg.block_k, max(16, triton.next_power_of_2(K)))
    pdl = pdl_args(cfg.pdl, y)
    if pdl["PDL"]:
        bk = max(16, triton.next_power_of_2(K))
    programs = triton.cdiv(N, bn)
    launcher(_norm_gemv_kernel)[(programs,)](
        x, d, g, w, y, r, n, w.stride(0), eps, N=N, K=K, HAS_DELTA=delta is not None, BN=bn, BK=bk,
        SLICE=triton.cdiv(K, programs), num_warps=cfg.warps, **pdl,
    )
    return y, r, n
