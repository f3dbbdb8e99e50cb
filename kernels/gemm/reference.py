"""Prefill projections in plain PyTorch: the specification.

    y = x @ w^T                             x [M, K], w [N, K] -> y [M, N]

in x's dtype, accumulated in float32 and rounded once. M is the prompt chunk's length (any M >= 1); N and K are
static per call site.

`norm_gemm` puts the residual add and the zero-centred RMS norm that precede a decoder sublayer's first
projection in front, with exactly `gdn.kernels.gemv.reference.norm_gemv`'s semantics, for M rows:

    r = x + delta                           x, delta [M, K] (delta optional), rounded to x's dtype
    n = r / rms(r) * (1 + g)                g [K]; per row, in float32, rounded to x's dtype (gemv's rms_norm)
    y = n @ w^T                             -> y [M, N], r [M, K], n [M, K]

Unlike the one-token Triton kernel, y here is computed from the rounded n, as the reference does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..gemv.reference import rms_norm


def gemm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [M, K], w [N, K] -> y [M, N] in x's dtype."""
    return F.linear(x, w)


def norm_gemm(
    x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor, eps: float, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K], delta [M, K] or None, norm_weight [K], w [N, K] -> (y [M, N], r [M, K], n [M, K]) in x's
    dtype."""
    r = x if delta is None else x + delta
    n = rms_norm(r, norm_weight, eps)
    return gemm(n, w), r, n
