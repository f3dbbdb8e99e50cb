"""Router in Triton: softmax in float32, top-k (ties go to the lower expert index), renormalisation."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def route_row(
    logits_ptr,
    row_offset,
    col_stride,
    E: tl.constexpr,
    E_P2: tl.constexpr,
    TOP_K: tl.constexpr,
    K_P2: tl.constexpr,
    RENORM: tl.constexpr,
):
    """One token's router: -> expert ids [K_P2] int32, weights [K_P2] float32 (slots >= TOP_K are 0)."""
    offs = tl.arange(0, E_P2)
    valid = offs < E
    logit = tl.load(logits_ptr + row_offset + offs * col_stride, mask=valid, other=float("-inf")).to(tl.float32)
    prob = tl.where(valid, tl.exp(logit - tl.max(logit, 0)), 0.0)  # unnormalised softmax
    slots = tl.arange(0, K_P2)
    ids = tl.zeros([K_P2], dtype=tl.int32)
    top = tl.zeros([K_P2], dtype=tl.float32)
    left = logit
    for j in tl.static_range(TOP_K):
        best = tl.max(left, 0)
        pick = tl.min(tl.where(left == best, offs, E_P2), 0)
        pick = tl.minimum(pick, E - 1)  # only reachable when every remaining logit is -inf (weight 0)
        ids = tl.where(slots == j, pick, ids)
        top = tl.where(slots == j, tl.sum(tl.where(offs == pick, prob, 0.0), 0), top)
        left = tl.where(offs == pick, float("-inf"), left)
    if RENORM:
        top = top / tl.sum(top, 0)
    else:
        top = top / tl.sum(prob, 0)
    return ids, top


@triton.jit
def route_kernel(
    logits_ptr,
    row_stride,
    col_stride,
    ids_ptr,
    weights_ptr,
    E: tl.constexpr,
    E_P2: tl.constexpr,
    TOP_K: tl.constexpr,
    K_P2: tl.constexpr,
    RENORM: tl.constexpr,
):
    """One program per token: ids [T, TOP_K] int32, weights [T, TOP_K] float32."""
    t = tl.program_id(0).to(tl.int64)
    ids, top = route_row(logits_ptr, t * row_stride, col_stride, E, E_P2, TOP_K, K_P2, RENORM)
    slots = tl.arange(0, K_P2)
    tl.store(ids_ptr + t * TOP_K + slots, ids, mask=slots < TOP_K)
    tl.store(weights_ptr + t * TOP_K + slots, top, mask=slots < TOP_K)
