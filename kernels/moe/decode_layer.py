"""One-token MoE layer in one launch: the router / shared-expert projection, top-k, every expert's gate/up
and the down projections, as work items of one grid that wait on each other through counters in `sync`.

Three dependent launches (router, gate/up, down) each paid a ramp-up and a drain at batch 1
(kernels/moe/NOTES.md, run 5); here the items of a later stage are resident and loading their weights when
their inputs land.

Each program first takes a ticket (an atomic counter); the ticket, not the program id, names its item, so a
program only ever waits on items with lower tickets, which are running or done whatever order the hardware
starts programs in. Items, in ticket order (`ticket_items` spells the order out):
- R, cdiv(E + 1, BLOCK_R): router logits and the shared gate logit, rows of W_rs rounded to x's dtype (as a
  projection in x's dtype would); the last R item to finish routes and publishes each slot's expert id.
- S, cdiv(S, BLOCK_I): silu(gate_s x) * (up_s x) of the shared expert (gate_s, up_s rounded likewise).
- D of the shared expert, cdiv(H, BLOCK_OUT): sigmoid(gate logit) * down_s h_s for BLOCK_OUT output rows.
- then per slot s, G_s, cdiv(I, BLOCK_I) items of silu(gate_e x) * (up_e x) for the slot's expert e, and D_s,
  cdiv(H, BLOCK_OUT) items of w_s * down_e h_s, D_s placed LAG slots after G_s: a D item loads its down rows
  as soon as the slot is routed and waits only for its own slot's h, so the down weights stream while later
  slots' gate/up run, and the layer's tail is one slot's down rows, not all of them.
Each D item stores its rows' partial sum; the last of the TOP_K + 1 partials of a row block to arrive adds
them in slot order (deterministic) and writes the output rows. The last program to finish sets the counters
back to zero for the next call (each row block's counter is reset by its own last arrival).

W_rs [E + 2S + 1, H] = [router | shared gate | shared up | shared gate logit] (`reference.moe_shared`).

Not behind the ops: on the H100 it took 32.6 us against 31.2 for the model's layer (gdn::gemv + gdn::moe_shared),
and an op would need the projection weight and a mutable `sync` buffer (kernels/moe/NOTES.md, session 13, with
the per-item timeline of `scripts/device/moe_layer_probe.py trace`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..launch import INTERPRETED, launcher, next_pow2
from .route import pick_top_k

# sync, int32, zero between calls; one 128-byte line per counter (the ticket's and the finish counter's atomics
# and the waiters' polling would otherwise queue behind each other): TICKET, R_DONE, FINISHED, then TOP_K + 1
# H_DONE lines (slot TOP_K is the shared expert), a line of routed ids + 1 (0: not routed yet), then one
# counter per D row block
LINE_INTS = 32
LINE = tl.constexpr(LINE_INTS)
TICKET, R_DONE, FINISHED, H_DONE = (tl.constexpr(i * LINE_INTS) for i in range(4))


@dataclass(frozen=True)
class LayerConfig:
    block_r: int = 2  # router rows per R item
    block_i: int = 4  # gate/up rows per S / G item
    block_h: int = 2048  # columns per unrolled step of the R / S / G mat-vecs
    block_out: int = 16  # output rows per D item (of one slot)
    lag: int = 8  # D_s follows G_(s + min(lag, top_k)): 8, all gate/up before any routed down, 32.6 us; 1, 35.4 us
    warps: int = 4
    backoff: bool = False  # sleep between polls (GPU only)


def d_rows(cfg: LayerConfig, H: int) -> int:
    return min(cfg.block_out, next_pow2(H))


def sync_len(H: int, top_k: int, cfg: LayerConfig = LayerConfig()) -> int:
    """Length of the int32 `sync` buffer for hidden size H and top_k (at most LINE_INTS) slots."""
    return (5 + top_k) * LINE_INTS + triton.cdiv(H, d_rows(cfg, H))


def ticket_items(E: int, H: int, I: int, S: int, top_k: int, cfg: LayerConfig = LayerConfig()) -> list[tuple]:
    """(role, slot) of each ticket, in order: the schedule the kernel decodes from its ticket."""
    n_g, n_d = triton.cdiv(I, min(cfg.block_i, next_pow2(max(I, S)))), triton.cdiv(H, d_rows(cfg, H))
    items = [("R", None)] * triton.cdiv(E + 1, cfg.block_r) + [("S", top_k)] * triton.cdiv(
        S, min(cfg.block_i, next_pow2(max(I, S)))) + [("D", top_k)] * n_d
    lag = min(cfg.lag, top_k)
    for s in range(top_k + lag):
        if s < top_k:
            items += [("G", s)] * n_g
        if s >= lag:
            items += [("D", s - lag)] * n_d
    return items


@triton.jit
def _arrive(counter_ptr):
    """Release this program's stores (every thread's: the barrier first), count it; -> the count before."""
    tl.debug_barrier()
    return tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")


@triton.jit
def _load_acquire(ptr, ACQ_ASM: tl.constexpr):
    """One int32 with acquire semantics: a single ld.acquire on the GPU; the interpreter has no inline PTX."""
    if ACQ_ASM:
        v = tl.inline_asm_elementwise("ld.global.acquire.gpu.b32 $0, [$1];", "=r,l", [ptr], dtype=tl.int32,
                                      is_pure=False, pack=1)
    else:
        v = tl.atomic_add(ptr, 0, sem="acquire", scope="gpu")
    return v


@triton.jit
def _wait(counter_ptr, target, BACKOFF: tl.constexpr, ACQ_ASM: tl.constexpr):
    """Spin until the counter reaches target; -> its value. The acquiring load is the poll itself (one round
    trip fewer than a volatile poll followed by an acquiring atomic). BACKOFF sleeps between polls."""
    v = _load_acquire(counter_ptr, ACQ_ASM)
    while v < target:
        if BACKOFF:
            tl.inline_asm_elementwise("nanosleep.u32 128; mov.u32 $0, $1;", "=r,r", [target], dtype=tl.int32,
                                      is_pure=False, pack=1)
        v = _load_acquire(counter_ptr, ACQ_ASM)
    if not ACQ_ASM:  # one thread's atomic acquired: the others follow it past a barrier
        tl.debug_barrier()
    return v


@triton.jit
def _routed_expert(ids_ptr, slot, BACKOFF: tl.constexpr, ACQ_ASM: tl.constexpr):
    """The expert of `slot` (int64) once the router has published it as id + 1."""
    return (_wait(ids_ptr + slot, 1, BACKOFF, ACQ_ASM) - 1).to(tl.int64)


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
def _route_item(t, x_ptr, w_rs_ptr, logits_ptr, weights_ptr, sync_ptr, H: tl.constexpr, S: tl.constexpr,
                E: tl.constexpr, E_P2: tl.constexpr, TOP_K: tl.constexpr, K_P2: tl.constexpr, RENORM: tl.constexpr,
                N_R: tl.constexpr, IDS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    """R item t: BLOCK_R logits (logical row E is the shared gate logit); the last one to finish routes: the
    weights first, then each slot's id + 1 with release semantics (what G and D items poll)."""
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
        tl.store(weights_ptr + slots, top, mask=slots < TOP_K)
        tl.debug_barrier()
        tl.atomic_xchg(sync_ptr + IDS + slots, ids + 1, mask=slots < TOP_K, sem="release", scope="gpu")


