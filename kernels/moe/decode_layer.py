"""One-token MoE layer in one launch: the router / shared-expert projection, top-k, every expert's gate/up
and the down projections, as roles of one grid that wait on each other through counters in `sync`.

Three dependent launches (router, gate/up, down) each paid a ramp-up and a drain at batch 1
(kernels/moe/NOTES.md, run 5); here a role's programs are resident and waiting when their inputs land, and
the down programs load their weights before they wait for h.

Each program first takes a ticket (an atomic counter); the ticket, not the program id, names its role, so a
program only ever waits on programs with lower tickets, which are running or done whatever order the
hardware starts programs in. Roles, in ticket order:
- R, cdiv(E + 1, BLOCK_R) programs: router logits and the shared gate logit, rows of W_rs rounded to x's
  dtype (as a projection in x's dtype would); the last R program to finish routes.
- S, cdiv(S, BLOCK_I): silu(gate_s x) * (up_s x) of the shared expert (gate_s, up_s rounded likewise).
- G, TOP_K * cdiv(I, BLOCK_I): silu(gate_e x) * (up_e x) of each selected expert; waits for the routing.
- D, cdiv(H, BLOCK_OUT): loads the selected experts' and the shared expert's down rows, waits for every S
  and G program, then sum_slot w * down_e h_e + sigmoid(gate logit) * down_s h_s.
The last program to finish sets the counters back to zero for the next call.

W_rs [E + 2S + 1, H] = [router | shared gate | shared up | shared gate logit] (`reference.moe_shared`).

Not behind the ops: on the H100 it took 35.4 us against 35.95 for the model's layer (gdn::gemv + gdn::moe_shared),
too little for an op that takes the projection weight and a mutable `sync` buffer (kernels/moe/NOTES.md,
session 12, with a timeline of where the time goes: `scripts/device/moe_layer_probe.py trace`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .launch import INTERPRETED, launch, next_pow2
from .route import pick_top_k

# sync [SYNC_LEN] int32, zero between calls: five counters, each on its own 128-byte line (the ticket's and
# the finish counter's atomics and the waiters' polling would otherwise queue behind each other)
LINE_INTS = 32
LINE, COUNTERS = tl.constexpr(LINE_INTS), tl.constexpr(5)
TICKET, R_DONE, ROUTED, H_DONE, FINISHED = (tl.constexpr(i * LINE_INTS) for i in range(5))
SYNC_LEN = 5 * LINE_INTS


@dataclass(frozen=True)
class LayerConfig:
    block_r: int = 2  # router rows per R program
    block_i: int = 4  # gate/up rows per S / G program
    block_h: int = 2048  # columns per unrolled step of the R / S / G mat-vecs
    block_out: int = 4  # output rows per D program
    tile_down: int = 16384  # at most this many down elements per D program (block_out shrinks to fit)
    warps: int = 4  # 8: 42.8 us against 38.2 (first version, NOTES.md, session 12)
    backoff: bool = False  # sleep between polls (GPU only): 39.1 us against 35.4 without


@triton.jit
def _arrive(counter_ptr):
    """Release this program's stores (every thread's: the barrier first), count it; -> the count before."""
    tl.debug_barrier()
    return tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")


@triton.jit
def _wait(counter_ptr, target, BACKOFF: tl.constexpr):
    """Spin until the counter reaches target (volatile loads, no read-modify-write traffic; BACKOFF sleeps
    between polls on the GPU, where the interpreter cannot run inline PTX), then acquire."""
    while tl.load(counter_ptr, volatile=True) < target:
        if BACKOFF:
            tl.inline_asm_elementwise("nanosleep.u32 128; mov.u32 $0, $1;", "=r,r", [target], dtype=tl.int32,
                                      is_pure=False, pack=1)
    tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _now(dep):
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [dep], dtype=tl.int64, is_pure=False,
                                     pack=1)


@triton.jit
def _rows_dot_x(w_ptr, row_idx, row_ok, x_ptr, H: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    """[BLOCK_R] float32: rows `row_idx` of w [*, H] times x, the H steps unrolled so all loads can fly at once."""
    acc = tl.zeros([BLOCK_R, BLOCK_H], dtype=tl.float32)
    for h0 in tl.static_range(0, H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H)
        ok = row_ok[:, None] & (cols < H)[None, :]
        w = tl.load(w_ptr + row_idx[:, None] * H + cols[None, :], mask=ok, other=0.0, eviction_policy="evict_first")
        # x in the tile's shape (L1 hits): a [BLOCK_H] load goes through shared memory behind a barrier
        xv = tl.load(x_ptr + tl.broadcast_to(cols[None, :], [BLOCK_R, BLOCK_H]), mask=ok, other=0.0)
        acc += w.to(tl.float32) * xv.to(tl.float32)
    return tl.sum(acc, 1)


@triton.jit
def _route_role(t, x_ptr, w_rs_ptr, logits_ptr, ids_ptr, weights_ptr, sync_ptr, H: tl.constexpr, S: tl.constexpr,
                E: tl.constexpr, E_P2: tl.constexpr, TOP_K: tl.constexpr, K_P2: tl.constexpr, RENORM: tl.constexpr,
                N_R: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    """R program t: BLOCK_R logits (logical row E is the shared gate logit); the last one to finish routes."""
    rows = t * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    row_ok = rows <= E
    w_rows = tl.where(rows < E, rows, E + 2 * S)
    logit = _rows_dot_x(w_rs_ptr, w_rows, row_ok, x_ptr, H, BLOCK_R, BLOCK_H)
    tl.store(logits_ptr + rows, logit.to(x_ptr.dtype.element_ty).to(tl.float32), mask=row_ok)
    if _arrive(sync_ptr + R_DONE) == N_R - 1:
        offs = tl.arange(0, E_P2)
        valid = offs < E
        every = tl.load(logits_ptr + offs, mask=valid, other=float("-inf"), cache_modifier=".cg")  # [E_P2]
        ids, top = pick_top_k(every, offs, valid, E, E_P2, TOP_K, K_P2, RENORM)
        slots = tl.arange(0, K_P2)
        tl.store(ids_ptr + slots, ids, mask=slots < TOP_K)
        tl.store(weights_ptr + slots, top, mask=slots < TOP_K)
        _arrive(sync_ptr + ROUTED)


@triton.jit
def _gate_up_role(u, x_ptr, w_rs_ptr, gate_up_ptr, ids_ptr, h_ptr, sync_ptr, H: tl.constexpr, I: tl.constexpr,
                  S: tl.constexpr, E: tl.constexpr, TOP_K: tl.constexpr, HS: tl.constexpr, N_S: tl.constexpr,
                  BLOCK_I: tl.constexpr, BLOCK_H: tl.constexpr, BACKOFF: tl.constexpr):
    """S / G program u: BLOCK_I rows of h = silu(gate x) * (up x), the shared expert's (h's row TOP_K) when
    u < N_S, else of the expert in slot (u - N_S) / cdiv(I, BLOCK_I), once routed."""
    n_ib: tl.constexpr = (I + BLOCK_I - 1) // BLOCK_I
    if u < N_S:
        rows = u * BLOCK_I + tl.arange(0, BLOCK_I)  # [BLOCK_I]
        row_ok = rows < S
        gate = _rows_dot_x(w_rs_ptr, E + rows, row_ok, x_ptr, H, BLOCK_I, BLOCK_H)
        up = _rows_dot_x(w_rs_ptr, E + S + rows, row_ok, x_ptr, H, BLOCK_I, BLOCK_H)
        # rounded to x's dtype, as the projection's output was
        gate = gate.to(x_ptr.dtype.element_ty).to(tl.float32)
        up = up.to(x_ptr.dtype.element_ty).to(tl.float32)
        tl.store(h_ptr + TOP_K * HS + rows, gate * tl.sigmoid(gate) * up, mask=row_ok)
    else:
        slot = (u - N_S) // n_ib
        rows = ((u - N_S) % n_ib) * BLOCK_I + tl.arange(0, BLOCK_I)  # [BLOCK_I]
        row_ok = rows < I
        _wait(sync_ptr + ROUTED, 1, BACKOFF)
        e = tl.load(ids_ptr + slot, cache_modifier=".cg").to(tl.int64)
        expert = gate_up_ptr + e * (2 * I * H)
        gate = _rows_dot_x(expert, rows, row_ok, x_ptr, H, BLOCK_I, BLOCK_H)
        up = _rows_dot_x(expert, I + rows, row_ok, x_ptr, H, BLOCK_I, BLOCK_H)
        tl.store(h_ptr + slot * HS + rows, gate * tl.sigmoid(gate) * up, mask=row_ok)
    _arrive(sync_ptr + H_DONE)


@triton.jit
def _down_role(v, down_ptr, shared_down_ptr, out_ptr, logits_ptr, ids_ptr, weights_ptr, h_ptr, sync_ptr,
               H: tl.constexpr, I: tl.constexpr, S: tl.constexpr, E: tl.constexpr, TOP_K: tl.constexpr,
               K_P2: tl.constexpr, HS: tl.constexpr, N_H: tl.constexpr, BLOCK_OUT: tl.constexpr,
               I_P2: tl.constexpr, S_P2: tl.constexpr, BACKOFF: tl.constexpr):
    """D program v: BLOCK_OUT output rows. Its down rows load before it waits for the N_H programs of h."""
    rows = v * BLOCK_OUT + tl.arange(0, BLOCK_OUT)  # [BLOCK_OUT]
    row_ok = rows < H
    slots = tl.arange(0, K_P2)
    slot_ok = slots < TOP_K
    cols = tl.arange(0, I_P2)
    s_cols = tl.arange(0, S_P2)
    # the shared expert's rows first: they wait for nothing
    sd = tl.load(shared_down_ptr + rows[:, None] * S + s_cols[None, :],
                 mask=row_ok[:, None] & (s_cols < S)[None, :], other=0.0, eviction_policy="evict_first")
    _wait(sync_ptr + ROUTED, 1, BACKOFF)
    e = tl.load(ids_ptr + slots, mask=slot_ok, other=0, cache_modifier=".cg").to(tl.int64)  # [K_P2]
    w = tl.load(weights_ptr + slots, mask=slot_ok, other=0.0, cache_modifier=".cg")  # [K_P2]
    gate = tl.load(logits_ptr + E, cache_modifier=".cg")
    d_ptrs = down_ptr + e[:, None, None] * (H * I) + rows[None, :, None] * I + cols[None, None, :]
    d_ok = slot_ok[:, None, None] & row_ok[None, :, None] & (cols < I)[None, None, :]
    d = tl.load(d_ptrs, mask=d_ok, other=0.0, eviction_policy="evict_first")  # [K_P2, BLOCK_OUT, I_P2]
    _wait(sync_ptr + H_DONE, N_H, BACKOFF)
    hv = tl.load(h_ptr + slots[:, None] * HS + cols[None, :], mask=slot_ok[:, None] & (cols < I)[None, :],
                 other=0.0, cache_modifier=".cg")  # [K_P2, I_P2]
    hs = tl.load(h_ptr + TOP_K * HS + s_cols, mask=s_cols < S, other=0.0, cache_modifier=".cg")  # [S_P2]
    routed = tl.sum(tl.sum(d.to(tl.float32) * (hv * w[:, None])[:, None, :], 2), 0)  # [BLOCK_OUT]
    shared = tl.sum(sd.to(tl.float32) * hs[None, :], 1)
    tl.store(out_ptr + rows, (routed + tl.sigmoid(gate) * shared).to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def moe_layer_decode_kernel(
    x_ptr, w_rs_ptr, gate_up_ptr, down_ptr, shared_down_ptr, out_ptr,
    logits_ptr, ids_ptr, weights_ptr, h_ptr, sync_ptr,
    H: tl.constexpr, I: tl.constexpr, S: tl.constexpr, E: tl.constexpr, E_P2: tl.constexpr,
    TOP_K: tl.constexpr, K_P2: tl.constexpr, RENORM: tl.constexpr, HS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_OUT: tl.constexpr,
    I_P2: tl.constexpr, S_P2: tl.constexpr, BACKOFF: tl.constexpr, trace_ptr=None, TRACE: tl.constexpr = False,
):
    N_R: tl.constexpr = (E + 1 + BLOCK_R - 1) // BLOCK_R
    N_S: tl.constexpr = (S + BLOCK_I - 1) // BLOCK_I
    N_H: tl.constexpr = N_S + TOP_K * ((I + BLOCK_I - 1) // BLOCK_I)
    N_D: tl.constexpr = (H + BLOCK_OUT - 1) // BLOCK_OUT
    t = tl.atomic_add(sync_ptr + TICKET, 1, sem="relaxed", scope="gpu")
    if TRACE:  # scripts/device/moe_layer_probe.py trace: each ticket's start and end on the global timer (ns)
        tl.store(trace_ptr + 2 * t, _now(t))
    if t < N_R:
        _route_role(t, x_ptr, w_rs_ptr, logits_ptr, ids_ptr, weights_ptr, sync_ptr, H, S, E, E_P2, TOP_K, K_P2,
                    RENORM, N_R, BLOCK_R, BLOCK_H)
    elif t < N_R + N_H:
        _gate_up_role(t - N_R, x_ptr, w_rs_ptr, gate_up_ptr, ids_ptr, h_ptr, sync_ptr, H, I, S, E, TOP_K, HS, N_S,
                      BLOCK_I, BLOCK_H, BACKOFF)
    else:
        _down_role(t - N_R - N_H, down_ptr, shared_down_ptr, out_ptr, logits_ptr, ids_ptr, weights_ptr, h_ptr,
                   sync_ptr, H, I, S, E, TOP_K, K_P2, HS, N_H, BLOCK_OUT, I_P2, S_P2, BACKOFF)
    if TRACE:
        tl.store(trace_ptr + 2 * t + 1, _now(t))
    if _arrive(sync_ptr + FINISHED) == N_R + N_H + N_D - 1:
        every = tl.arange(0, 8)
        tl.store(sync_ptr + every * LINE, tl.zeros([8], dtype=tl.int32), mask=every < COUNTERS)


def moe_layer_decode(
    x: torch.Tensor,
    w_rs: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    shared_down: torch.Tensor,
    sync: torch.Tensor,
    top_k: int,
    renormalize: bool,
    cfg: LayerConfig = LayerConfig(),
    trace: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [1, H]; w_rs [E + 2S + 1, H]; gate_up [E, 2I, H]; down [E, H, I]; shared_down [H, S]; sync [SYNC_LEN]
    int32, zero (and zero again when the kernel ends) -> [1, H] in x's dtype. trace: [2 * programs] int64 for
    each ticket's start and end times (GPU only)."""
    E, I2, H = gate_up.shape
    I, S = I2 // 2, shared_down.shape[1]
    k_p2, i_p2 = next_pow2(top_k), next_pow2(I)
    HS = max(I, S)
    dev = x.device
    logits = torch.empty((E + 1,), device=dev, dtype=torch.float32)
    ids = torch.empty((top_k,), device=dev, dtype=torch.int32)
    weights = torch.empty((top_k,), device=dev, dtype=torch.float32)
    h = torch.empty((top_k + 1, HS), device=dev, dtype=torch.float32)
    out = torch.empty_like(x)
    block_i = min(cfg.block_i, next_pow2(max(I, S)))
    block_out = max(1, min(cfg.block_out, next_pow2(H), cfg.tile_down // (k_p2 * i_p2)))
    block_out = 1 << (block_out.bit_length() - 1)
    grid = (triton.cdiv(E + 1, cfg.block_r) + triton.cdiv(S, block_i) + top_k * triton.cdiv(I, block_i)
            + triton.cdiv(H, block_out),)
    launch(moe_layer_decode_kernel)[grid](
        x.contiguous(), w_rs, gate_up, down, shared_down, out, logits, ids, weights, h, sync,
        H=H, I=I, S=S, E=E, E_P2=next_pow2(E), TOP_K=top_k, K_P2=k_p2, RENORM=renormalize, HS=HS,
        BLOCK_R=cfg.block_r, BLOCK_I=block_i, BLOCK_H=min(cfg.block_h, next_pow2(H)), BLOCK_OUT=block_out,
        I_P2=i_p2, S_P2=next_pow2(S), BACKOFF=cfg.backoff and not INTERPRETED, trace_ptr=trace,
        TRACE=trace is not None, num_warps=cfg.warps,
    )
    return out
