"""One-token projection y = act(x) @ dequantize(qweight, scales)^T as a Triton mat-vec kernel, dequantizing in
registers (`reference.py` has the storage layout).

Grid: (N / BN,), as `gemv/triton_gemv.py`: a program owns BN output rows and streams their packed weights along
the contiguous K axis, a step being BG whole groups: a [BN, BG, GB] tile of bytes (GB = a group's bytes, 16 or
more, so each thread loads 16 contiguous bytes) and the [BN, BG] scales. Each group's dot with the float32
activations is summed first and scaled once: sum_k q_k a_k * s. Integers become floats by the exponent trick
(OR the value into the mantissa of 2^23, subtract 2^23 + offset): I2F is a quarter-rate instruction on sm_90, and
int4 at memory speed needs about 26 conversions per SM clock.

Two forms, chosen by the static K (`default_config`): up to PDL_MAX_K the PDL form takes K in one step and
loads its weights and scales before the grid wait (kernels/pdl.py); above it, the loop over K in BG-group steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from ..gemv.reference import ACTS
from ..gemv.triton_gemv import _activation
from ..launch import launcher, next_pow2
from ..pdl import grid_release, grid_wait, pdl_args
from . import triton_chunks as chunks
from .reference import weight_shape

# the PDL form holds a program's whole [BN, K] bytes and its K activations in registers
PDL_MAX_K = 4096
MAGIC = tl.constexpr(0x4B000000)  # float32 2^23: OR-ing an integer 0 <= i < 2^23 into its mantissa gives 2^23 + i
ONE = tl.constexpr(0x3F800000)  # float32 1.0
NIBBLE = tl.constexpr(0xF << 19)  # the top 4 bits of float32's mantissa


@dataclass(frozen=True)
class QGemvConfig:
    block_n: int = 8  # output rows per program
    block_k: int = 1024  # weight columns per step of the loop form (rounded to whole groups)
    warps: int = 4
    # programmatic dependent launch (kernels/pdl.py): "on" / "serial" run the PDL form, one step over K
    pdl: str = "off"
    # "groups": [BN, BG, group bytes] byte tiles (this file); "chunks": [BC, BN, 4] int32 word tiles (triton_chunks)
    layout: str = "groups"
    stages: int = 1  # software pipelining of the loop form's loads (tl.range num_stages; "chunks" only)


LAYOUTS = ("groups", "chunks")


def default_config(K: int, bits: int) -> QGemvConfig:
    """The config gdn::qgemv and gdn::norm_qgemv run, from the static K and bits: 8 KiB of weight bytes per
    program and step at K = 2048 (8 int4 rows, 4 int8 rows: 64 bytes a thread at 4 warps), 8 warps for long
    rows, the PDL form where one step over K fits."""
    return QGemvConfig(8 if bits == 4 else 4, 1024, 8 if K >= 4096 else 4, pdl="on" if K <= PDL_MAX_K else "off")


def candidates(K: int, bits: int) -> dict[str, QGemvConfig]:
    """Configs for a timing run at one static K (scripts/bench_qgemv.py --configs): the shipped one and the
    chunks layout with 8-32 KiB of weight bytes per program in the PDL form (where K allows it) and the loop
    form with 2 or 3 stages of 8 KiB steps."""
    row = K * bits // 8  # bytes of one row
    pdl = "on" if K <= PDL_MAX_K else "off"
    out = {"shipped": default_config(K, bits)}
    if pdl == "on":
        for kib, warps in ((8, 4), (16, 4), (32, 4), (32, 8)):
            out[f"chunks-{kib}k-{warps}w"] = QGemvConfig(max(1, (kib << 10) // row), 1024, warps, pdl, "chunks")
    step = (8 << 10) * 8 // bits // 16  # columns of a 16-row, 8 KiB step
    for stages in (2, 3):
        out[f"chunks-loop-{stages}s"] = QGemvConfig(16, step, 4, "off", "chunks", stages)
    return out


def check_config(cfg: QGemvConfig) -> None:
    if cfg.layout not in LAYOUTS or cfg.stages < 1 or (cfg.stages > 1 and cfg.layout != "chunks"):
        raise ValueError(f"qgemv config wants layout in {LAYOUTS} and stages >= 1 (> 1 only for chunks), got {cfg}")


def check_group_pow2(group: int) -> None:
    if group & (group - 1) or group < 2:
        raise ValueError(f"the Triton qgemv kernels take power-of-two group sizes >= 2, got {group}")


def launch_args(cfg: QGemvConfig, N: int, K: int, group: int, like: torch.Tensor) -> tuple[int, int, dict[str, Any]]:
    """-> (BN, BG: groups per step, the launch's num_warps and PDL arguments); `like`: one of the kernel's
    tensors (pdl_args). The PDL form takes all (power-of-two padded) K / group groups in one step."""
    pdl = pdl_args(cfg.pdl, like)
    whole = next_pow2(K // group)
    bg = whole if pdl["PDL"] else min(max(1, cfg.block_k // group), whole)
    return min(cfg.block_n, next_pow2(N)), bg, {"num_warps": cfg.warps, **pdl}


@triton.jit
def _cols(g0, BG: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr):
    """Activation columns of the BG groups from group g0, in the weight tile's order: [BG, GROUP] (int8), or
    [BG, GROUP / 2, 2] (int4: byte h of a group holds columns 2h and 2h + 1)."""
    g = g0 + tl.arange(0, BG)
    if BITS == 4:
        h = tl.arange(0, GROUP // 2)
        t = tl.arange(0, 2)
        cols = g[:, None, None] * GROUP + 2 * h[None, :, None] + t[None, None, :]
    else:
        cols = g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    return cols


@triton.jit
def _load_q(w_ptr, s_ptr, s_wn, s_sn, rows, row_ok, g0,
            KG: tl.constexpr, BG: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr):
    """-> the raw bytes [BN, BG, GB] and scales [BN, BG] of BG groups from group g0 (zero past N and K)."""
    GB: tl.constexpr = GROUP * BITS // 8
    g = g0 + tl.arange(0, BG)
    ok = row_ok[:, None] & (g < KG)[None, :]  # [BN, BG]
    h = tl.arange(0, GB)
    q = tl.load(w_ptr + rows[:, None, None] * s_wn + g[None, :, None] * GB + h[None, None, :], mask=ok[:, :, None],
                other=0)
    s = tl.load(s_ptr + rows[:, None] * s_sn + g[None, :], mask=ok, other=0.0)
    return q, s


@triton.jit
def _qdot(q, s, a, BITS: tl.constexpr):
    """Per group, sum_k q_k a_k times the group's scale: [BN, BG] float32. q [BN, BG, GB] bytes, a the float32
    activations in `_cols`' shape."""
    b = q.to(tl.int32)  # int4: uint8 zero-extends; int8: sign-extends
    if BITS == 4:
        # a nibble u into the mantissa of 1.0: 1 + u / 16; q = u - 8, so sum q a = 16 (sum (1 + u / 16) a - 1.5 sum a)
        lo = (((b << 19) & NIBBLE) | ONE).to(tl.float32, bitcast=True)
        hi = (((b << 15) & NIBBLE) | ONE).to(tl.float32, bitcast=True)
        a_lo, a_hi = tl.split(a)  # [BG, GB] each: even and odd columns
        p = tl.sum(lo * a_lo[None, :, :] + hi * a_hi[None, :, :], 2) - 1.5 * tl.sum(a_lo + a_hi, 1)[None, :]
        return p * (16.0 * s.to(tl.float32))
    else:
        w = (b + (MAGIC + 128)).to(tl.float32, bitcast=True) - 8388736.0  # 2^23 + 128
        return tl.sum(w * a[None, :, :], 2) * s.to(tl.float32)


@triton.jit
def _qgemv_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr, s_wn, s_sn,
    N: tl.constexpr, K: tl.constexpr, KG: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr,
    SILU_MUL: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr,
    PDL: tl.constexpr,
    GDC: tl.constexpr,
):
    grid_release(GDC)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    if PDL:
        q, s = _load_q(w_ptr, s_ptr, s_wn, s_sn, rows, row_ok, 0, KG, BG, GROUP, BITS)
        cols = _cols(0, BG, GROUP, BITS)
        grid_wait(GDC)  # x is the previous kernel's output
        acc = _qdot(q, s, _activation(x_ptr, cols, cols < K, K, SILU_MUL), BITS)  # [BN, BG]
    else:
        acc = tl.zeros([BN, BG], dtype=tl.float32)
        for g0 in range(0, KG, BG):
            q, s = _load_q(w_ptr, s_ptr, s_wn, s_sn, rows, row_ok, g0, KG, BG, GROUP, BITS)
            cols = _cols(g0, BG, GROUP, BITS)
            acc += _qdot(q, s, _activation(x_ptr, cols, cols < K, K, SILU_MUL), BITS)
    tl.store(y_ptr + rows, tl.sum(acc, 1).to(y_ptr.dtype.element_ty), mask=row_ok)


