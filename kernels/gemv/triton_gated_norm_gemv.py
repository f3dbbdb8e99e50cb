"""One-token out_proj of a GDN layer with its gated RMS norm in front (`reference.gated_norm_gemv`).

Grid: (N / BN,), as `triton_gemv`: a program owns BN output rows. Every program also recomputes the gated norm
of the whole [1, Hv V] input (each head's rms over its V values, times the norm's weight and silu(z); a few
thousand values, tiny next to its [BN, Hv V] weights), so the norm costs no kernel of its own and no program
reads what another writes. The input is handled as whole heads, [BH, VP] tiles (V padded to a power of two)
flattened into the weight tile's columns, so a head's rms never spans two steps. The roundings are the
reference's (GatedRMSNorm's), in its order. In the PDL form (all heads in one step) the weights load before the
grid wait, as in `triton_gemv`; above PDL_MAX_K, the loop form takes BH heads per step.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import launcher
from ..pdl import grid_release, grid_wait
from .triton_gemv import GemvConfig, default_config, launch_args


@triton.jit
def _head_cols(h0, HV: tl.constexpr, V: tl.constexpr, BH: tl.constexpr, VP: tl.constexpr):
    """Columns of heads h0 .. h0 + BH - 1: ([BH, VP] flat index, [BH, VP] in range)."""
    heads = h0 + tl.arange(0, BH)
    vs = tl.arange(0, VP)
    return heads[:, None] * V + vs[None, :], (heads < HV)[:, None] & (vs < V)[None, :]


@triton.jit
def _gated_input(o_ptr, z_ptr, nw_ptr, cols, ok, V: tl.constexpr, VP: tl.constexpr, EPS: tl.constexpr,
                 ROUND_PROD: tl.constexpr):
    """[BH, VP] float32: weight * (o / rms(o)) * silu(z) per head, rounded as GatedRMSNorm rounds; 0 outside."""
    dt = o_ptr.dtype.element_ty
    x = tl.load(o_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(x * x, 1) / V + EPS)  # [BH]
    n = (x * inv_rms[:, None]).to(dt).to(tl.float32)
    g = tl.load(nw_ptr + tl.arange(0, VP), mask=tl.arange(0, VP) < V, other=0.0).to(tl.float32)
    n = g[None, :] * n
    if ROUND_PROD:  # weight and o of one dtype: the product is rounded to it
        n = n.to(dt).to(tl.float32)
    z = tl.load(z_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    return tl.where(ok, (n * (z * tl.sigmoid(z))).to(dt).to(tl.float32), 0.0)


@triton.jit
def _gated_norm_gemv_kernel(
    o_ptr, z_ptr, nw_ptr, w_ptr, y_ptr, s_wn,
    N: tl.constexpr, HV: tl.constexpr, V: tl.constexpr, VP: tl.constexpr, BH: tl.constexpr, BN: tl.constexpr,
    EPS: tl.constexpr, ROUND_PROD: tl.constexpr,
    PDL: tl.constexpr,
    GDC: tl.constexpr,
):
    grid_release(GDC)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    if PDL:  # BH >= HV: every head in one step
        cols2, ok2 = _head_cols(0, HV, V, BH, VP)
        cols, ok = tl.reshape(cols2, [BH * VP]), tl.reshape(ok2, [BH * VP])
        w = tl.load(w_ptr + rows[:, None] * s_wn + cols[None, :], mask=row_ok[:, None] & ok[None, :], other=0.0)
        grid_wait(GDC)  # o and z are earlier kernels' outputs
        a = tl.reshape(_gated_input(o_ptr, z_ptr, nw_ptr, cols2, ok2, V, VP, EPS, ROUND_PROD), [BH * VP])
        acc = w.to(tl.float32) * a[None, :]  # [BN, BH VP]
    else:
        acc = tl.zeros([BN, BH * VP], dtype=tl.float32)
        for h0 in range(0, HV, BH):
            cols2, ok2 = _head_cols(h0, HV, V, BH, VP)
            cols, ok = tl.reshape(cols2, [BH * VP]), tl.reshape(ok2, [BH * VP])
            a = tl.reshape(_gated_input(o_ptr, z_ptr, nw_ptr, cols2, ok2, V, VP, EPS, ROUND_PROD), [BH * VP])
            w = tl.load(w_ptr + rows[:, None] * s_wn + cols[None, :], mask=row_ok[:, None] & ok[None, :], other=0.0)
            acc += w.to(tl.float32) * a[None, :]
    tl.store(y_ptr + rows, tl.sum(acc, 1).to(y_ptr.dtype.element_ty), mask=row_ok)


def check_shapes(o: torch.Tensor, z: torch.Tensor, norm_weight: torch.Tensor, w: torch.Tensor) -> None:
    """One clear line for shapes the kernel cannot take (static shapes, checked while tracing too)."""
    N, K = w.shape
    V = norm_weight.shape[0] if norm_weight.dim() == 1 else 0
    if tuple(o.shape) != (1, K) or tuple(z.shape) != (1, K) or V == 0 or K % V != 0 or w.stride(1) != 1:
        got = (f"o {tuple(o.shape)}, z {tuple(z.shape)}, norm weight {tuple(norm_weight.shape)}, "
               f"w {tuple(w.shape)} stride {w.stride()}")
        raise ValueError(f"gated_norm_gemv wants o and z [1, K], norm weight [V] with V dividing K and w [N, K] with "
                         f"unit K stride, got {got}")


def gated_norm_gemv(
    o: torch.Tensor,
    z: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    w: torch.Tensor,
    cfg: GemvConfig | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as `reference.gated_norm_gemv`; w must have a unit stride along K. cfg: `default_config(K)`
    unless given (its pdl picks the form; block_k bounds the loop form's heads per step); `out`: y."""
    check_shapes(o, z, norm_weight, w)
    N, K = w.shape
    V = norm_weight.shape[0]
    HV, VP = K // V, triton.next_power_of_2(V)
    o, z, g = o.contiguous(), z.contiguous(), norm_weight.contiguous()
    y = o.new_empty((1, N)) if out is None else out
    cfg = cfg or default_config(K)
    bn, _, launch = launch_args(cfg, N, K, y)
    # the PDL form: every head in one step; the loop form: about block_k columns of whole heads per step
    bh = triton.next_power_of_2(HV if launch["PDL"] else min(HV, max(1, cfg.block_k // VP)))
    launcher(_gated_norm_gemv_kernel)[(triton.cdiv(N, bn),)](
        o, z, g, w, y, w.stride(0), N=N, HV=HV, V=V, VP=VP, BH=bh, BN=bn, EPS=eps,
        ROUND_PROD=g.dtype == o.dtype, **launch,
    )
    return y
