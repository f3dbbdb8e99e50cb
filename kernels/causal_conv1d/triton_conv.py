"""Causal depthwise conv1d + SiLU over a rolling state, one Triton kernel for prefill and decode.

Grid: (cdiv(T, BT), cdiv(C, BC)). Row t of the output needs inputs t-W+1 .. t: from x, or from the old
state where that index is negative. Only the programs with time block 0 read the old state (BT >= W-1),
and those same programs write the new state after a barrier, so the in-place update never races.
The count n of real rows is read on the device: pad rows (t >= n) store zeros, and the new state is
[state; x] rows n .. n + W - 2, which reads x rows below n only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import dense, inner_contiguous, launcher

# time and channel tiles; BT >= W - 1, so the time-block-0 programs hold every row of the old state
BT, BC = 32, 128


@triton.jit(do_not_specialize=["T"])  # one binary for every length
def _conv_kernel(
    x_ptr, state_ptr, w_ptr, reset_ptr, count_ptr, y_ptr, T, C,
    s_xt, s_yt, s_wc,
    W: tl.constexpr, WP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, COUNT: tl.constexpr,
):
    i_t = tl.program_id(0)
    i_c = tl.program_id(1)
    rows = i_t * BT + tl.arange(0, BT)
    cols = i_c * BC + tl.arange(0, BC)
    cmask = cols < C
    reset = tl.load(reset_ptr)
    n = T  # real rows: all of them, or the device count
    if COUNT:
        n = tl.minimum(tl.load(count_ptr).to(tl.int32), T)
    acc = tl.zeros((BT, BC), dtype=tl.float32)
    for j in tl.static_range(W):
        src = rows + (j - (W - 1))  # [BT] index into x; negative: the old state row W-1+src
        xm = (src >= 0) & (src < T)
        xv = tl.load(x_ptr + src[:, None] * s_xt + cols[None, :], mask=xm[:, None] & cmask[None, :], other=0.0)
        sm = (src < 0) & (src >= -(W - 1))
        sv = tl.load(state_ptr + (src + W - 1)[:, None] * C + cols[None, :], mask=sm[:, None] & cmask[None, :], other=0.0)
        xin = xv.to(tl.float32) + tl.where(reset, 0.0, sv.to(x_ptr.dtype.element_ty).to(tl.float32))
        acc += xin * tl.load(w_ptr + cols * s_wc + j, mask=cmask, other=0.0).to(tl.float32)[None, :]
    y = tl.where((rows < n)[:, None], acc * tl.sigmoid(acc), 0.0)  # a pad row is 0, whatever its input
    tl.store(y_ptr + rows[:, None] * s_yt + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=(rows < T)[:, None] & cmask[None, :])
    if i_t == 0:
        # new state row i = [state; x][n + i]: from x when n + i >= W - 1, else old state row n + i
        si = tl.arange(0, WP)  # WP: W - 1 rounded up to a power of two
        live = si < W - 1
        xi = n + si - (W - 1)
        nx = tl.load(x_ptr + xi[:, None] * s_xt + cols[None, :], mask=((xi >= 0) & live)[:, None] & cmask[None, :], other=0.0)
        os_ = tl.load(state_ptr + (n + si)[:, None] * C + cols[None, :], mask=((xi < 0) & live)[:, None] & cmask[None, :], other=0.0)
        new = nx.to(state_ptr.dtype.element_ty) + tl.where(reset, 0.0, os_.to(tl.float32)).to(state_ptr.dtype.element_ty)
        tl.debug_barrier()
        tl.store(state_ptr + si[:, None] * C + cols[None, :], new, mask=live[:, None] & cmask[None, :])


def causal_conv1d(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    reset: torch.Tensor,
    count: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as `reference.causal_conv1d`; `conv_state` must be contiguous. `out` [1, T, C], if given,
    receives y (tests pass a NaN-filled one)."""
    T, C = x.shape[1], x.shape[2]
    W = weight.shape[1]
    (x,) = dense(x)
    weight = inner_contiguous(weight)
    y = torch.empty((1, T, C), dtype=x.dtype, device=x.device) if out is None else out
    assert BT >= W - 1, "time block must cover the state rows"
    launcher(_conv_kernel)[((T + BT - 1) // BT, (C + BC - 1) // BC)](
        x, conv_state, weight, reset, reset if count is None else count, y, T, C,
        x.stride(1), y.stride(1), weight.stride(0),
        W=W, WP=triton.next_power_of_2(max(W - 1, 1)), BT=BT, BC=BC, COUNT=count is not None,
    )
    return y