@triton.jit
def _gate_up_item(slot, ib, x_ptr, w_rs_ptr, gate_up_ptr, h_ptr, sync_ptr, H: tl.constexpr, I: tl.constexpr, S: tl.constexpr,
                  E: tl.constexpr, TOP_K: tl.constexpr, HS: tl.constexpr, IDS: tl.constexpr, BLOCK_I: tl.constexpr,
                  BLOCK_H: tl.constexpr, BACKOFF: tl.constexpr, ACQ_ASM: tl.constexpr):
    """S (slot == TOP_K, rows of W_rs) or G item: BLOCK_I rows ib of h[slot] = silu(gate x) * (up x)."""
    rows = ib * BLOCK_I + tl.arange(0, BLOCK_I)  # [BLOCK_I]
    if slot == TOP_K:
        row_ok = rows < S
        gate = _rows_dot_x(w_rs_ptr, E + rows, row_ok, x_ptr, H, BLOCK_I, BLOCK_H)
        up = _rows_dot_x(w_rs_ptr, E + S + rows, row_ok, x_ptr, H, BLOCK_I, BLOCK_H)
        # rounded to x's dtype, as the projection's output was
        gate = gate.to(x_ptr.dtype.element_ty).to(tl.float32)
        up = up.to(x_ptr.dtype.element_ty).to(tl.float32)
    else:
        row_ok = rows < I
        expert = gate_up_ptr + _routed_expert(sync_ptr + IDS, slot, BACKOFF, ACQ_ASM) * (2 * I * H)
        gate = _rows_dot_x(expert, rows, row_ok, x_ptr, H, BLOCK_I, BLOCK_H)
        up = _rows_dot_x(expert, I + rows, row_ok, x_ptr, H, BLOCK_I, BLOCK_H)
    tl.store(h_ptr + slot * HS + rows, gate * tl.sigmoid(gate) * up, mask=row_ok)
    _arrive(sync_ptr + H_DONE + slot * LINE)


