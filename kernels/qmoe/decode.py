"""One-token quantized MoE: `kernels/moe/decode.py`'s three launches, reading the routed experts' packed bytes
and scales by index and dequantizing in registers (dequant.py).

- The router: `moe.decode.decode_route` itself (one warp, bitonic top-k) -> ids [k] int32, weights [k] float32.
- Kernel 1 (`qdecode_gate_up_kernel`): h[slot, rows] = silu(gate_e x) * (up_e x) for BLOCK_I rows of expert
  e = ids[slot], the packed rows in unrolled steps of whole groups.
- Kernel 2 (`qdecode_down_kernel`): y[rows] = sum_slot w_slot down_e h[slot] + sigmoid(g) down_s (silu(g_s) u_s),
  all slots' packed down rows in one [K_P2, BLOCK_OUT, I / group, group bytes] load and the shared expert's
  packed rows beside them, before the grid wait.

PDL as in the float kernels (kernels/pdl.py): pdl "on" launches them with it, "serial" in stream order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import launcher, next_pow2
from ..moe.decode import decode_route, launch_args
from ..pdl import grid_release, grid_wait
from .dequant import activation_cols, group_dot, load_groups

# per bits, from the sm_90 compile at the 35B-A3B shape (DESIGN.md): no spills, fewest SASS per weight byte with
# at least two programs per SM; not yet timed
BLOCK_I = {8: 8, 4: 8}  # kernel 1: rows of gate (and the same rows of up)
WARPS_GATE_UP = {8: 4, 4: 8}
BLOCK_OUT = {8: 8, 4: 8}  # kernel 2: output rows
WARPS_DOWN = {8: 4, 4: 4}
STEP_COLS = 2048  # kernel 1: columns per unrolled step


@triton.jit
def qdecode_gate_up_kernel(
    x_ptr, q_ptr, s_ptr, h_ptr, ids_ptr,
    H: tl.constexpr, I: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr, BLOCK_I: tl.constexpr,
    BG: tl.constexpr, GDC: tl.constexpr,
):
    """Kernel 1: a flat, slot-major grid of TOP_K * cdiv(I, BLOCK_I) programs; BG groups per unrolled step."""
    HB: tl.constexpr = H * BITS // 8
    KG: tl.constexpr = H // GROUP
    n_blocks: tl.constexpr = (I + BLOCK_I - 1) // BLOCK_I
    pid = tl.program_id(0)
    slot = pid // n_blocks
    grid_wait(GDC)
    # after the wait, so that kernel 2's early loads of the router's ids find them written
    grid_release(GDC)
    e = tl.load(ids_ptr + slot).to(tl.int64)
    rows = (pid % n_blocks) * BLOCK_I + tl.arange(0, BLOCK_I)
    row_ok = rows < I
    q_gate = q_ptr + e * (2 * I * HB)
    s_gate = s_ptr + e * (2 * I * KG)
    q_rows = rows.to(tl.int64) * HB  # [BLOCK_I]
    s_rows = rows.to(tl.int64) * KG
    acc_g = tl.zeros([BLOCK_I, BG], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_I, BG], dtype=tl.float32)
    for g0 in tl.static_range(0, KG, BG):
        qg, sg = load_groups(q_gate, s_gate, q_rows, s_rows, row_ok, g0, KG, BG, GROUP, BITS)
        qu, su = load_groups(q_gate + I * HB, s_gate + I * KG, q_rows, s_rows, row_ok, g0, KG, BG, GROUP, BITS)
        cols = activation_cols(g0, BG, GROUP, BITS)
        xv = tl.load(x_ptr + cols, mask=cols < H, other=0.0).to(tl.float32)
        acc_g += group_dot(qg, sg, xv, BITS)
        acc_u += group_dot(qu, su, xv, BITS)
    g = tl.sum(acc_g, 1)
    u = tl.sum(acc_u, 1)
    tl.store(h_ptr + slot * I + rows, g * tl.sigmoid(g) * u, mask=row_ok)


@triton.jit
def per_slot(v, BITS: tl.constexpr):
    """v [K_P2] -> [K_P2, 1, 1] (int8) or [K_P2, 1, 1, 1] (int4): one value per slot beside `activation_cols`."""
    if BITS == 4:
        out = v[:, None, None, None]
    else:
        out = v[:, None, None]
    return out


@triton.jit
def qdecode_down_kernel(
    h_ptr, ids_ptr, weights_ptr, q_ptr, s_ptr, out_ptr, shared_act_ptr, shared_act_stride, shared_gate_ptr,
    sq_ptr, ss_ptr,
    H: tl.constexpr, I: tl.constexpr, S: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr,
    TOP_K: tl.constexpr, K_P2: tl.constexpr, BLOCK_OUT: tl.constexpr, BGI: tl.constexpr, BGS: tl.constexpr,
    GDC: tl.constexpr,
):
    """Kernel 2, BLOCK_OUT output rows in one step over I and S (BGI, BGS: their group counts, padded to powers
    of two). Weights and the router's ids and weights before the grid wait (kernel 1 waited for the router);
    h and the shared expert's gate and up (a copy kernel right before may have written them) after it."""
    IB: tl.constexpr = I * BITS // 8
    KGI: tl.constexpr = I // GROUP
    SB: tl.constexpr = S * BITS // 8
    KGS: tl.constexpr = S // GROUP
    grid_release(GDC)
    rows = tl.program_id(0) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    row_ok = rows < H
    slots = tl.arange(0, K_P2)
    slot_ok = slots < TOP_K
    e = tl.load(ids_ptr + slots, mask=slot_ok, other=0).to(tl.int64)  # [K_P2]
    w = tl.load(weights_ptr + slots, mask=slot_ok, other=0.0)  # [K_P2]
    expert_row = e[:, None] * H + rows[None, :].to(tl.int64)  # [K_P2, BLOCK_OUT]
    ok = slot_ok[:, None] & row_ok[None, :]
    dq, ds = load_groups(q_ptr, s_ptr, expert_row * IB, expert_row * KGI, ok, 0, KGI, BGI, GROUP, BITS)
    sq, ss = load_groups(sq_ptr, ss_ptr, rows.to(tl.int64) * SB, rows.to(tl.int64) * KGS, row_ok, 0, KGS, BGS,
                         GROUP, BITS)
    grid_wait(GDC)
    cols = activation_cols(0, BGI, GROUP, BITS)
    hv = tl.load(h_ptr + per_slot(slots * I, BITS) + cols, mask=per_slot(slot_ok, BITS) & (cols < I),
                 other=0.0)  # [K_P2, *cols' shape]
    acc = tl.sum(group_dot(dq, ds, tl.expand_dims(hv, 1), BITS), 2)  # [K_P2, BLOCK_OUT]
    scols = activation_cols(0, BGS, GROUP, BITS)
    s_ok = scols < S
    g = tl.load(shared_act_ptr + scols * shared_act_stride, mask=s_ok, other=0.0).to(tl.float32)
    u = tl.load(shared_act_ptr + (S + scols) * shared_act_stride, mask=s_ok, other=0.0).to(tl.float32)
    gate = tl.sigmoid(tl.load(shared_gate_ptr).to(tl.float32))
    shared = gate * tl.sum(group_dot(sq, ss, g * tl.sigmoid(g) * u, BITS), 1)  # [BLOCK_OUT]
    out = tl.sum(acc * w[:, None], 0) + shared
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_ok)


