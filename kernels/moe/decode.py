"""One-token MoE: fused mat-vec kernels that read the selected experts' weights in place, by index.

Kernel 1 computes h[slot] = silu(gate_e x) * (up_e x) for a slice of rows of expert e = ids[slot]; kernel 2
y = sum_slot w_slot * down_e h[slot] for a slice of output rows, plus optionally the shared expert
sigmoid(g) * down_s (silu(gate_s) * up_s), whose gate/up come precomputed. `DecodeConfig` selects:
- router "inline": every kernel-1 program routes the token itself (no extra launch; it writes ids/weights
  for kernel 2 from program 0); "kernel": one routing program runs first and kernel 1 reads its slot's id.
- pick "argmax": three block-wide reductions per selected expert (`route_row`); "packed": one (`route_row_packed`);
  "topk": one bitonic top-k of the packed keys (`pick_top_k`).
- gate_up / down "tile": the kernels of runs 1-3 (kernel 1 on a (slot, row block) grid with [BLOCK_I, BLOCK_H]
  accumulators walked by a loop; kernel 2 one [K_P2, BLOCK_OUT, BLOCK_INNER] load per step, the shared
  expert's rows in a second loop); "unrolled": the column steps unrolled, so that no weight load waits on the
  math of another step, x / h loaded without a trip through shared memory, and in kernel 2 the shared expert's
  rows loaded beside the routed ones.
- shared "down": the shared expert's down projection inside kernel 2; "router": in the router kernel's launch,
  beside the routing program, and kernel 2 adds its output rows.
- pdl "off" | "on" | "serial" (kernels/pdl.py): the kernels' programmatic-dependent-launch form, launched
  with PDL or in stream order.
`BASELINE` is the design measured in runs 1-3, `UNROLLED` the unrolled kernels; scripts/sass_moe_decode.py shows the kernels' SASS load order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..pdl import MODES as PDL_MODES, grid_release, grid_wait, pdl_args
from ..launch import launcher, next_pow2
from .route import PICKS, route_any, route_store

CHOICES = {"router": ("inline", "kernel"), "pick": PICKS, "gate_up": ("tile", "unrolled"),
           "down": ("tile", "unrolled"), "shared": ("down", "router"), "pdl": PDL_MODES}


@dataclass(frozen=True)
class DecodeConfig:
    """The defaults are the fastest plain design measured on the H100 (kernels/moe/NOTES.md, run 5 and session
    12): the router kernel with the bitonic top-k, the unrolled kernel 1 and the tile kernel 2 of runs 1-3
    (`BASELINE`). The ops run it with pdl "on" (`op.ARTIFACT_DECODE`, session 16)."""

    router: str = "kernel"  # "inline" repeats the routing in each of the ~1000 kernel-1 programs' issue slots
    pick: str = "topk"  # the router kernel alone 4.9 us against 5.4 for "argmax" (NOTES.md, session 12)
    gate_up: str = "unrolled"
    down: str = "tile"
    block_i: int = 2  # gate/up rows per program (of each of gate and up)
    block_h: int = 2048  # columns per step of the gate/up mat-vec
    block_out: int = 4  # output rows per program of the down mat-vec
    block_inner: int = 512  # "unrolled" down: columns per step (per slot)
    tile_down: int = 16384  # "tile" down: elements per step, k_p2 * block_out * block_inner
    warps_gate_up: int = 8
    warps_down: int = 8
    warps_router: int = 1  # "kernel" router: one warp reduces with shuffles alone, no shared-memory rounds
    # where the shared expert's down projection runs: fused into kernel 2 ("down"), or in the router kernel's
    # launch ("router"), beside the one routing program, on the SMs that routing leaves idle
    shared: str = "down"
    block_shared: int = 8  # "router": shared-expert output rows per program
    # programmatic dependent launch (kernels/pdl.py): each kernel starts while the one before it drains;
    # kernel 2 loads its weights before waiting for kernel 1's h. Needs router "kernel" and down "tile",
    # so off in the plain default; artifacts launch it with PDL too (gdn.export.aoti_pdl)
    pdl: str = "off"

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"DecodeConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.shared == "router" and (self.router, self.down) != ("kernel", "tile"):
            raise ValueError(f"DecodeConfig.shared 'router' needs router 'kernel' and down 'tile', got "
                             f"{self.router!r} and {self.down!r}")
        # kernel 2 reads the router's ids before its wait: they must come from a launch before kernel 1
        if self.pdl != "off" and (self.router, self.down) != ("kernel", "tile"):
            raise ValueError(f"DecodeConfig.pdl needs router 'kernel' and down 'tile', got {self.router!r} and "
                             f"{self.down!r}")


BASELINE = DecodeConfig(router="inline", pick="argmax", gate_up="tile", down="tile", block_i=4, block_h=2048,
                        block_out=4, tile_down=16384, warps_gate_up=8, warps_down=8)
# the unrolled kernels behind the router kernel: kernel 1 faster, kernel 2 3.5x slower than the tile kernel (run 4)
UNROLLED = DecodeConfig(pick="packed", gate_up="unrolled", down="unrolled", block_i=4, block_h=512, warps_gate_up=4)
# run 4's default: the router kernel in front of the tile kernels
RUN4 = DecodeConfig(gate_up="tile", block_i=4)


@triton.jit
def slot_expert(slot, writer, logits_ptr, logits_col_stride, ids_ptr, weights_ptr, E: tl.constexpr,
                E_P2: tl.constexpr, TOP_K: tl.constexpr, K_P2: tl.constexpr, RENORM: tl.constexpr,
                ROUTE: tl.constexpr, PICK: tl.constexpr):
    """Expert id (int64) of `slot`: routed here when ROUTE (the `writer` program stores ids/weights for
    kernel 2), else one load of the router kernel's output."""
    if ROUTE:
        ids, top = route_any(logits_ptr, 0, logits_col_stride, E, E_P2, TOP_K, K_P2, RENORM, PICK)
        slots = tl.arange(0, K_P2)
        if writer:
            tl.store(ids_ptr + slots, ids, mask=slots < TOP_K)
            tl.store(weights_ptr + slots, top, mask=slots < TOP_K)
        e = tl.sum(tl.where(slots == slot, ids, 0), 0)
    else:
        e = tl.load(ids_ptr + slot)
    return e.to(tl.int64)