@triton.jit
def _shared_partial(rows, row_ok, shared_down_ptr, logits_ptr, h_ptr, sync_ptr, S: tl.constexpr, E: tl.constexpr,
                    TOP_K: tl.constexpr, HS: tl.constexpr, N_R: tl.constexpr, N_S: tl.constexpr,
                    S_P2: tl.constexpr, BACKOFF: tl.constexpr, ACQ_ASM: tl.constexpr):
    """[BLOCK_OUT] sigmoid(gate logit) * down_s h_s; the rows load before the wait for h_s and the logit."""
    cols = tl.arange(0, S_P2)
    d = tl.load(shared_down_ptr + rows[:, None] * S + cols[None, :], mask=row_ok[:, None] & (cols < S)[None, :],
                other=0.0, eviction_policy="evict_first")  # [BLOCK_OUT, S_P2]
    _wait(sync_ptr + H_DONE + TOP_K * LINE, N_S, BACKOFF, ACQ_ASM)
    _wait(sync_ptr + R_DONE, N_R, BACKOFF, ACQ_ASM)
    hv = tl.load(h_ptr + TOP_K * HS + cols, mask=cols < S, other=0.0, cache_modifier=".cg")  # [S_P2]
    gate = tl.load(logits_ptr + E, cache_modifier=".cg")
    return tl.sigmoid(gate) * tl.sum(d.to(tl.float32) * hv[None, :], 1)


@triton.jit
def _routed_partial(slot, rows, row_ok, down_ptr, weights_ptr, h_ptr, sync_ptr, H: tl.constexpr, I: tl.constexpr,
                    HS: tl.constexpr, N_G: tl.constexpr, IDS: tl.constexpr, I_P2: tl.constexpr,
                    BACKOFF: tl.constexpr, ACQ_ASM: tl.constexpr):
    """[BLOCK_OUT] w_slot * down_e h_slot; the rows load as soon as the slot is routed, before the wait for h."""
    e = _routed_expert(sync_ptr + IDS, slot, BACKOFF, ACQ_ASM)
    cols = tl.arange(0, I_P2)
    d = tl.load(down_ptr + e * (H * I) + rows[:, None] * I + cols[None, :],
                mask=row_ok[:, None] & (cols < I)[None, :], other=0.0, eviction_policy="evict_first")
    w = tl.load(weights_ptr + slot, cache_modifier=".cg")
    _wait(sync_ptr + H_DONE + slot * LINE, N_G, BACKOFF, ACQ_ASM)
    hv = tl.load(h_ptr + slot * HS + cols, mask=cols < I, other=0.0, cache_modifier=".cg")  # [I_P2]
    return w * tl.sum(d.to(tl.float32) * hv[None, :], 1)


