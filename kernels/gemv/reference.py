"""Matrix-vector product for one token, in plain PyTorch: the specification.

    a = x                                   act == "none"      x [1, K]
    a = silu(x[:, :K]) * x[:, K:]           act == "silu_mul"  x [1, 2K] = [gate | up]
    y = a @ w^T                             w [N, K] -> y [1, N]

The activation is computed in float32 and rounded once to x's dtype; the product accumulates in float32
and is rounded to x's dtype.

`norm_gemv` puts the residual add and the RMS norm that precede a decoder sublayer's first projection in front:

    r = x + delta                           x, delta [1, K] (delta optional), rounded to x's dtype
    n = r / rms(r) * (1 + g)                g [K]: the zero-centred RMSNorm of Qwen3-Next / Qwen3.5, in float32,
                                            rounded to x's dtype
    y = n @ w^T                             -> y [1, N], r [1, K], n [1, K]

The Triton kernel computes y as (r (1 + g)) @ w^T / rms, without n's rounding.

`gated_norm_gemv` puts the GDN layer's gated RMS norm (export/model.py GatedRMSNorm) in front of out_proj:

    o, z [1, Hv V] viewed as [Hv, V]        per head h: x = o[h], rounded as GatedRMSNorm rounds
    a = (w_n * (x / rms(x))) * silu(z)      x / rms(x) in float32 rounded to o's dtype, times w_n [V] (in the
                                            product's dtype), times silu(z) in float32, rounded to o's dtype
    y = a @ w^T                             w [N, Hv V] -> y [1, N]
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


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., K], weight [K] -> x / rms(x) * (1 + weight) over the last dim, in float32, in x's dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * (1.0 + weight.float())).to(x.dtype)


def norm_gemv(
    x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor, eps: float, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [T, K], delta [T, K] or None, norm_weight [K], w [N, K] -> (y [T, N], r [T, K], n [T, K]) in x's dtype.
    Any T here; the op takes one row."""
    r = x if delta is None else x + delta
    n = rms_norm(r, norm_weight, eps)
    return F.linear(n, w), r, n


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x, z [..., V], weight [V] -> weight * (x / rms(x)) * silu(z) over the last dim, in x's dtype, with
    GatedRMSNorm's roundings (export/model.py): x / rms(x) rounded to x's dtype, the weight's product in its
    promoted dtype, the gate in float32."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * xf.to(x.dtype)
    return (out * F.silu(z.float())).to(x.dtype)


def gated_norm_gemv(
    o: torch.Tensor, z: torch.Tensor, norm_weight: torch.Tensor, eps: float, w: torch.Tensor
) -> torch.Tensor:
    """o, z [1, Hv V]; norm_weight [V]; w [N, Hv V] -> y [1, N] in o's dtype."""
    V = norm_weight.shape[0]
    a = gated_rms_norm(o.reshape(1, -1, V), z.reshape(1, -1, V), norm_weight, eps)  # [1, Hv, V]
    return F.linear(a.reshape(1, -1), w)