@triton.jit
def shared_down_rows(rows, row_ok, act_ptr, act_stride, gate_ptr, sdown_ptr, S: tl.constexpr, S_P2: tl.constexpr):
    """[BLOCK] float32: the shared expert's output rows, sigmoid(gate) * down_s[rows] (silu(g) * u), with
    g | u = act [2S] (any stride) from the router projection."""
    cols = tl.arange(0, S_P2)
    ok = cols < S
    g = tl.load(act_ptr + cols * act_stride, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(act_ptr + (S + cols) * act_stride, mask=ok, other=0.0).to(tl.float32)
    d = tl.load(sdown_ptr + rows[:, None] * S + cols[None, :], mask=row_ok[:, None] & ok[None, :], other=0.0)
    gate = tl.sigmoid(tl.load(gate_ptr).to(tl.float32))
    return gate * tl.sum(d.to(tl.float32) * (g * tl.sigmoid(g) * u)[None, :], 1)


@triton.jit
def decode_route_kernel(logits_ptr, col_stride, ids_ptr, weights_ptr, act_ptr, act_stride, gate_ptr, sdown_ptr,
                        shared_out_ptr, E: tl.constexpr, E_P2: tl.constexpr, TOP_K: tl.constexpr, K_P2: tl.constexpr,
                        RENORM: tl.constexpr, PICK: tl.constexpr, H: tl.constexpr, S: tl.constexpr,
                        S_P2: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr, GDC: tl.constexpr):
    """The "kernel" router of one token. Program 0: ids [TOP_K] int32, weights [TOP_K] float32. Programs 1..
    (BLOCK_S > 0, shared "router"): BLOCK_S rows each of the shared expert's output, float32 [H] into
    shared_out, for kernel 2 to add."""
    pid = tl.program_id(0)
    # kernel 1 may start at once: its programs wait for this launch to finish before reading anything
    grid_release(GDC)
    grid_wait(GDC)
    if pid == 0:
        route_store(0, logits_ptr, 0, col_stride, ids_ptr, weights_ptr, E, E_P2, TOP_K, K_P2, RENORM, PICK)
    elif BLOCK_S > 0:
        rows = (pid - 1) * BLOCK_S + tl.arange(0, BLOCK_S)
        row_ok = rows < H
        out = shared_down_rows(rows, row_ok, act_ptr, act_stride, gate_ptr, sdown_ptr, S, S_P2)
        tl.store(shared_out_ptr + rows, out, mask=row_ok)


@triton.jit
def decode_gate_up_kernel(
    x_ptr,
    logits_ptr,
    logits_col_stride,
    w_ptr,
    h_ptr,
    ids_ptr,
    weights_ptr,
    H: tl.constexpr,
    I: tl.constexpr,
    E: tl.constexpr,
    E_P2: tl.constexpr,
    TOP_K: tl.constexpr,
    K_P2: tl.constexpr,
    RENORM: tl.constexpr,
    ROUTE: tl.constexpr,
    PICK: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PDL: tl.constexpr,
    GDC: tl.constexpr,
):
    """The "tile" kernel 1: grid (TOP_K, I / BLOCK_I), [BLOCK_I, BLOCK_H] accumulators, H walked by a loop."""
    slot = tl.program_id(0)
    pid_i = tl.program_id(1)
    grid_wait(GDC)
    # after the wait, so that kernel 2's early loads of the router's ids find them written
    grid_release(GDC)
    e = slot_expert(slot, (slot == 0) & (pid_i == 0), logits_ptr, logits_col_stride, ids_ptr, weights_ptr,
                    E, E_P2, TOP_K, K_P2, RENORM, ROUTE, PICK)
    rows = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    row_ok = rows < I
    gate_ptrs = w_ptr + e * (2 * I * H) + rows[:, None] * H  # [BLOCK_I, 1]
    acc_g = tl.zeros([BLOCK_I, BLOCK_H], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_I, BLOCK_H], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H)
        col_ok = cols < H
        xv = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        ok = row_ok[:, None] & col_ok[None, :]
        g = tl.load(gate_ptrs + cols[None, :], mask=ok, other=0.0)
        u = tl.load(gate_ptrs + I * H + cols[None, :], mask=ok, other=0.0)
        acc_g += g.to(tl.float32) * xv[None, :]
        acc_u += u.to(tl.float32) * xv[None, :]
    g = tl.sum(acc_g, 1)
    u = tl.sum(acc_u, 1)
    tl.store(h_ptr + slot * I + rows, g * tl.sigmoid(g) * u, mask=row_ok)