def qgemv(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int, group: int, act: str,
    cfg: QGemvConfig | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as `reference.gemv`; qweight and scales must have a unit stride along K. cfg:
    `default_config(K, bits)` unless given."""
    if act not in ACTS:
        raise ValueError(f"unknown gemv activation {act!r} (expected one of {ACTS})")
    N, K = weight_shape(qweight, scales, bits, group)
    check_group_pow2(group)
    want = 2 * K if act == "silu_mul" else K
    if tuple(x.shape) != (1, want) or qweight.stride(1) != 1 or scales.stride(1) != 1:
        got = f"x {tuple(x.shape)}, qweight stride {qweight.stride()}, scales stride {scales.stride()}"
        raise ValueError(f"qgemv wants x [1, {want}] and qweight, scales with unit K stride, got {got}")
    x = x.contiguous()
    y = torch.empty((1, N), dtype=x.dtype, device=x.device) if out is None else out
    cfg = cfg or default_config(K, bits)
    check_config(cfg)
    if cfg.layout == "chunks":
        return _qgemv_chunks(x, qweight, scales, y, bits, group, act, cfg)
    bn, bg, launch = launch_args(cfg, N, K, group, y)
    launcher(_qgemv_kernel)[(triton.cdiv(N, bn),)](
        x, qweight, scales, y, qweight.stride(0), scales.stride(0), N=N, K=K, KG=K // group, GROUP=group,
        BITS=bits, SILU_MUL=act == "silu_mul", BN=bn, BG=bg, **launch,
    )
    return y


def _qgemv_chunks(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, y: torch.Tensor, bits: int,
                  group: int, act: str, cfg: QGemvConfig) -> torch.Tensor:
    """qgemv in the chunks layout (triton_chunks.py): the packed weights read as int32 words."""
    N, K = scales.shape[0], scales.shape[1] * group
    kc, cg = chunks.chunk_shape(K, bits, group)
    words = qweight.view(torch.int32)  # [N, K bits / 32]
    pdl = pdl_args(cfg.pdl, y)
    bn, bc = min(cfg.block_n, next_pow2(N)), chunks.block_chunks(pdl["PDL"], cfg.block_k, K, bits)
    launcher(chunks._qgemv_chunks_kernel)[(triton.cdiv(N, bn),)](
        x, words, scales, y, words.stride(0), scales.stride(0), chunks.ONE_BITS, N=N, K=K, KC=kc, CG=cg,
        BITS=bits, SILU_MUL=act == "silu_mul", BN=bn, BC=bc, STAGES=cfg.stages, num_warps=cfg.warps, **pdl,
    )
    return y
