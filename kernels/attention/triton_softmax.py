"""What the prefill and decode kernels share: the loads of a block of cache rows, and the online-softmax step that
folds one block of keys into the running row maximum m, row sum l and unnormalised output acc, all float32.
Scores are in log2 units (the scale carries log2(e)), so the exponentials are exp2. Few, larger helpers: each call
of a jitted function is slow under the interpreter (DESIGN.md)."""

from __future__ import annotations

import math

import triton
import triton.language as tl

LOG2E = math.log2(math.e)


@triton.jit
def load_kv(kc, vc, offs, ok, cd, D: tl.constexpr, MASK_ROWS: tl.constexpr):
    """The [BN, BD] blocks of cache rows at kc + offs and vc + offs: zeros where cd >= D (padding) and, with
    MASK_ROWS, in the rows where not ok [BN]."""
    if MASK_ROWS:
        mask = ok[:, None] & (cd < D)[None, :]
        return tl.load(kc + offs, mask=mask, other=0.0), tl.load(vc + offs, mask=mask, other=0.0)
    return (tl.load(kc + offs, mask=(cd < D)[None, :], other=0.0),
            tl.load(vc + offs, mask=(cd < D)[None, :], other=0.0))


@triton.jit
def update(acc, m, l, q, k, v, QK_SCALE: tl.constexpr, visible, MASK: tl.constexpr, UPCAST: tl.constexpr):
    """acc [M, BD], m and l [M]; q [M, BD], k and v [BN, BD] in the input dtype; visible [M, BN] (used where
    MASK). A row's m must be finite once a block had a visible key for it: the callers start every row with a
    visible key, so exp2(-inf - m) is 0 and never NaN.
    Dots: float32 operands in IEEE float32 (float32 models stay token-exact), 16-bit ones on the tensor cores
    with the probabilities rounded to the input dtype. UPCAST (interpreter only) runs 16-bit operands in
    float32: Triton 3.6's interpreter multiplies the raw bits of bf16 operands."""
    if q.dtype == tl.float32 or UPCAST:
        s = tl.dot(q.to(tl.float32), tl.trans(k).to(tl.float32), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = s * QK_SCALE  # [M, BN]
    if MASK:
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new[:, None])
    l = l * alpha + tl.sum(p, 1)
    if q.dtype == tl.float32 or UPCAST:
        pv = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    return acc * alpha[:, None] + pv, m_new, l