@triton.jit
def gate_up_unrolled_kernel(
    x_ptr,
    logits_ptr,
    logits_col_stride,
    w_ptr,
    h_ptr,
    ids_ptr,
    weights_ptr,
    H: tl.constexpr,
    I: tl.constexpr,
    E: tl.constexpr,
    E_P2: tl.constexpr,
    TOP_K: tl.constexpr,
    K_P2: tl.constexpr,
    RENORM: tl.constexpr,
    ROUTE: tl.constexpr,
    PICK: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PDL: tl.constexpr,
    GDC: tl.constexpr,
):
    """The "unrolled" kernel 1: a flat grid of TOP_K * cdiv(I, BLOCK_I) programs, slot-major (neighbouring
    programs read neighbouring rows); BLOCK_I rows of gate and the same rows of up, the H steps unrolled so
    that all of the program's weight loads can be in flight at once, one step's [BLOCK_I, BLOCK_H] accumulators."""
    n_blocks: tl.constexpr = (I + BLOCK_I - 1) // BLOCK_I
    pid = tl.program_id(0)
    slot = pid // n_blocks
    grid_wait(GDC)
    # after the wait, so that kernel 2's early loads of the router's ids find them written
    grid_release(GDC)
    e = slot_expert(slot, pid == 0, logits_ptr, logits_col_stride, ids_ptr, weights_ptr,
                    E, E_P2, TOP_K, K_P2, RENORM, ROUTE, PICK)
    rows = (pid % n_blocks) * BLOCK_I + tl.arange(0, BLOCK_I)
    row_ok = rows < I
    gate_ptrs = w_ptr + e * (2 * I * H) + rows[:, None] * H  # [BLOCK_I, 1]
    acc_g = tl.zeros([BLOCK_I, BLOCK_H], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_I, BLOCK_H], dtype=tl.float32)
    for h0 in tl.static_range(0, H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H)
        col_ok = cols < H
        ok = row_ok[:, None] & col_ok[None, :]
        g = tl.load(gate_ptrs + cols[None, :], mask=ok, other=0.0, eviction_policy="evict_first")
        u = tl.load(gate_ptrs + I * H + cols[None, :], mask=ok, other=0.0, eviction_policy="evict_first")
        # x in the tile's shape (L1 hits): a [BLOCK_H] load goes through shared memory behind a barrier per step
        xv = tl.load(x_ptr + tl.broadcast_to(cols[None, :], [BLOCK_I, BLOCK_H]), mask=ok, other=0.0)
        acc_g += g.to(tl.float32) * xv.to(tl.float32)
        acc_u += u.to(tl.float32) * xv.to(tl.float32)
    g = tl.sum(acc_g, 1)
    u = tl.sum(acc_u, 1)
    tl.store(h_ptr + slot * I + rows, g * tl.sigmoid(g) * u, mask=row_ok)


