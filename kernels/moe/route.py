"""Router in Triton: softmax in float32, top-k (ties go to the lower expert index), renormalisation."""

from __future__ import annotations

import triton
import triton.language as tl

# top-k methods: three block-wide reductions per pick; one, over packed keys; one bitonic top-k of those keys
PICKS = ("argmax", "packed", "topk")


@triton.jit
def load_logits(logits_ptr, row_offset, col_stride, E: tl.constexpr, E_P2: tl.constexpr):
    """One token's logits in float32 [E_P2] (-inf past E), their indices and validity."""
    offs = tl.arange(0, E_P2)
    valid = offs < E
    logit = tl.load(logits_ptr + row_offset + offs * col_stride, mask=valid, other=float("-inf")).to(tl.float32)
    return offs, valid, logit


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
    offs, valid, logit = load_logits(logits_ptr, row_offset, col_stride, E, E_P2)
    prob = tl.where(valid, tl.exp(logit - tl.max(logit, 0)), 0.0)  # unnormalised softmax
    slots = tl.arange(0, K_P2)
    ids = tl.zeros([K_P2], dtype=tl.int32)
    top = tl.zeros([K_P2], dtype=tl.float32)
    # taken experts leave `free` rather than turning -inf, so that -inf logits are still picked after them
    # (in index order, weight 0), as by the reference, when top-k exceeds the finite logits
    free = valid
    for j in tl.static_range(TOP_K):
        best = tl.max(tl.where(free, logit, float("-inf")), 0)
        pick = tl.min(tl.where(free & (logit == best), offs, E_P2), 0)
        ids = tl.where(slots == j, pick, ids)
        top = tl.where(slots == j, tl.sum(tl.where(offs == pick, prob, 0.0), 0), top)
        free = free & (offs != pick)
    return ids, normalise(top, prob, RENORM)


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
    PICK: tl.constexpr,
):
    """One program per token: ids [T, TOP_K] int32, weights [T, TOP_K] float32."""
    route_store(tl.program_id(0).to(tl.int64), logits_ptr, row_stride, col_stride, ids_ptr, weights_ptr,
                E, E_P2, TOP_K, K_P2, RENORM, PICK)


@triton.jit
def route_store(t, logits_ptr, row_stride, col_stride, ids_ptr, weights_ptr, E: tl.constexpr, E_P2: tl.constexpr,
                TOP_K: tl.constexpr, K_P2: tl.constexpr, RENORM: tl.constexpr, PICK: tl.constexpr):
    """Token t's routing into ids [T, TOP_K] int32 and weights [T, TOP_K] float32."""
    ids, top = route_any(logits_ptr, t * row_stride, col_stride, E, E_P2, TOP_K, K_P2, RENORM, PICK)
    slots = tl.arange(0, K_P2)
    tl.store(ids_ptr + t * TOP_K + slots, ids, mask=slots < TOP_K)
    tl.store(weights_ptr + t * TOP_K + slots, top, mask=slots < TOP_K)


