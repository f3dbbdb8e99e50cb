"""Causal GQA attention over a static KV cache in plain PyTorch: the specification the Triton kernels are tested
against, and the CPU kernel of both ops (CPU artifacts call it directly; it traces into ATen ops).

    prefill_attention(q, k, v, k_cache, v_cache, input_pos) -> out
    decode_attention(q, k, v, k_cache, v_cache, input_pos) -> out        (T == 1)

q [T, H, D]; k, v [T, Hkv, D] (the chunk's keys and values, already normed and rotated); k_cache, v_cache
[Hkv, S, D] (S = max_seq_len); input_pos [T] int64, contiguous increasing positions. First the chunk's k, v are
written into the caches at input_pos (in place: the caches are mutated), then query i attends to cache positions
0 .. input_pos[i] with scale D ** -0.5; query head h reads KV head h // (H // Hkv). out [T, H, D] in q's dtype.

Pads: a token with input_pos -1 is a pad, and pads come after the real tokens (prefill), or are the one token
(a decode no-op). A pad writes nothing into the caches, its output row is 0, and nothing of it (q, k, v: garbage,
NaN included) reaches a real row; the real rows are those of the call without the pads.

Here the keys are visited in static chunks of KEY_CHUNK cache positions with an online softmax, so no tensor grows
with T x S; it is computed in float32 (float64 inputs: float64). The chunk loop covers the whole cache (its count
is static, S / KEY_CHUNK); cache entries past the last position in use are masked out, so stale ones, NaN
included, never reach the output.
"""

from __future__ import annotations

import torch

KEY_CHUNK = 512  # cache positions per step of the online softmax
DTYPES = (torch.bfloat16, torch.float32, torch.float64)


def check_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               input_pos: torch.Tensor, decode: bool, dtypes: tuple[torch.dtype, ...] = DTYPES) -> None:
    """One clear line for arguments the ops cannot take (static properties, checked while tracing too)."""
    if q.dim() != 3 or k.dim() != 3 or k_cache.dim() != 3:
        raise ValueError(f"q, k must be [T, H, D] and the caches [Hkv, S, D], got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, k_cache {tuple(k_cache.shape)}")
    T, H, D = q.shape
    Hkv = k_cache.shape[0]
    if decode and T != 1:
        raise ValueError(f"decode_attention takes one token, got T={T}")
    if tuple(k.shape) != (T, Hkv, D) or tuple(v.shape) != (T, Hkv, D):
        raise ValueError(f"k and v must be [{T}, {Hkv}, {D}], got {tuple(k.shape)} and {tuple(v.shape)}")
    if H % Hkv != 0:
        raise ValueError(f"query heads H={H} are not a multiple of KV heads Hkv={Hkv}")
    if k_cache.shape[2] != D or v_cache.shape != k_cache.shape:
        raise ValueError(f"caches must both be [{Hkv}, S, {D}], got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous (they are updated in place)")
    if input_pos.dim() != 1 or input_pos.shape[0] != T or input_pos.dtype != torch.int64:
        raise ValueError(f"input_pos must be int64 [{T}], got {input_pos.dtype} {tuple(input_pos.shape)}")
    if q.dtype not in dtypes or any(t.dtype != q.dtype for t in (k, v, k_cache, v_cache)):
        names = ", ".join(str(t.dtype) for t in (q, k, v, k_cache, v_cache))
        raise ValueError(f"q, k, v and the caches must share one dtype of {[str(d) for d in dtypes]}, got {names}")


def write_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                input_pos: torch.Tensor) -> None:
    """k, v [T, Hkv, D] into the caches at input_pos, in place: index_put_, the op whose functional form
    ExecuTorch's reinplace pass turns back into an in-place write (no copy of the cache in CPU programs).
    index_put_ cannot skip a row, so pad t (input_pos -1) writes back the value its slot already holds, at
    (max(input_pos[0], 0) + t) mod S: a slot no real token of the call writes while T <= S (no duplicate index)."""
    T, S = input_pos.shape[0], k_cache.shape[1]
    valid = (input_pos >= 0)[:, None, None]  # [T, 1, 1]
    # a non-negative dividend: ExecuTorch's integer remainder of a negative one is negative
    spare = torch.remainder(input_pos[:1].clamp(min=0) + torch.arange(T, device=input_pos.device), S)  # [T]
    slots = torch.where(valid[:, 0, 0], input_pos, spare)
    for new, cache in ((k, k_cache), (v, v_cache)):
        old = cache.index_select(1, slots).transpose(0, 1)  # [T, Hkv, D]
        torch.ops.aten.index_put_(cache, [None, slots], torch.where(valid, new, old).transpose(0, 1))


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """q [T, H, D] against the caches [Hkv, S, D]: query i sees positions 0 .. input_pos[i] -> [T, H, D]."""
    T, H, D = q.shape
    Hkv, S = k_cache.shape[0], k_cache.shape[1]
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    qh = q.to(ct).reshape(T, Hkv, H // Hkv, D).permute(1, 2, 0, 3) * D**-0.5  # [Hkv, G, T, D]
    last = input_pos.amax(0, keepdim=True)  # [1]: entries past the last real position are stale
    m = torch.full((Hkv, H // Hkv, T, 1), float("-inf"), dtype=ct, device=q.device)
    l = torch.zeros_like(m)
    acc = torch.zeros_like(qh)
    # position 0, in the first chunk, is visible to every real query: its m is finite from the first chunk on
    for c in range(0, S, KEY_CHUNK):
        n = min(KEY_CHUNK, S - c)
        keys = torch.arange(c, c + n, device=q.device)  # [n]
        kc = k_cache[:, c : c + n].to(ct).unsqueeze(1)  # [Hkv, 1, n, D]
        vc = v_cache[:, c : c + n].to(ct)
        vc = torch.where((keys <= last)[:, None], vc, torch.zeros_like(vc)).unsqueeze(1)
        s = qh @ kc.transpose(-1, -2)  # [Hkv, G, T, n]
        s = torch.where(keys[None, :] <= input_pos[:, None], s, torch.full_like(s, float("-inf")))
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))
        p = torch.exp(s - m_new)
        alpha = torch.exp(m - m_new)
        l = l * alpha + p.sum(-1, keepdim=True)
        acc = acc * alpha + p @ vc
        m = m_new
    return pad_rows_zero((acc / l).permute(2, 0, 1, 3).reshape(T, H, D), input_pos).to(q.dtype)


def pad_rows_zero(out: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """out [T, H, D] with the pads' rows 0: a pad sees no key, and its softmax over nothing is NaN."""
    return torch.where((input_pos >= 0)[:, None, None], out, torch.zeros((), dtype=out.dtype, device=out.device))


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """Write k, v at input_pos, then causal attention of q over the caches (module docstring)."""
    check_args(q, k, v, k_cache, v_cache, input_pos, decode=False)
    write_cache(k, v, k_cache, v_cache, input_pos)
    return attend(q, k_cache, v_cache, input_pos)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """prefill_attention for one token (T == 1)."""
    check_args(q, k, v, k_cache, v_cache, input_pos, decode=True)
    write_cache(k, v, k_cache, v_cache, input_pos)
    return attend(q, k_cache, v_cache, input_pos)