@triton.jit
def decode_down_kernel(
    h_ptr,
    ids_ptr,
    weights_ptr,
    down_ptr,
    out_ptr,
    shared_act_ptr,
    shared_act_stride,
    shared_gate_ptr,
    shared_down_ptr,
    shared_out_ptr,
    H: tl.constexpr,
    I: tl.constexpr,
    S: tl.constexpr,
    TOP_K: tl.constexpr,
    K_P2: tl.constexpr,
    SHARED: tl.constexpr,
    BLOCK_OUT: tl.constexpr,
    BLOCK_INNER: tl.constexpr,
    PDL: tl.constexpr,
    GDC: tl.constexpr,
):
    """The "tile" kernel 2: all slots' down rows in one [K_P2, BLOCK_OUT, BLOCK_INNER] load per step. SHARED 0:
    routed experts only; 1: the shared expert's down projection in a second loop; 2: its output rows added,
    computed beside the router (shared_out [H] float32). PDL (one step, BLOCK_INNER >= I and S): the weights
    and the router's outputs (ids, weights, shared_out) load before the grid wait: the kernel before this one
    is kernel 1, which waited for the router, or a plainly launched one. The shared expert's gate and up
    come from the projection, which a copy kernel right before this one may have rewritten: after the wait."""
    grid_release(GDC)
    rows = tl.program_id(0) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    row_ok = rows < H
    if SHARED == 2:
        shared_out = tl.load(shared_out_ptr + rows, mask=row_ok, other=0.0)
    slots = tl.arange(0, K_P2)
    slot_ok = slots < TOP_K
    e = tl.load(ids_ptr + slots, mask=slot_ok, other=0).to(tl.int64)  # [K_P2]
    w = tl.load(weights_ptr + slots, mask=slot_ok, other=0.0)  # [K_P2]
    row_base = e[:, None, None] * (H * I) + rows[None, :, None] * I  # [K_P2, BLOCK_OUT, 1]
    row_mask = slot_ok[:, None, None] & row_ok[None, :, None]
    if PDL:
        cols = tl.arange(0, BLOCK_INNER)
        col_ok = cols < I
        d = tl.load(down_ptr + row_base + cols[None, None, :], mask=row_mask & col_ok[None, None, :], other=0.0)
        s_ok = cols < S
        if SHARED == 1:
            sd = tl.load(shared_down_ptr + rows[:, None] * S + cols[None, :], mask=row_ok[:, None] & s_ok[None, :],
                         other=0.0)  # [BLOCK_OUT, BLOCK_INNER]
        grid_wait(GDC)
        hv = tl.load(h_ptr + slots[:, None] * I + cols[None, :], mask=slot_ok[:, None] & col_ok[None, :], other=0.0)
        if SHARED == 1:
            g = tl.load(shared_act_ptr + cols * shared_act_stride, mask=s_ok, other=0.0).to(tl.float32)
            u = tl.load(shared_act_ptr + (S + cols) * shared_act_stride, mask=s_ok, other=0.0).to(tl.float32)
            gate = tl.sigmoid(tl.load(shared_gate_ptr).to(tl.float32))
        acc = tl.sum(d.to(tl.float32) * hv[:, None, :], 2)  # [K_P2, BLOCK_OUT]
        if SHARED == 1:
            shared = gate * tl.sum(sd.to(tl.float32) * (g * tl.sigmoid(g) * u)[None, :], 1)
    else:
        acc = tl.zeros([K_P2, BLOCK_OUT], dtype=tl.float32)
        for i0 in range(0, I, BLOCK_INNER):
            cols = i0 + tl.arange(0, BLOCK_INNER)
            col_ok = cols < I
            d = tl.load(down_ptr + row_base + cols[None, None, :], mask=row_mask & col_ok[None, None, :], other=0.0)
            hv = tl.load(h_ptr + slots[:, None] * I + cols[None, :], mask=slot_ok[:, None] & col_ok[None, :],
                         other=0.0)
            acc += tl.sum(d.to(tl.float32) * hv[:, None, :], 2)
    out = tl.sum(acc * w[:, None], 0)  # [BLOCK_OUT]
    if SHARED == 2:
        out += shared_out
    if SHARED == 1:
        if PDL:
            out += shared
        else:
            part = tl.zeros([BLOCK_OUT, BLOCK_INNER], dtype=tl.float32)
            for i0 in range(0, S, BLOCK_INNER):
                cols = i0 + tl.arange(0, BLOCK_INNER)
                col_ok = cols < S
                g = tl.load(shared_act_ptr + cols * shared_act_stride, mask=col_ok, other=0.0).to(tl.float32)
                u = tl.load(shared_act_ptr + (S + cols) * shared_act_stride, mask=col_ok, other=0.0).to(tl.float32)
                d = tl.load(shared_down_ptr + rows[:, None] * S + cols[None, :],
                            mask=row_ok[:, None] & col_ok[None, :], other=0.0)
                part += d.to(tl.float32) * (g * tl.sigmoid(g) * u)[None, :]
            gate = tl.load(shared_gate_ptr).to(tl.float32)
            out += tl.sigmoid(gate) * tl.sum(part, 1)
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def down_unrolled_kernel(
    h_ptr,
    ids_ptr,
    weights_ptr,
    down_ptr,
    out_ptr,
    shared_act_ptr,
    shared_act_stride,
    shared_gate_ptr,
    shared_down_ptr,
    H: tl.constexpr,
    I: tl.constexpr,
    S: tl.constexpr,
    TOP_K: tl.constexpr,
    K_P2: tl.constexpr,
    HAS_SHARED: tl.constexpr,
    BLOCK_OUT: tl.constexpr,
    BLOCK_INNER: tl.constexpr,
):
    """The "unrolled" kernel 2: BLOCK_OUT output rows. Each column step (unrolled) issues all of its loads, the
    routed slots' rows as one [K_P2, BLOCK_OUT, BLOCK_INNER] load and the shared expert's rows beside them,
    before any arithmetic: ptxas keeps one load's vectors together but sinks separate loads below the math
    that precedes them, which serialised a per-slot version. Slots are summed first (within a thread)."""
    rows = tl.program_id(0) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    row_ok = rows < H
    slots = tl.arange(0, K_P2)
    slot_ok = slots < TOP_K
    e = tl.load(ids_ptr + slots, mask=slot_ok, other=0).to(tl.int64)  # [K_P2]
    w = tl.load(weights_ptr + slots, mask=slot_ok, other=0.0)  # [K_P2]
    row_base = e[:, None, None] * (H * I) + rows[None, :, None] * I  # [K_P2, BLOCK_OUT, 1]
    row_mask = slot_ok[:, None, None] & row_ok[None, :, None]
    if HAS_SHARED:
        gate = tl.sigmoid(tl.load(shared_gate_ptr).to(tl.float32))
    acc = tl.zeros([BLOCK_OUT, BLOCK_INNER], dtype=tl.float32)
    for i0 in tl.static_range(0, max(I, S) if HAS_SHARED else I, BLOCK_INNER):
        cols = i0 + tl.arange(0, BLOCK_INNER)
        col_ok = cols < I
        d = tl.load(down_ptr + row_base + cols[None, None, :], mask=row_mask & col_ok[None, None, :], other=0.0,
                    eviction_policy="evict_first")  # [K_P2, BLOCK_OUT, BLOCK_INNER]
        hv = tl.load(h_ptr + slots[:, None] * I + cols[None, :], mask=slot_ok[:, None] & col_ok[None, :], other=0.0)
        if HAS_SHARED:
            s_ok = cols < S
            sd = tl.load(shared_down_ptr + rows[:, None] * S + cols[None, :], mask=row_ok[:, None] & s_ok[None, :],
                         other=0.0, eviction_policy="evict_first")  # [BLOCK_OUT, BLOCK_INNER]
            g = tl.load(shared_act_ptr + cols * shared_act_stride, mask=s_ok, other=0.0).to(tl.float32)
            u = tl.load(shared_act_ptr + (S + cols) * shared_act_stride, mask=s_ok, other=0.0).to(tl.float32)
            acc += sd.to(tl.float32) * (gate * g * tl.sigmoid(g) * u)[None, :]
        acc += tl.sum(d.to(tl.float32) * (hv * w[:, None])[:, None, :], 0)
    tl.store(out_ptr + rows, tl.sum(acc, 1).to(out_ptr.dtype.element_ty), mask=row_ok)


