"""One-token gated delta rule in one Triton kernel: gates from the raw projections, L2-norm of q and k,
decay, delta-rule update and output, reading and writing each state tile exactly once.

Grid: (cdiv(V, BV), Hv). A program owns state[h, :, v0:v0+BV] ([K, BV] float32) and recomputes the tiny
per-head vectors (q, k norms, gates) itself, so no program reads what another writes: in place is safe.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import inner_contiguous, launcher

# 16-wide V tiles, 4 warps: V / 16 x Hv programs (the other tiles and warp counts measured: DESIGN.md)
BLOCK_V, WARPS = 16, 4


def check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor) -> None:
    """One clear line for shapes the decode and chunk kernels cannot take (static shapes, checked while tracing
    too)."""
    Hk, K, Hv, V = q.shape[2], q.shape[3], v.shape[2], v.shape[3]
    if k.shape != q.shape:
        raise ValueError(f"k shape {tuple(k.shape)} differs from q shape {tuple(q.shape)}")
    if Hv % Hk != 0:
        raise ValueError(f"value heads Hv={Hv} are not a multiple of key heads Hk={Hk}")
    if tuple(state.shape) != (1, Hv, K, V) or state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError(f"state must be a contiguous float32 [1, {Hv}, {K}, {V}], got {state.dtype} {tuple(state.shape)}")


@triton.jit
def _recurrent_kernel(
    q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, alog_ptr, dtb_ptr, state_ptr, reset_ptr, count_ptr, o_ptr,
    s_qh, s_kh, s_vh, s_ah, s_bh, s_oh,
    GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, COUNT: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_h = tl.program_id(1)
    hk = i_h // GROUP
    ck = tl.arange(0, BK)  # K padded to a power of two; padding loads zeros
    cv = i_v * BV + tl.arange(0, BV)
    kin, vin = ck < K, cv < V
    q = tl.load(q_ptr + hk * s_qh + ck, mask=kin, other=0.0).to(tl.float32)  # [BK]
    k = tl.load(k_ptr + hk * s_kh + ck, mask=kin, other=0.0).to(tl.float32)
    q = q * tl.rsqrt(tl.sum(q * q, 0) + 1e-6) * (K ** -0.5)
    k = k * tl.rsqrt(tl.sum(k * k, 0) + 1e-6)
    v = tl.load(v_ptr + i_h * s_vh + cv, mask=vin, other=0.0).to(tl.float32)  # [BV]
    x = tl.load(a_ptr + i_h * s_ah).to(tl.float32) + tl.load(dtb_ptr + i_h).to(tl.float32)
    softplus = tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))
    g = -tl.exp(tl.load(alog_ptr + i_h).to(tl.float32)) * softplus
    beta = tl.sigmoid(tl.load(b_ptr + i_h * s_bh).to(tl.float32))
    if COUNT:  # a pad (count 0): no decay and no write, whatever its inputs
        real = tl.load(count_ptr) > 0
        g = tl.where(real, g, 0.0)
        beta = tl.where(real, beta, 0.0)
        k = tl.where(real, k, 0.0)
        v = tl.where(real, v, 0.0)
    offs = i_h * K * V + ck[:, None] * V + cv[None, :]  # [BK, BV]
    smask = kin[:, None] & vin[None, :]
    s = tl.load(state_ptr + offs, mask=smask, other=0.0)
    s = tl.where(tl.load(reset_ptr), 0.0, s) * tl.exp(g)
    delta = (v - tl.sum(s * k[:, None], 0)) * beta  # [BV]
    s = s + k[:, None] * delta[None, :]
    o = tl.sum(s * q[:, None], 0)
    tl.store(state_ptr + offs, s, mask=smask)
    tl.store(o_ptr + i_h * s_oh + cv, o.to(o_ptr.dtype.element_ty), mask=vin)


def recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    state: torch.Tensor,
    reset: torch.Tensor,
    count: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as `reference.recurrent_gated_delta_rule`; `state` must be contiguous. `out` [1, 1, Hv, V],
    if given, receives o (tests pass a NaN-filled one)."""
    check_heads(q, k, v, state)
    Hk, K = q.shape[2], q.shape[3]
    Hv, V = v.shape[2], v.shape[3]
    q, k, v = inner_contiguous(q), inner_contiguous(k), inner_contiguous(v)
    a, b = inner_contiguous(a), inner_contiguous(b)
    BV = min(triton.next_power_of_2(V), BLOCK_V)
    o = torch.empty((1, 1, Hv, V), dtype=v.dtype, device=v.device) if out is None else out
    launcher(_recurrent_kernel)[((V + BV - 1) // BV, Hv)](
        q, k, v, a, b, A_log, dt_bias, state, reset, reset if count is None else count, o,
        q.stride(2), k.stride(2), v.stride(2), a.stride(2), b.stride(2), o.stride(2),
        GROUP=Hv // Hk, K=K, V=V, BK=triton.next_power_of_2(K), BV=BV, num_warps=WARPS, COUNT=count is not None,
    )
    return o