@triton.jit
def route_row_packed(
    logits_ptr,
    row_offset,
    col_stride,
    E: tl.constexpr,
    E_P2: tl.constexpr,
    TOP_K: tl.constexpr,
    K_P2: tl.constexpr,
    RENORM: tl.constexpr,
):
    """`route_row` with one reduction per pick instead of three: the max of int64 keys (logit order in the
    high half, E_P2 - 1 - index in the low half) names the best logit and, among equal ones, the lowest
    index; the pick's probability is recomputed from the logit in the key. Same ids and weights."""
    offs, valid, logit = load_logits(logits_ptr, row_offset, col_stride, E, E_P2)
    mx, prob, key = packed_keys(logit, offs, valid, E_P2)
    slots = tl.arange(0, K_P2)
    ids = tl.zeros([K_P2], dtype=tl.int32)
    top = tl.zeros([K_P2], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        best = tl.max(key, 0)
        pick = E_P2 - 1 - (best & 0xFFFFFFFF).to(tl.int32)
        p = tl.where(pick < E, tl.exp(float_of_ordered((best >> 32).to(tl.int32)) - mx), 0.0)
        ids = tl.where(slots == j, tl.minimum(pick, E - 1), ids)  # pick >= E: every real logit is taken
        top = tl.where(slots == j, p, top)
        key = tl.where(offs == pick, -(2**63), key)
    return ids, normalise(top, prob, RENORM)


@triton.jit
def pick_top_k(logit, offs, valid, E: tl.constexpr, E_P2: tl.constexpr, TOP_K: tl.constexpr, K_P2: tl.constexpr,
               RENORM: tl.constexpr):
    """`route_row_packed`'s keys, the best K_P2 of them by one bitonic top-k (`tl.topk`: log2(E_P2) rounds of
    compare-exchanges instead of TOP_K dependent reductions). logit [E_P2] float32, -inf where not valid.
    Same ids as the other two methods; on the GPU the renormalised weights can differ from theirs in the last
    float32 bit, since the sum over the slots reduces in another order after `tl.topk` (NOTES.md, session 13)."""
    mx, prob, key = packed_keys(logit, offs, valid, E_P2)
    if K_P2 == 1:  # tl.topk reduces a single winner to a scalar it cannot reshape
        best = tl.zeros([1], dtype=tl.int64) + tl.max(key, 0)
    else:
        best = tl.topk(key, K_P2)  # [K_P2], descending
    slots = tl.arange(0, K_P2)
    taken = slots < TOP_K
    pick = E_P2 - 1 - (best & 0xFFFFFFFF).to(tl.int32)
    p = tl.where(pick < E, tl.exp(float_of_ordered((best >> 32).to(tl.int32)) - mx), 0.0)
    ids = tl.where(taken, tl.minimum(pick, E - 1), 0)
    return ids, normalise(tl.where(taken, p, 0.0), prob, RENORM)


@triton.jit
def packed_keys(logit, offs, valid, E_P2: tl.constexpr):
    """-> the max logit, the unnormalised softmax [E_P2] and the int64 keys [E_P2], all distinct: logit order in
    the high half, E_P2 - 1 - index in the low half."""
    mx = tl.max(logit, 0)
    prob = tl.where(valid, tl.exp(logit - mx), 0.0)
    key = (ordered_bits(logit).to(tl.int64) << 32) | (E_P2 - 1 - offs).to(tl.int64)
    return mx, prob, key


@triton.jit
def normalise(top, prob, RENORM: tl.constexpr):
    """The picked probabilities over their own sum (RENORM) or over the full softmax's."""
    if RENORM:
        out = top / tl.sum(top, 0)
    else:
        out = top / tl.sum(prob, 0)
    return out


@triton.jit
def ordered_bits(v):
    """float32 -> int32 with the same order (-0.0 first made +0.0, so that it ties with +0.0)."""
    bits = tl.where(v == 0.0, 0.0, v).to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def float_of_ordered(k):
    """The inverse of `ordered_bits`."""
    return tl.where(k < 0, k ^ 0x7FFFFFFF, k).to(tl.float32, bitcast=True)


@triton.jit
def route_any(logits_ptr, row_offset, col_stride, E: tl.constexpr, E_P2: tl.constexpr, TOP_K: tl.constexpr,
              K_P2: tl.constexpr, RENORM: tl.constexpr, PICK: tl.constexpr):
    """One token's ids [K_P2] int32 and weights [K_P2] float32 by the top-k method PICKS[PICK]."""
    if PICK == 2:
        offs, valid, logit = load_logits(logits_ptr, row_offset, col_stride, E, E_P2)
        ids, top = pick_top_k(logit, offs, valid, E, E_P2, TOP_K, K_P2, RENORM)
    elif PICK == 1:
        ids, top = route_row_packed(logits_ptr, row_offset, col_stride, E, E_P2, TOP_K, K_P2, RENORM)
    else:
        ids, top = route_row(logits_ptr, row_offset, col_stride, E, E_P2, TOP_K, K_P2, RENORM)
    return ids, top