@triton.jit
def _down_item(slot, rb, down_ptr, shared_down_ptr, out_ptr, logits_ptr, weights_ptr, h_ptr, part_ptr, sync_ptr,
               H: tl.constexpr, I: tl.constexpr, S: tl.constexpr, E: tl.constexpr, TOP_K: tl.constexpr,
               HS: tl.constexpr, N_R: tl.constexpr, N_G: tl.constexpr, N_S: tl.constexpr, IDS: tl.constexpr,
               RB: tl.constexpr, BLOCK_OUT: tl.constexpr, I_P2: tl.constexpr, S_P2: tl.constexpr,
               KS_P2: tl.constexpr, BACKOFF: tl.constexpr, ACQ_ASM: tl.constexpr):
    """D item: the partial sum of slot `slot` (TOP_K: the shared expert) for output rows rb; the row block's last
    partial adds all TOP_K + 1 in slot order and stores the output rows."""
    rows = rb * BLOCK_OUT + tl.arange(0, BLOCK_OUT)  # [BLOCK_OUT]
    row_ok = rows < H
    if slot == TOP_K:
        p = _shared_partial(rows, row_ok, shared_down_ptr, logits_ptr, h_ptr, sync_ptr, S, E, TOP_K, HS, N_R, N_S,
                            S_P2, BACKOFF, ACQ_ASM)
    else:
        p = _routed_partial(slot, rows, row_ok, down_ptr, weights_ptr, h_ptr, sync_ptr, H, I, HS, N_G, IDS, I_P2,
                            BACKOFF, ACQ_ASM)
    tl.store(part_ptr + slot * H + rows, p, mask=row_ok)
    if _arrive(sync_ptr + RB + rb) == TOP_K:
        slots = tl.arange(0, KS_P2)
        parts = tl.load(part_ptr + slots[:, None] * H + rows[None, :], mask=(slots <= TOP_K)[:, None] & row_ok[None, :],
                        other=0.0, cache_modifier=".cg")  # [KS_P2, BLOCK_OUT]
        tl.store(out_ptr + rows, tl.sum(parts, 0).to(out_ptr.dtype.element_ty), mask=row_ok)
        tl.store(sync_ptr + RB + rb, 0)


