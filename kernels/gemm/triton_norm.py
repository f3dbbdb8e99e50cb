"""The residual add and zero-centred RMS norm in front of a prefill projection (`reference.norm_gemm`): a
prologue kernel, then `triton_gemm.gemm` on its n.

`_norm_kernel`, grid (M,): a program owns one row: r = x + delta rounded to x's dtype, its sum of squares,
n = r / rms(r) * (1 + g) rounded to x's dtype, in the reference's order; it stores r and n. The norm is computed
once per row and the GEMM reads n like any input, so no GEMM tile repeats it. eps is a constant of the kernel:
AOTInductor passes a float kernel argument as float64 where Triton's launch passes float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import dense, launcher
from .triton_gemm import GemmConfig, check_args, gemm


@triton.jit
def _norm_kernel(x_ptr, d_ptr, g_ptr, r_ptr, n_ptr, K: tl.constexpr, BK: tl.constexpr, EPS: tl.constexpr,
                 HAS_DELTA: tl.constexpr):
    cols = tl.arange(0, BK)
    ok = cols < K
    offs = tl.program_id(0).to(tl.int64) * K + cols  # [BK]
    r = tl.load(x_ptr + offs, mask=ok, other=0.0)
    if HAS_DELTA:
        d = tl.load(d_ptr + offs, mask=ok, other=0.0)
        r = (r.to(tl.float32) + d.to(tl.float32)).to(x_ptr.dtype.element_ty)
    r = r.to(tl.float32)
    g = tl.load(g_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(r * r, 0) / K + EPS)
    tl.store(r_ptr + offs, r.to(r_ptr.dtype.element_ty), mask=ok)
    tl.store(n_ptr + offs, (r * inv_rms * (1.0 + g)).to(n_ptr.dtype.element_ty), mask=ok)


def check_norm_args(x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor,
                    w: torch.Tensor) -> None:
    check_args(x, w)
    K = w.shape[1]
    if (delta is not None and tuple(delta.shape) != tuple(x.shape)) or tuple(norm_weight.shape) != (K,):
        got = f"x {tuple(x.shape)}, delta {None if delta is None else tuple(delta.shape)}, " \
              f"norm weight {tuple(norm_weight.shape)}"
        raise ValueError(f"norm_gemm wants delta like x (or None) and norm weight [{K}], got {got}")
    if delta is not None and delta.dtype != x.dtype:
        raise ValueError(f"norm_gemm wants delta in x's dtype {x.dtype}, got {delta.dtype}")


def add_norm(x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
             out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The prologue alone: x, delta [M, K] (delta may be None), norm_weight [K] -> (r, n) [M, K]."""
    x, g = dense(x, norm_weight)
    d = x if delta is None else delta.contiguous()  # an unread stand-in without delta
    r, n = (torch.empty_like(x), torch.empty_like(x)) if out is None else out
    M, K = x.shape
    warps = 8 if K >= 4096 else 4
    launcher(_norm_kernel)[(M,)](
        x, d, g, r, n, K=K, BK=max(16, triton.next_power_of_2(K)), EPS=eps, HAS_DELTA=delta is not None,
        num_warps=warps,
    )
    return r, n


def norm_gemm(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    w: torch.Tensor,
    cfg: GemmConfig | None = None,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as `reference.norm_gemm`. cfg: the GEMM's configuration (`config` unless given); out:
    (y, r, n)."""
    check_norm_args(x, delta, norm_weight, w)
    r, n = add_norm(x, delta, norm_weight, eps, None if out is None else out[1:])
    y = gemm(n, w, cfg, None if out is None else out[0])
    return y, r, n
