"""Prefill attention in Triton (design and numbers: DESIGN.md): two kernels per call.

1. `_write_kernel`, grid (T / 16, Hkv): the chunk's k, v rows into the caches at input_pos.
2. `_prefill_kernel`, grid (T / BT, Hkv): causal flash attention of a tile of BT tokens x the G query heads of one
   KV head (BM = BT G rows, GQA packed: each K/V tile is loaded once for the whole group) against the cache. The
   tokens' positions are read on the device; the tile's keys are [0, its last position]: blocks below the tile's
   first position unmasked, the rest (the diagonal, a block or two) masked. Online softmax in float32; nothing of
   size T x S exists, and the work grows with the positions in use, not with S.
Pads (input_pos -1, after the real tokens): the write kernel skips them; in the attention kernel a pad row stores 0.
It reads the keys below its tile's first real position and key 0 (in use whenever the call has a real token), so
a tile of pads costs one key block and a real row's blocks are the unpadded call's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..launch import INTERPRETED, dense, launcher
from .reference import check_args
from .triton_softmax import LOG2E, load_kv, update

WRITE_TOKENS = 16  # tokens per program of the cache write


@dataclass(frozen=True)
class PrefillConfig:
    block_m: int  # rows per program: tokens x query heads of one KV head
    block_n: int  # keys per step
    warps: int
    stages: int


def prefill_config(D: int, dtype: torch.dtype) -> PrefillConfig:
    """The one configuration per static shape class (head dim, dtype)."""
    BD = triton.next_power_of_2(D)
    if dtype == torch.float32:  # IEEE float32 dots run on the CUDA cores, with operands in registers
        return PrefillConfig(32, 16, 8, 1) if BD >= 128 else PrefillConfig(64, 32, 8, 1)
    if BD >= 256:
        return PrefillConfig(128, 64, 8, 2)
    return PrefillConfig(64, 64, 4, 2)


def check_kernel_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, input_pos: torch.Tensor, decode: bool) -> None:
    """check_args for the Triton kernels: bf16 or fp32, and 32-bit cache offsets."""
    check_args(q, k, v, k_cache, v_cache, input_pos, decode, dtypes=(torch.bfloat16, torch.float32))
    if k_cache.numel() >= 2**31:
        raise ValueError(f"a cache of {k_cache.numel()} elements needs 64-bit offsets (at most 2**31 - 1)")


@triton.jit(do_not_specialize=["T"])  # one binary for every chunk length
def _write_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, pos_ptr, T, S, s_kt, s_kh, s_vt, s_vh, s_ch,
    D: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
):
    hk = tl.program_id(1)
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    pos = tl.load(pos_ptr + t, mask=t < T, other=S).to(tl.int32)  # [BT]
    cd = tl.arange(0, BD)
    # [BT, BD]: a pad (position -1) or a position past the cache writes nothing
    ok = ((t < T) & (pos >= 0) & (pos < S))[:, None] & (cd < D)[None, :]
    dst = hk * s_ch + pos[:, None] * D + cd[None, :]
    tl.store(kc_ptr + dst, tl.load(k_ptr + t[:, None] * s_kt + hk * s_kh + cd[None, :], mask=ok), mask=ok)
    tl.store(vc_ptr + dst, tl.load(v_ptr + t[:, None] * s_vt + hk * s_vh + cd[None, :], mask=ok), mask=ok)


@triton.jit(do_not_specialize=["T"])
def _prefill_kernel(
    q_ptr, kc_ptr, vc_ptr, o_ptr, pos_ptr, T, S, s_qt, s_qh, s_ot, s_oh, s_ch,
    QK_SCALE: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr,
    BT: tl.constexpr, BN: tl.constexpr, UPCAST: tl.constexpr,
):
    i_t = tl.num_programs(0) - 1 - tl.program_id(0)  # the longest key ranges first: a shorter tail
    hk = tl.program_id(1)
    r = tl.arange(0, BM)
    tok = i_t * BT + r // G  # [BM]: row r is token tok, query head hk G + r % G
    live = (r < BT * G) & (tok < T)
    cd = tl.arange(0, BD)  # D padded to a power of two; padding loads zeros
    dm = cd < D
    tpos = tl.load(pos_ptr + tok, mask=live, other=0).to(tl.int32)  # [BM]
    real = tpos >= 0
    qpos = tl.where(real, tpos, 0)  # a pad row sees key 0 only (its output is replaced by 0)
    q = tl.load(q_ptr + tok[:, None] * s_qt + (hk * G + r % G)[:, None] * s_qh + cd[None, :],
                mask=live[:, None] & dm[None, :], other=0.0)  # [BM, BD]
    # keys [0, hi): up to the tile's last token; entries past it may be stale and are never loaded
    hi = tl.minimum(tl.max(qpos, 0) + 1, S)
    # keys below the tile's first real position are visible to all its rows: a mixed tile's real rows run the
    # unpadded call's blocks (bit-equal), its pad rows read them too (finite keys in use; the row is stored as 0);
    # a tile of pads only has no such block and reads key 0 alone
    split = tl.minimum(tl.min(tl.where(live & real, qpos, S), 0), hi) // BN * BN
    rn = tl.arange(0, BN)
    offs = rn[:, None] * D + cd[None, :]  # [BN, BD]: a block's rows from its first key
    kc = kc_ptr + hk * s_ch
    vc = vc_ptr + hk * s_ch
    acc = tl.zeros([BM, BD], dtype=tl.float32)
    m = tl.full([BM], float("-inf"), dtype=tl.float32)
    l = tl.zeros([BM], dtype=tl.float32)
    for n in range(0, split, BN):
        k, v = load_kv(kc + n * D, vc + n * D, offs, None, cd, D, False)  # [BN, BD]
        acc, m, l = update(acc, m, l, q, k, v, QK_SCALE, None, False, UPCAST)
    for n in range(split, hi, BN):
        kin = rn < hi - n
        k, v = load_kv(kc + n * D, vc + n * D, offs, kin, cd, D, True)  # [BN, BD]
        visible = (rn[None, :] <= (qpos - n)[:, None]) & kin[None, :]  # [BM, BN]
        acc, m, l = update(acc, m, l, q, k, v, QK_SCALE, visible, True, UPCAST)
    o = tl.where(real[:, None], acc / l[:, None], 0.0)
    tl.store(o_ptr + tok[:, None] * s_ot + (hk * G + r % G)[:, None] * s_oh + cd[None, :],
             o.to(o_ptr.dtype.element_ty), mask=live[:, None] & dm[None, :])


def write_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                input_pos: torch.Tensor) -> None:
    """k, v [T, Hkv, D] into the caches [Hkv, S, D] at input_pos [T]."""
    T, Hkv, D = k.shape
    launcher(_write_kernel)[(triton.cdiv(T, WRITE_TOKENS), Hkv)](
        k, v, k_cache, v_cache, input_pos, T, k_cache.shape[1],
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), k_cache.stride(0),
        D=D, BD=triton.next_power_of_2(D), BT=WRITE_TOKENS,
    )


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, input_pos: torch.Tensor,
           out: torch.Tensor, config: PrefillConfig) -> torch.Tensor:
    """The attention kernel alone: q [T, H, D] over the caches (already written) into out [T, H, D]."""
    T, H, D = q.shape
    Hkv = k_cache.shape[0]
    G = H // Hkv
    BM = max(config.block_m, triton.next_power_of_2(G))
    BT = BM // G
    launcher(_prefill_kernel)[(triton.cdiv(T, BT), Hkv)](
        q, k_cache, v_cache, out, input_pos, T, k_cache.shape[1],
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), k_cache.stride(0),
        QK_SCALE=D**-0.5 * LOG2E, G=G, D=D, BD=max(16, triton.next_power_of_2(D)), BM=BM, BT=BT,
        BN=config.block_n, UPCAST=INTERPRETED, num_warps=config.warps, num_stages=config.stages,
    )
    return out


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, input_pos: torch.Tensor, out: torch.Tensor | None = None,
                      config: PrefillConfig | None = None) -> torch.Tensor:
    """Same contract as `reference.prefill_attention`. `out` [T, H, D], if given, receives the output (tests pass
    a NaN-filled one); `config` overrides the shipped tile configuration (benchmark sweeps)."""
    check_kernel_args(q, k, v, k_cache, v_cache, input_pos, decode=False)
    q, k, v = dense(q, k, v)
    write_cache(k, v, k_cache, v_cache, input_pos)
    o = torch.empty_like(q) if out is None else out
    return attend(q, k_cache, v_cache, input_pos, o, config or prefill_config(q.shape[2], q.dtype))
