"""One-token attention over the static KV cache as the ExecuTorch CPU runtime runs it fastest: the CPU kernel of
decode_attention (kernels/sets.py's REFERENCE set), with `reference.py`'s contract (arguments, in-place cache
writes, outputs within tolerance of the dense float64 softmax, stale entries never reaching the output). CPU
prefill keeps the reference's loop over key chunks, so no tensor grows with T x S; one token's scores are [S].

One dense softmax over every cache position instead of the reference's loop over key chunks: two batched matmuls
(XNNPACK; bmm, never @, whose batch broadcasting copies the whole cache in the edge dialect), a softmax over
the last dim and a few elementwise ops per call, so the traced program stays small whatever max_seq_len is.
Entries past the last position in use are masked in the scores and zeroed in the values, so stale ones, NaN
included, never reach the output. A pad (input_pos -1) sees no key; its row is set to 0 (reference.py).
Computed in float32 (float64 inputs: float64). Each call still reads the whole cache: its work grows with
max_seq_len, not with the positions in use.
"""

from __future__ import annotations

import torch

from .reference import check_args, pad_rows_zero, write_cache


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """q [T, H, D] against the caches [Hkv, S, D]: query i sees positions 0 .. input_pos[i] -> [T, H, D]."""
    T, H, D = q.shape
    Hkv, S = k_cache.shape[0], k_cache.shape[1]
    G = H // Hkv
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    # [Hkv, G T, D], row g * T + t: the query heads sharing a KV head stacked
    qh = q.to(ct).reshape(T, Hkv, G, D).permute(1, 2, 0, 3).reshape(Hkv, G * T, D) * D**-0.5
    keys = torch.arange(S, device=q.device)
    visible = keys[None, :] <= input_pos.repeat(G)[:, None]  # [G T, S]
    # bmm, not @: matmul's broadcasting would copy the whole cache (an expand) in the edge dialect
    s = torch.where(visible, torch.bmm(qh, k_cache.to(ct).transpose(1, 2)), float("-inf"))  # [Hkv, G T, S]
    p = torch.softmax(s, dim=-1)
    # a select, not a product (0 x NaN is NaN), over a [1, S, 1] mask: cheaper than masked_fill's expanded [S, D]
    keep = (keys <= input_pos.amax(0, keepdim=True))[None, :, None]
    v = torch.where(keep, v_cache.to(ct), torch.zeros((), dtype=ct))  # [Hkv, S, D]
    o = torch.bmm(p, v)  # [Hkv, G T, D]
    return pad_rows_zero(o.reshape(Hkv, G, T, D).permute(2, 0, 1, 3).reshape(T, H, D), input_pos).to(q.dtype)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """Write the token's k, v at input_pos, then its attention over the caches (reference.py's contract)."""
    check_args(q, k, v, k_cache, v_cache, input_pos, decode=True)
    write_cache(k, v, k_cache, v_cache, input_pos)
    return attend(q, k_cache, v_cache, input_pos)
