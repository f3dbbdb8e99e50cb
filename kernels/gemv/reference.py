"""Matrix-vector product for one token, in plain PyTorch: the specification.

    a = x                                   act == "none"      x [1, K]
    a = silu(x[:, :K]) * x[:, K:]           act == "silu_mul"  x [1, 2K] = [gate | up]
    y = a @ w^T                             w [N, K] -> y [1, N]

The activation is computed in float32 and rounded once to x's dtype; the product accumulates in float32
and is rounded to x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTS = ("none", "silu_mul")


def activation(x: torch.Tensor, act: str) -> torch.Tensor:
    """x [1, K] or [1, 2K] -> a [1, K] in x's dtype."""
    if act == "none":
        return x
    if act == "silu_mul":
        gate, up = x.float().chunk(2, dim=-1)
        return (F.silu(gate) * up).to(x.dtype)
    raise ValueError(f"unknown gemv activation {act!r} (expected one of {ACTS})")


def gemv(x: torch.Tensor, w: torch.Tensor, act: str) -> torch.Tensor:
    """x [1, K] (or [1, 2K] for silu_mul); w [N, K] -> y [1, N] in x's dtype."""
    return F.linear(activation(x, act), w)