@triton.jit
def _item_of_ticket(t, N_R: tl.constexpr, N_S: tl.constexpr, N_G: tl.constexpr, N_D: tl.constexpr,
                    TOP_K: tl.constexpr, LAG: tl.constexpr):
    """A non-R ticket's (is gate/up, slot, index within the slot's items), the order of `ticket_items`."""
    first_g: tl.constexpr = N_R + N_S + N_D
    period: tl.constexpr = N_G + N_D
    u = t - first_g
    lead = u < LAG * N_G  # G of the first LAG slots
    q = tl.maximum(u - LAG * N_G, 0)
    r = q % period
    g_mid = r < N_G  # G_(LAG + q // period), else D_(q // period)
    tail = u >= TOP_K * N_G + (TOP_K - LAG) * N_D  # D of the last LAG slots
    c = tl.maximum(u - TOP_K * N_G - (TOP_K - LAG) * N_D, 0)
    is_g = tl.where(lead, True, tl.where(tail, False, g_mid))
    slot = tl.where(lead, u // N_G, tl.where(tail, TOP_K - LAG + c // N_D, q // period + tl.where(g_mid, LAG, 0)))
    j = tl.where(lead, u % N_G, tl.where(tail, c % N_D, tl.where(g_mid, r, r - N_G)))
    pre = t < first_g  # the shared expert's S, then D items
    is_g = tl.where(pre, t < N_R + N_S, is_g)
    slot = tl.where(pre, TOP_K, slot)
    j = tl.where(pre, tl.where(t < N_R + N_S, t - N_R, t - N_R - N_S), j)
    return is_g, slot, j


@triton.jit
def moe_layer_decode_kernel(
    x_ptr, w_rs_ptr, gate_up_ptr, down_ptr, shared_down_ptr, out_ptr,
    logits_ptr, weights_ptr, h_ptr, part_ptr, sync_ptr,
    H: tl.constexpr, I: tl.constexpr, S: tl.constexpr, E: tl.constexpr, E_P2: tl.constexpr,
    TOP_K: tl.constexpr, K_P2: tl.constexpr, RENORM: tl.constexpr, HS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_OUT: tl.constexpr, LAG: tl.constexpr,
    I_P2: tl.constexpr, S_P2: tl.constexpr, KS_P2: tl.constexpr, BACKOFF: tl.constexpr, ACQ_ASM: tl.constexpr,
    trace_ptr=None,
    TRACE: tl.constexpr = False,
):
    N_R: tl.constexpr = (E + 1 + BLOCK_R - 1) // BLOCK_R
    N_S: tl.constexpr = (S + BLOCK_I - 1) // BLOCK_I
    N_G: tl.constexpr = (I + BLOCK_I - 1) // BLOCK_I  # G items per slot
    N_D: tl.constexpr = (H + BLOCK_OUT - 1) // BLOCK_OUT  # D items per slot
    IDS: tl.constexpr = (4 + TOP_K) * LINE
    RB: tl.constexpr = (5 + TOP_K) * LINE
    N_ALL: tl.constexpr = N_R + N_S + N_D + TOP_K * (N_G + N_D)
    t = tl.atomic_add(sync_ptr + TICKET, 1, sem="relaxed", scope="gpu")
    if TRACE:  # scripts/device/moe_layer_probe.py trace: each ticket's start and end on the global timer (ns)
        tl.store(trace_ptr + 2 * t, _now(t))
    if t < N_R:
        _route_item(t, x_ptr, w_rs_ptr, logits_ptr, weights_ptr, sync_ptr, H, S, E, E_P2, TOP_K, K_P2, RENORM, N_R,
                    IDS, BLOCK_R, BLOCK_H)
    else:
        is_g, slot, j = _item_of_ticket(t, N_R, N_S, N_G, N_D, TOP_K, LAG)
        if is_g:
            _gate_up_item(slot, j, x_ptr, w_rs_ptr, gate_up_ptr, h_ptr, sync_ptr, H, I, S, E, TOP_K, HS, IDS,
                          BLOCK_I, BLOCK_H, BACKOFF, ACQ_ASM)
        else:
            _down_item(slot, j, down_ptr, shared_down_ptr, out_ptr, logits_ptr, weights_ptr, h_ptr, part_ptr,
                       sync_ptr, H, I, S, E, TOP_K, HS, N_R, N_G, N_S, IDS, RB, BLOCK_OUT, I_P2, S_P2, KS_P2,
                       BACKOFF, ACQ_ASM)
    if TRACE:
        tl.store(trace_ptr + 2 * t + 1, _now(t))
    if _arrive(sync_ptr + FINISHED) == N_ALL - 1:
        lines = tl.arange(0, 64)
        tl.store(sync_ptr + lines * LINE, tl.zeros([64], dtype=tl.int32), mask=lines < 4 + TOP_K)
        tl.store(sync_ptr + IDS + tl.arange(0, LINE), tl.zeros([LINE], dtype=tl.int32))


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
    """x [1, H]; w_rs [E + 2S + 1, H]; gate_up [E, 2I, H]; down [E, H, I]; shared_down [H, S]; sync
    [>= sync_len(H, top_k, cfg)] int32, zero (and zero again when the kernel ends) -> [1, H] in x's dtype.
    trace: [2 * len(ticket_items(...))] int64 for each ticket's start and end times (GPU only)."""
    E, I2, H = gate_up.shape
    I, S = I2 // 2, shared_down.shape[1]
    if cfg.lag < 0 or top_k > LINE_INTS or sync.numel() < sync_len(H, top_k, cfg):
        raise ValueError(f"need lag >= 0 (got {cfg.lag}), top_k <= {LINE_INTS} (got {top_k}) and sync of "
                         f"{sync_len(H, top_k, cfg)} int32, got {sync.numel()}")
    HS = max(I, S)
    dev = x.device
    logits = torch.empty((E + 1,), device=dev, dtype=torch.float32)
    weights = torch.empty((top_k,), device=dev, dtype=torch.float32)
    h = torch.empty((top_k + 1, HS), device=dev, dtype=torch.float32)
    part = torch.empty((top_k + 1, H), device=dev, dtype=torch.float32)
    out = torch.empty_like(x)
    block_i = min(cfg.block_i, next_pow2(HS))
    grid = (len(ticket_items(E, H, I, S, top_k, cfg)),)
    launcher(moe_layer_decode_kernel)[grid](
        x.contiguous(), w_rs, gate_up, down, shared_down, out, logits, weights, h, part, sync,
        H=H, I=I, S=S, E=E, E_P2=next_pow2(E), TOP_K=top_k, K_P2=next_pow2(top_k), RENORM=renormalize, HS=HS,
        BLOCK_R=cfg.block_r, BLOCK_I=block_i, BLOCK_H=min(cfg.block_h, next_pow2(H)), BLOCK_OUT=d_rows(cfg, H),
        LAG=min(cfg.lag, top_k), I_P2=next_pow2(I), S_P2=next_pow2(S), KS_P2=next_pow2(top_k + 1), BACKOFF=cfg.backoff and not INTERPRETED,
        ACQ_ASM=not INTERPRETED, trace_ptr=trace, TRACE=trace is not None, num_warps=cfg.warps,
    )
    return out
