"""One-token quantized projection with the decoder's residual add and RMS norm in front
(`reference.norm_gemv`), in the form of `gemv/triton_norm_gemv.py`: every program computes the whole [1, K]
residual and its sum of squares, stores its own slice of r and n, and computes y = (r (1 + g)) @ w'^T / rms
with the weights dequantized in registers as `triton_qgemv` does. In the PDL form the packed weights, scales and
the norm's gain load before the grid wait. eps is a constant of the kernel (see triton_norm_gemv)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..gemv.triton_norm_gemv import _residual, _store_norm
from ..launch import launcher, next_pow2
from ..pdl import grid_release, grid_wait, pdl_args
from . import triton_chunks as chunks
from .reference import weight_shape
from .triton_qgemv import (QGemvConfig, _cols, _load_q, _qdot, check_config, check_group_pow2, default_config,
                           launch_args)


@triton.jit
def _norm_qgemv_kernel(
    x_ptr, d_ptr, g_ptr, w_ptr, s_ptr, y_ptr, r_ptr, n_ptr, s_wn, s_sn,
    N: tl.constexpr, K: tl.constexpr, KG: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr,
    EPS: tl.constexpr, HAS_DELTA: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr, SLICE: tl.constexpr,
    SLICE_P2: tl.constexpr,
    PDL: tl.constexpr,
    GDC: tl.constexpr,
):
    grid_release(GDC)
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    row_ok = rows < N
    if PDL:
        q, s = _load_q(w_ptr, s_ptr, s_wn, s_sn, rows, row_ok, 0, KG, BG, GROUP, BITS)
        cols = _cols(0, BG, GROUP, BITS)
        col_ok = cols < K
        g = tl.load(g_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        grid_wait(GDC)  # x and delta are earlier kernels' outputs
        r = _residual(x_ptr, d_ptr, cols, col_ok, HAS_DELTA)
        acc = _qdot(q, s, r * (1.0 + g), BITS)  # [BN, BG]
        inv_rms = tl.rsqrt(tl.sum(r * r) / K + EPS)
        tl.store(y_ptr + rows, (tl.sum(acc, 1) * inv_rms).to(y_ptr.dtype.element_ty), mask=row_ok)
        # this program's SLICE columns of r and n, from the registers
        mine = col_ok & (cols >= pid * SLICE) & (cols < (pid + 1) * SLICE)
        _store_norm(r_ptr, n_ptr, r, g, inv_rms, cols, mine)
    else:
        squares = tl.zeros([BG], dtype=tl.float32)
        acc = tl.zeros([BN, BG], dtype=tl.float32)
        for g0 in range(0, KG, BG):
            q, s = _load_q(w_ptr, s_ptr, s_wn, s_sn, rows, row_ok, g0, KG, BG, GROUP, BITS)
            cols = _cols(g0, BG, GROUP, BITS)
            col_ok = cols < K
            g = tl.load(g_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            r = _residual(x_ptr, d_ptr, cols, col_ok, HAS_DELTA)
            squares += _group_sums(r * r, BITS)
            acc += _qdot(q, s, r * (1.0 + g), BITS)
        inv_rms = tl.rsqrt(tl.sum(squares, 0) / K + EPS)
        tl.store(y_ptr + rows, (tl.sum(acc, 1) * inv_rms).to(y_ptr.dtype.element_ty), mask=row_ok)
        # this program's SLICE columns of r and n, read again (the loop's registers hold the last step only)
        cols = pid * SLICE + tl.arange(0, SLICE_P2)
        col_ok = (cols < K) & (cols < (pid + 1) * SLICE)
        r = _residual(x_ptr, d_ptr, cols, col_ok, HAS_DELTA)
        g = tl.load(g_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        _store_norm(r_ptr, n_ptr, r, g, inv_rms, cols, col_ok)


@triton.jit
def _group_sums(v, BITS: tl.constexpr):
    """[BG, ...] in `_cols`' shape -> [BG]: the sum over each group."""
    if BITS == 4:
        v = tl.sum(v, 2)
    return tl.sum(v, 1)


def norm_qgemv(
    x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor, eps: float, qweight: torch.Tensor,
    scales: torch.Tensor, bits: int, group: int, cfg: QGemvConfig | None = None,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as `reference.norm_gemv` for one row; qweight and scales must have a unit stride along K.
    cfg: `default_config(K, bits)` unless given; `out`: (y, r, n)."""
    N, K = weight_shape(qweight, scales, bits, group)
    check_group_pow2(group)
    shapes = [tuple(x.shape), None if delta is None else tuple(delta.shape), tuple(norm_weight.shape)]
    unit = qweight.stride(1) == 1 and scales.stride(1) == 1
    if shapes[0] != (1, K) or shapes[1] not in (None, (1, K)) or shapes[2] != (K,) or not unit:
        got = f"x {shapes[0]}, delta {shapes[1]}, norm weight {shapes[2]}, unit K strides {unit}"
        want = f"x and delta [1, {K}], norm weight [{K}], qweight and scales with unit K stride"
        raise ValueError(f"norm_qgemv wants {want}, got {got}")
    x, g = x.contiguous(), norm_weight.contiguous()
    d = x if delta is None else delta.contiguous()  # an unread stand-in without delta
    if out is None:
        out = (x.new_empty((1, N)), x.new_empty((1, K)), x.new_empty((1, K)))
    y, r, n = out
    cfg = cfg or default_config(K, bits)
    check_config(cfg)
    if cfg.layout == "chunks":
        _norm_qgemv_chunks(x, d, g, eps, qweight, scales, (y, r, n), bits, group, delta is not None, cfg)
        return y, r, n
    bn, bg, launch = launch_args(cfg, N, K, group, y)
    programs = triton.cdiv(N, bn)
    cut = triton.cdiv(K, programs)
    launcher(_norm_qgemv_kernel)[(programs,)](
        x, d, g, qweight, scales, y, r, n, qweight.stride(0), scales.stride(0), N=N, K=K, KG=K // group,
        GROUP=group, BITS=bits, EPS=eps, HAS_DELTA=delta is not None, BN=bn, BG=bg, SLICE=cut,
        SLICE_P2=max(16, next_pow2(cut)), **launch,
    )
    return y, r, n


def _norm_qgemv_chunks(x: torch.Tensor, d: torch.Tensor, g: torch.Tensor, eps: float, qweight: torch.Tensor,
                       scales: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor, torch.Tensor], bits: int,
                       group: int, has_delta: bool, cfg: QGemvConfig) -> None:
    """norm_qgemv in the chunks layout (triton_chunks.py): the packed weights read as int32 words."""
    N, K = scales.shape[0], scales.shape[1] * group
    kc, cg = chunks.chunk_shape(K, bits, group)
    words = qweight.view(torch.int32)  # [N, K bits / 32]
    y, r, n = out
    pdl = pdl_args(cfg.pdl, y)
    bn, bc = min(cfg.block_n, next_pow2(N)), chunks.block_chunks(pdl["PDL"], cfg.block_k, K, bits)
    programs = triton.cdiv(N, bn)
    cut = triton.cdiv(K, programs)
    launcher(chunks._norm_qgemv_chunks_kernel)[(programs,)](
        x, d, g, words, scales, y, r, n, words.stride(0), scales.stride(0), chunks.ONE_BITS, N=N, K=K, KC=kc,
        CG=cg, BITS=bits, EPS=eps, HAS_DELTA=has_delta, BN=bn, BC=bc, STAGES=cfg.stages, SLICE=cut,
        SLICE_P2=max(16, next_pow2(cut)), num_warps=cfg.warps, **pdl,
    )
