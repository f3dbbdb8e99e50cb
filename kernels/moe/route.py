"""Router in Triton: softmax in float32, top-k (ties go to the lower expert index), renormalisation.

Both methods pick over int64 keys: the logit's bits made order-preserving in the high half, E_P2 - 1 - index in
the low half, so the largest key is the largest logit and, among equal logits, the lowest index. Prefill takes
the best key TOP_K times (`route_packed`, one reduction per pick); decode takes the best K_P2 keys at once by a
bitonic top-k (`route_topk`). They give the same ids; the topk router's renormalised weights can differ from the
packed router's in the last float32 bit on the GPU (its sum over the slots reduces in another order), so each
path keeps its own method.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_logits(logits_ptr, row_offset, col_stride, E: tl.constexpr, E_P2: tl.constexpr):
    """One token's logits in float32 [E_P2] (-inf past E), their indices and validity."""
    offs = tl.arange(0, E_P2)
    valid = offs < E
    logit = tl.load(logits_ptr + row_offset + offs * col_stride, mask=valid, other=float("-inf")).to(tl.float32)
    return offs, valid, logit


@triton.jit
def route_packed(
    logits_ptr,
    row_offset,
    col_stride,
    E: tl.constexpr,
    E_P2: tl.constexpr,
    TOP_K: tl.constexpr,
    K_P2: tl.constexpr,
    RENORM: tl.constexpr,
):
    """One token's router, one max over the packed keys per pick: -> expert ids [K_P2] int32, weights [K_P2]
    float32 (slots >= TOP_K are 0). The pick's probability is recomputed from the logit in its key."""
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
def route_topk(
    logits_ptr,
    row_offset,
    col_stride,
    E: tl.constexpr,
    E_P2: tl.constexpr,
    TOP_K: tl.constexpr,
    K_P2: tl.constexpr,
    RENORM: tl.constexpr,
):
    """`route_packed`'s ids and weights from the best K_P2 keys of one bitonic top-k (`tl.topk`: log2(E_P2)
    rounds of compare-exchanges instead of TOP_K dependent reductions)."""
    offs, valid, logit = load_logits(logits_ptr, row_offset, col_stride, E, E_P2)
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
def store_route(t, ids, top, ids_ptr, weights_ptr, TOP_K: tl.constexpr, K_P2: tl.constexpr):
    """Token t's ids [K_P2] and weights [K_P2] into ids [T, TOP_K] int32 and weights [T, TOP_K] float32."""
    slots = tl.arange(0, K_P2)
    tl.store(ids_ptr + t * TOP_K + slots, ids, mask=slots < TOP_K)
    tl.store(weights_ptr + t * TOP_K + slots, top, mask=slots < TOP_K)


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
    """The prefill router, one program per token: ids [T, TOP_K] int32, weights [T, TOP_K] float32."""
    t = tl.program_id(0).to(tl.int64)
    ids, top = route_packed(logits_ptr, t * row_stride, col_stride, E, E_P2, TOP_K, K_P2, RENORM)
    store_route(t, ids, top, ids_ptr, weights_ptr, TOP_K, K_P2)


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
