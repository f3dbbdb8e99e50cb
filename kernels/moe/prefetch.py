"""L2 prefetch for the one-token kernels: a kernel asks for bytes that a later kernel of the same layer reads,
so that HBM keeps streaming through the gaps between launches and the later kernel reads L2.

Prefetching changes no result. Triton's interpreter has no inline PTX, so the kernels take it behind a
constexpr that the launchers clear when interpreted (`launch.INTERPRETED`).
"""

from __future__ import annotations

import triton
import triton.language as tl

# sm_90 bulk prefetch (the TMA unit fetches the range; no registers wait for it), issued by thread 0 alone.
# The start is rounded up and the end down to 16 bytes, as the instruction requires: the range never grows.
_BULK = tl.constexpr("{ .reg .pred p; .reg .u32 t, d, n; .reg .u64 a, b; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; "
                     "cvta.to.global.u64 b, $1; add.u64 a, b, 15; and.b64 a, a, 0xFFFFFFFFFFFFFFF0; sub.u64 b, a, b; "
                     "cvt.u32.u64 d, b; sub.s32 n, $2, d; and.b32 n, n, 0xFFFFFFF0; setp.gt.and.s32 p, n, 15, p; "
                     "@p cp.async.bulk.prefetch.L2.global [a], n; mov.u32 $0, 0; }")


@triton.jit
def prefetch_l2(ptr, nbytes):
    """Bring [ptr, ptr + nbytes), less its unaligned ends, into L2; fire and forget. ptr: a scalar pointer,
    nbytes: an int32 scalar."""
    tl.inline_asm_elementwise(_BULK, "=r,l,r", [ptr, nbytes], dtype=tl.int32, is_pure=False, pack=1)