def moe_decode(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    top_k: int,
    renormalize: bool,
    shared: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    cfg: DecodeConfig = DecodeConfig(),
) -> torch.Tensor:
    """x [1, H]; router_logits [1, E]; shared = (gate|up [1, 2S] (any column stride), gate logit [1, 1],
    down [H, S]) or None -> [1, H] in x's dtype."""
    shared_out = None
    if shared is not None and cfg.shared == "router":
        shared_out = torch.empty((x.shape[1],), device=x.device, dtype=torch.float32)
    h, ids, weights = decode_gate_up(x.contiguous(), router_logits, gate_up, top_k, renormalize, cfg, shared, shared_out)
    return decode_down(h, ids, weights, down, torch.empty_like(x), shared, cfg, shared_out)


def decode_route(router_logits, ids, weights, top_k: int, renormalize: bool, cfg: DecodeConfig,
                 shared=None, shared_out: torch.Tensor | None = None) -> None:
    """The "kernel" router: fills ids [top_k] int32 and weights [top_k] float32; with shared_out (float32 [H])
    its launch also computes the shared expert's output there (`moe_decode`'s shared, cfg.block_shared rows per
    program)."""
    E = router_logits.shape[1]
    if shared_out is None:
        act, gate, s_down, H, S, block = router_logits, router_logits, router_logits, 1, 1, 0
    else:
        act, gate, s_down = shared
        (H, S), block = s_down.shape, min(cfg.block_shared, next_pow2(s_down.shape[0]))
    launcher(decode_route_kernel)[(1 + (triton.cdiv(H, block) if block else 0),)](
        router_logits, router_logits.stride(1), ids, weights, act, act.stride(-1), gate, s_down,
        ids if shared_out is None else shared_out,
        E=E, E_P2=next_pow2(E), TOP_K=top_k, K_P2=next_pow2(top_k), RENORM=renormalize,
        PICK=PICKS.index(cfg.pick), H=H, S=S, S_P2=next_pow2(S), BLOCK_S=block, num_warps=cfg.warps_router,
        **pdl_args(cfg.pdl, ids),
    )