def gate_up_meta(H: int, I: int, bits: int, group: int) -> dict:
    """Kernel 1's constexprs and num_warps for a shape and scheme."""
    bg = min(next_pow2(H // group), max(1, STEP_COLS // group))
    return dict(H=H, I=I, GROUP=group, BITS=bits, BLOCK_I=min(BLOCK_I[bits], next_pow2(I)), BG=bg,
                num_warps=WARPS_GATE_UP[bits])


def down_meta(H: int, I: int, S: int, top_k: int, bits: int, group: int) -> dict:
    """Kernel 2's constexprs and num_warps for a shape and scheme."""
    return dict(H=H, I=I, S=S, GROUP=group, BITS=bits, TOP_K=top_k, K_P2=next_pow2(top_k),
                BLOCK_OUT=min(BLOCK_OUT[bits], next_pow2(H)), BGI=next_pow2(I // group), BGS=next_pow2(S // group),
                num_warps=WARPS_DOWN[bits])


def qmoe_decode(
    x: torch.Tensor, router_logits: torch.Tensor, experts: tuple[torch.Tensor, ...], top_k: int, renormalize: bool,
    shared: tuple[torch.Tensor, ...], bits: int, group: int, pdl: str = "on",
) -> torch.Tensor:
    """x [1, H]; router_logits [1, E] (any column stride); experts = (gate_up_q, gate_up_s, down_q, down_s), the
    packed stacks; shared = (gate|up [1, 2S] (any column stride), gate logit [1, 1], shared_down_q,
    shared_down_s) -> [1, H] in x's dtype."""
    gate_up_q, gate_up_s, down_q, down_s = experts
    act, gate, sq, ss = shared
    H, I, S = x.shape[1], gate_up_s.shape[1] // 2, ss.shape[1] * group
    ids = torch.empty((top_k,), device=x.device, dtype=torch.int32)
    weights = torch.empty((top_k,), device=x.device, dtype=torch.float32)
    h = torch.empty((top_k, I), device=x.device, dtype=torch.float32)
    decode_route(router_logits, ids, weights, top_k, renormalize, pdl)
    meta = gate_up_meta(H, I, bits, group)
    launcher(qdecode_gate_up_kernel)[(top_k * triton.cdiv(I, meta["BLOCK_I"]),)](
        x.contiguous(), gate_up_q, gate_up_s, h, ids, **meta, **launch_args(pdl, h),
    )
    out = torch.empty_like(x)
    meta = down_meta(H, I, S, top_k, bits, group)
    launcher(qdecode_down_kernel)[(triton.cdiv(H, meta["BLOCK_OUT"]),)](
        h, ids, weights, down_q, down_s, out, act, act.stride(-1), gate, sq, ss, **meta, **launch_args(pdl, out),
    )
    return out
