"""Decode attention in Triton, split-KV (flash-decoding; design and numbers: DESIGN.md): two kernels per call.

1. `_split_kernel`, grid (Hkv, NSPLIT): pos = input_pos[0] is read on the device, so one captured graph replays at
   any position. The cache positions in use before pos, [0, pos), are cut into NSPLIT ranges of `span` positions
   (a multiple of BN, from pos), and program (hk, j) folds range j into a float32 partial (m, l, acc) for all G
   query heads of KV head hk at once. The new token is never read back from the cache: program j = 0 starts
   from it (its k, v from the inputs) and writes it to the cache at pos, a position no program reads in this call.
   A pad (pos -1) reads and writes no cache entry and leaves range 0 a partial of output 0.
2. `_combine_kernel`, grid (H, D / BDC): merges the partials of the ranges in use into out.
Work and reads grow with pos, not S; NSPLIT is static (from S and Hkv), so the grid is the same at every position.
With `pdl` "on" (kernels/pdl.py) both kernels release their dependents at once and wait for the grid dependency
before their first read, so the combine's programs are resident when the split kernel's last program ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..launch import INTERPRETED, dense, launcher
from ..pdl import grid_release, grid_wait, pdl_args
from .triton_prefill import check_kernel_args
from .triton_softmax import LOG2E, load_kv, update

COMBINE_ELEMENTS = 8192  # partial-output elements one combine program loads at once


@dataclass(frozen=True)
class DecodeConfig:
    block_n: int  # keys per step
    warps: int
    stages: int
    programs: int  # target programs over all KV heads (NSPLIT = programs / Hkv)
    pdl: str = "on"  # programmatic dependent launch (kernels/pdl.py): "on", "serial" or "off"


def decode_config(D: int, dtype: torch.dtype) -> DecodeConfig:
    """The one configuration per static shape class (head dim, dtype); 132 programs: one per SM of an H100;
    bf16 three stages (the best of `scripts/bench_attention.py --configs`, DESIGN.md)."""
    if dtype == torch.float32 and triton.next_power_of_2(D) >= 128:
        return DecodeConfig(16, 4, 2, 132)
    return DecodeConfig(64, 4, 3, 132)


def num_splits(S: int, Hkv: int, config: DecodeConfig) -> int:
    """NSPLIT: static, from the cache length and the KV heads."""
    return max(1, min(config.programs // Hkv, triton.cdiv(S, config.block_n)))


def split_span(pos: int, nsplit: int, block_n: int) -> int:
    """Cache positions per range at position pos, as `_split_kernel` computes it on the device (for tests)."""
    return triton.cdiv(triton.cdiv(pos, nsplit), block_n) * block_n


@triton.jit
def _span(pos, NSPLIT: tl.constexpr, BN: tl.constexpr):
    """Positions per range for cache keys [0, pos): a multiple of BN, NSPLIT ranges covering them (0 at pos 0)."""
    return tl.cdiv(tl.cdiv(pos, NSPLIT), BN) * BN


@triton.jit
def _split_kernel(
    q_ptr, k_ptr, v_ptr, kc_ptr, vc_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, S, s_qh, s_kh, s_vh, s_ch,
    QK_SCALE: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BG: tl.constexpr, BN: tl.constexpr,
    NSPLIT: tl.constexpr, UPCAST: tl.constexpr, GDC: tl.constexpr,
):
    grid_release(GDC)
    grid_wait(GDC)  # q, k, v, the position and the partials (read by the last call's combine) come from before
    hk = tl.program_id(0)
    j = tl.program_id(1)
    pos = tl.load(pos_ptr).to(tl.int32)
    real = pos >= 0  # a pad (-1) reads no cache entry, writes nothing and outputs 0
    in_cache = tl.maximum(tl.minimum(pos, S), 0)  # a position past the cache reads only the cache and writes nothing
    span = _span(in_cache, NSPLIT, BN)
    lo = j * span
    hi = tl.minimum(lo + span, in_cache)
    rows = tl.arange(0, BG)  # the group's query heads, padded to the dot's 16 rows
    live = rows < G
    cd = tl.arange(0, BD)
    dm = cd < D
    heads = hk * G + rows
    q = tl.load(q_ptr + heads[:, None] * s_qh + cd[None, :], mask=live[:, None] & dm[None, :], other=0.0)
    kn = tl.load(k_ptr + hk * s_kh + cd, mask=dm, other=0.0)  # [BD]: the new token
    vn = tl.load(v_ptr + hk * s_vh + cd, mask=dm, other=0.0)
    first = (j == 0) & real
    kc = kc_ptr + hk * s_ch
    vc = vc_ptr + hk * s_ch
    tl.store(kc + pos * D + cd, kn, mask=dm & first & (pos < S))
    tl.store(vc + pos * D + cd, vn, mask=dm & first & (pos < S))
    s_new = tl.sum(q.to(tl.float32) * kn.to(tl.float32)[None, :], 1) * QK_SCALE  # [BG]
    # range 0 of a pad: m 0, l 1, acc 0 (its q, k, v never enter), so the combine writes 0
    m = tl.where(first, s_new, tl.where(j == 0, 0.0, float("-inf")))
    l = tl.where(j == 0, 1.0, 0.0) + tl.zeros([BG], dtype=tl.float32)
    acc = tl.where(first, vn.to(tl.float32)[None, :] + tl.zeros([BG, BD], dtype=tl.float32), 0.0)  # [BG, BD]
    rn = tl.arange(0, BN)
    offs = rn[:, None] * D + cd[None, :]  # [BN, BD]: a block's rows from its first key
    for n in range(lo, hi, BN):
        kin = rn < hi - n
        k, v = load_kv(kc + n * D, vc + n * D, offs, kin, cd, D, True)  # [BN, BD]
        acc, m, l = update(acc, m, l, q, k, v, QK_SCALE, kin[None, :], True, UPCAST)
    part = heads * NSPLIT + j  # [BG]: partials are [H, NSPLIT] (and [H, NSPLIT, D])
    tl.store(m_ptr + part, m, mask=live)
    tl.store(l_ptr + part, l, mask=live)
    used = (j == 0) | (lo < hi)  # ranges past the positions in use leave their acc unwritten
    tl.store(acc_ptr + part[:, None] * D + cd[None, :], acc, mask=(live & used)[:, None] & dm[None, :])


@triton.jit
def _combine_kernel(
    m_ptr, l_ptr, acc_ptr, o_ptr, pos_ptr, S, s_oh,
    D: tl.constexpr, BDC: tl.constexpr, BS: tl.constexpr, BN: tl.constexpr, NSPLIT: tl.constexpr,
    GDC: tl.constexpr,
):
    grid_release(GDC)
    grid_wait(GDC)  # the partials are the split kernel's output
    h = tl.program_id(0)
    cd = tl.program_id(1) * BDC + tl.arange(0, BDC)
    in_cache = tl.maximum(tl.minimum(tl.load(pos_ptr).to(tl.int32), S), 0)
    span = _span(in_cache, NSPLIT, BN)
    # ranges that held keys, and range 0 (the new token) always
    used = tl.maximum(tl.cdiv(in_cache, tl.maximum(span, 1)), 1)
    js = tl.arange(0, BS)
    act = js < used
    m = tl.load(m_ptr + h * NSPLIT + js, mask=act, other=float("-inf"))  # [BS]
    l = tl.load(l_ptr + h * NSPLIT + js, mask=act, other=0.0)
    w = tl.where(act, tl.exp2(m - tl.max(m, 0)), 0.0)
    a = tl.load(acc_ptr + (h * NSPLIT + js)[:, None] * D + cd[None, :], mask=act[:, None] & (cd < D)[None, :],
                other=0.0)  # [BS, BDC]
    o = tl.sum(w[:, None] * a, 0) / tl.sum(w * l, 0)
    tl.store(o_ptr + h * s_oh + cd, o.to(o_ptr.dtype.element_ty), mask=cd < D)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
           input_pos: torch.Tensor, out: torch.Tensor, config: DecodeConfig) -> torch.Tensor:
    """Both kernels: q [1, H, D], the new k, v [1, Hkv, D] (written to the caches by the first) -> out [1, H, D]."""
    H, D = q.shape[1], q.shape[2]
    Hkv, S = k_cache.shape[0], k_cache.shape[1]
    G = H // Hkv
    nsplit = num_splits(S, Hkv, config)
    BD = max(16, triton.next_power_of_2(D))
    m = torch.empty((H, nsplit), dtype=torch.float32, device=q.device)
    l = torch.empty((H, nsplit), dtype=torch.float32, device=q.device)
    acc = torch.empty((H, nsplit, D), dtype=torch.float32, device=q.device)
    pdl = pdl_args(config.pdl, q)
    pdl.pop("PDL")  # one form: GDC alone gates the grid steps
    launcher(_split_kernel)[(Hkv, nsplit)](
        q, k, v, k_cache, v_cache, input_pos, m, l, acc, S,
        q.stride(1), k.stride(1), v.stride(1), k_cache.stride(0),
        QK_SCALE=D**-0.5 * LOG2E, G=G, D=D, BD=BD, BG=max(16, triton.next_power_of_2(G)), BN=config.block_n,
        NSPLIT=nsplit, UPCAST=INTERPRETED, num_warps=config.warps, num_stages=config.stages, **pdl,
    )
    BS = triton.next_power_of_2(nsplit)
    BDC = min(BD, max(16, COMBINE_ELEMENTS // BS))
    launcher(_combine_kernel)[(H, triton.cdiv(D, BDC))](
        m, l, acc, out, input_pos, S, out.stride(1),
        D=D, BDC=BDC, BS=BS, BN=config.block_n, NSPLIT=nsplit, num_warps=4, **pdl,
    )
    return out


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, input_pos: torch.Tensor, out: torch.Tensor | None = None,
                     config: DecodeConfig | None = None) -> torch.Tensor:
    """Same contract as `reference.decode_attention`. `out` [1, H, D], if given, receives the output (tests pass a
    NaN-filled one); `config` overrides the shipped configuration (benchmark sweeps, tests of small splits)."""
    check_kernel_args(q, k, v, k_cache, v_cache, input_pos, decode=True)
    q, k, v = dense(q, k, v)
    o = torch.empty_like(q) if out is None else out
    return attend(q, k, v, k_cache, v_cache, input_pos, o, config or decode_config(q.shape[2], q.dtype))