def decode_gate_up(x, router_logits, gate_up, top_k: int, renormalize: bool, cfg: DecodeConfig, shared=None,
                   shared_out: torch.Tensor | None = None):
    """-> h [top_k, I] float32, ids [top_k] int32, weights [top_k] float32 (routing included; with shared_out,
    the shared expert's output too: `decode_route`)."""
    E, I2, H = gate_up.shape
    I = I2 // 2
    h = torch.empty((top_k, I), device=x.device, dtype=torch.float32)
    ids = torch.empty((top_k,), device=x.device, dtype=torch.int32)
    weights = torch.empty((top_k,), device=x.device, dtype=torch.float32)
    inline = cfg.router == "inline"
    if not inline:
        decode_route(router_logits, ids, weights, top_k, renormalize, cfg, shared, shared_out)
    block_i = min(cfg.block_i, next_pow2(I))
    block_h = min(cfg.block_h, next_pow2(H))
    if cfg.gate_up == "tile":
        kernel, grid = decode_gate_up_kernel, (top_k, triton.cdiv(I, block_i))
    else:
        kernel, grid = gate_up_unrolled_kernel, (top_k * triton.cdiv(I, block_i),)
    launcher(kernel)[grid](
        x, router_logits, router_logits.stride(1), gate_up, h, ids, weights,
        H=H, I=I, E=E, E_P2=next_pow2(E), TOP_K=top_k, K_P2=next_pow2(top_k), RENORM=renormalize,
        ROUTE=inline, PICK=PICKS.index(cfg.pick), BLOCK_I=block_i, BLOCK_H=block_h, num_warps=cfg.warps_gate_up,
        **pdl_args(cfg.pdl, h),
    )
    return h, ids, weights


def decode_down(h, ids, weights, down, out, shared, cfg: DecodeConfig, shared_out: torch.Tensor | None = None):
    """out [1, H] = sum_slot weights * down_ids h (+ the gated shared expert, or its output shared_out [H]
    float32 computed beside the router)."""
    top_k, I = h.shape
    H = down.shape[1]
    if shared is None:
        act, gate, s_down, S = h, h, h, 1
    else:
        act, gate, s_down = shared
        S = s_down.shape[1]
    block_out = min(cfg.block_out, next_pow2(H))
    args = (h, ids, weights, down, out, act, act.stride(-1), gate, s_down)
    if cfg.down == "tile":
        k_p2 = next_pow2(top_k)
        block_inner = max(16, min(next_pow2(max(I, S)), cfg.tile_down // (k_p2 * block_out)))
        pdl = pdl_args(cfg.pdl, out)
        if pdl["PDL"]:
            block_inner = max(16, next_pow2(max(I, S)))  # one step: all weights load before the wait
        launcher(decode_down_kernel)[(triton.cdiv(H, block_out),)](
            *args, h if shared_out is None else shared_out, H=H, I=I, S=S, TOP_K=top_k, K_P2=k_p2,
            SHARED=0 if shared is None else 1 if shared_out is None else 2,
            BLOCK_OUT=block_out, BLOCK_INNER=block_inner, num_warps=cfg.warps_down, **pdl,
        )
    else:
        launcher(down_unrolled_kernel)[(triton.cdiv(H, block_out),)](
            *args, H=H, I=I, S=S, TOP_K=top_k, K_P2=next_pow2(top_k), HAS_SHARED=shared is not None,
            BLOCK_OUT=block_out, BLOCK_INNER=min(cfg.block_inner, next_pow2(max(I, S))), num_warps=cfg.warps_down,
        )
    return out
