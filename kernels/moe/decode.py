"""One-token MoE: three launches that read the selected experts' weights in place, by index.

- The router (`decode_route_kernel`, one program of one warp): the bitonic top-k of route.py -> ids [k] int32,
  weights [k] float32, so that kernel 1's programs load their slot's expert id instead of routing themselves.
- Kernel 1 (`decode_gate_up_kernel`): h[slot, rows] = silu(gate_e x) * (up_e x) for BLOCK_I rows of expert
  e = ids[slot]; the H steps unrolled, so that all of a program's weight loads can be in flight at once.
- Kernel 2 (`decode_down_kernel`): y[rows] = sum_slot w_slot * down_e h[slot] + sigmoid(g) * down_s (silu(g_s) * u_s),
  all slots' down rows in one [K_P2, BLOCK_OUT, I] load, the shared expert's rows (gate and up come precomputed
  by the router projection) beside them.

All three are written for programmatic dependent launch (kernels/pdl.py): each may start while the kernel
before it drains, and kernel 2 loads its weights and the router's outputs before its grid wait. pdl "on"
launches them so (the ops; artifacts through gdn.export.aoti_pdl); "serial" launches the same code in plain
stream order, the baseline the race tests compare against.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import launcher, next_pow2
from ..pdl import grid_release, grid_wait, pdl_args
from .route import route_topk, store_route

BLOCK_I = 2  # kernel 1: rows of gate (and the same rows of up) per program
BLOCK_H = 2048  # kernel 1: columns per unrolled step
BLOCK_OUT = 4  # kernel 2: output rows per program
WARPS = 8  # kernels 1 and 2
WARPS_ROUTER = 1  # one warp reduces with shuffles alone, no shared-memory rounds
PDL_MODES = ("on", "serial")


@triton.jit
def decode_route_kernel(logits_ptr, col_stride, ids_ptr, weights_ptr, E: tl.constexpr, E_P2: tl.constexpr,
                 TOP_K: tl.constexpr, K_P2: tl.constexpr, RENORM: tl.constexpr, GDC: tl.constexpr):
    """The router of one token, one program: ids [TOP_K] int32, weights [TOP_K] float32."""
    # kernel 1 may start at once: its programs wait for this launch to finish before reading anything
    grid_release(GDC)
    grid_wait(GDC)
    ids, top = route_topk(logits_ptr, 0, col_stride, E, E_P2, TOP_K, K_P2, RENORM)
    store_route(0, ids, top, ids_ptr, weights_ptr, TOP_K, K_P2)


@triton.jit
def decode_gate_up_kernel(
    x_ptr,
    w_ptr,
    h_ptr,
    ids_ptr,
    H: tl.constexpr,
    I: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_H: tl.constexpr,
    GDC: tl.constexpr,
):
    """Kernel 1: a flat grid of TOP_K * cdiv(I, BLOCK_I) programs, slot-major (neighbouring programs read
    neighbouring rows); BLOCK_I rows of gate and the same rows of up, one step's [BLOCK_I, BLOCK_H] accumulators."""
    n_blocks: tl.constexpr = (I + BLOCK_I - 1) // BLOCK_I
    pid = tl.program_id(0)
    slot = pid // n_blocks
    grid_wait(GDC)
    # after the wait, so that kernel 2's early loads of the router's ids find them written
    grid_release(GDC)
    e = tl.load(ids_ptr + slot).to(tl.int64)
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
    H: tl.constexpr,
    I: tl.constexpr,
    S: tl.constexpr,
    TOP_K: tl.constexpr,
    K_P2: tl.constexpr,
    BLOCK_OUT: tl.constexpr,
    BLOCK_INNER: tl.constexpr,
    GDC: tl.constexpr,
):
    """Kernel 2, BLOCK_OUT output rows in one step (BLOCK_INNER >= I and S). The weights and the router's ids
    and weights load before the grid wait: the kernel before this one is kernel 1, which waited for the router.
    The shared expert's gate and up come from the projection, which a copy kernel right before this one may
    have rewritten (in an artifact): after the wait, with h."""
    grid_release(GDC)
    rows = tl.program_id(0) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    row_ok = rows < H
    slots = tl.arange(0, K_P2)
    slot_ok = slots < TOP_K
    e = tl.load(ids_ptr + slots, mask=slot_ok, other=0).to(tl.int64)  # [K_P2]
    w = tl.load(weights_ptr + slots, mask=slot_ok, other=0.0)  # [K_P2]
    row_base = e[:, None, None] * (H * I) + rows[None, :, None] * I  # [K_P2, BLOCK_OUT, 1]
    row_mask = slot_ok[:, None, None] & row_ok[None, :, None]
    cols = tl.arange(0, BLOCK_INNER)
    col_ok = cols < I
    d = tl.load(down_ptr + row_base + cols[None, None, :], mask=row_mask & col_ok[None, None, :], other=0.0)
    s_ok = cols < S
    sd = tl.load(shared_down_ptr + rows[:, None] * S + cols[None, :], mask=row_ok[:, None] & s_ok[None, :],
                 other=0.0)  # [BLOCK_OUT, BLOCK_INNER]
    grid_wait(GDC)
    hv = tl.load(h_ptr + slots[:, None] * I + cols[None, :], mask=slot_ok[:, None] & col_ok[None, :], other=0.0)
    g = tl.load(shared_act_ptr + cols * shared_act_stride, mask=s_ok, other=0.0).to(tl.float32)
    u = tl.load(shared_act_ptr + (S + cols) * shared_act_stride, mask=s_ok, other=0.0).to(tl.float32)
    gate = tl.sigmoid(tl.load(shared_gate_ptr).to(tl.float32))
    acc = tl.sum(d.to(tl.float32) * hv[:, None, :], 2)  # [K_P2, BLOCK_OUT]
    shared = gate * tl.sum(sd.to(tl.float32) * (g * tl.sigmoid(g) * u)[None, :], 1)
    out = tl.sum(acc * w[:, None], 0)  # [BLOCK_OUT]
    out += shared
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_ok)


def launch_args(pdl: str, like: torch.Tensor) -> dict:
    """`pdl_args` for kernels that exist only in their PDL form (no PDL switch)."""
    if pdl not in PDL_MODES:
        raise ValueError(f"pdl must be one of {PDL_MODES}, got {pdl!r}")
    args = pdl_args(pdl, like)
    del args["PDL"]
    return args


def moe_decode(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    top_k: int,
    renormalize: bool,
    shared: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    pdl: str = "on",
) -> torch.Tensor:
    """x [1, H]; router_logits [1, E] (any column stride); shared = (gate|up [1, 2S] (any column stride), gate
    logit [1, 1], down [H, S]) -> [1, H] in x's dtype. pdl: "on" | "serial" (module docstring)."""
    h, ids, weights = decode_gate_up(x.contiguous(), router_logits, gate_up, top_k, renormalize, pdl)
    return decode_down(h, ids, weights, down, torch.empty_like(x), shared, pdl)


def decode_route(router_logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, top_k: int,
                 renormalize: bool, pdl: str = "on") -> None:
    """The router launch: fills ids [top_k] int32 and weights [top_k] float32."""
    E = router_logits.shape[1]
    launcher(decode_route_kernel)[(1,)](
        router_logits, router_logits.stride(1), ids, weights,
        E=E, E_P2=next_pow2(E), TOP_K=top_k, K_P2=next_pow2(top_k), RENORM=renormalize, num_warps=WARPS_ROUTER,
        **launch_args(pdl, ids),
    )


def decode_gate_up(x: torch.Tensor, router_logits: torch.Tensor, gate_up: torch.Tensor, top_k: int,
                   renormalize: bool, pdl: str = "on") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The router and kernel 1 -> h [top_k, I] float32, ids [top_k] int32, weights [top_k] float32."""
    _, I2, H = gate_up.shape
    I = I2 // 2
    h = torch.empty((top_k, I), device=x.device, dtype=torch.float32)
    ids = torch.empty((top_k,), device=x.device, dtype=torch.int32)
    weights = torch.empty((top_k,), device=x.device, dtype=torch.float32)
    decode_route(router_logits, ids, weights, top_k, renormalize, pdl)
    block_i = min(BLOCK_I, next_pow2(I))
    launcher(decode_gate_up_kernel)[(top_k * triton.cdiv(I, block_i),)](
        x, gate_up, h, ids,
        H=H, I=I, BLOCK_I=block_i, BLOCK_H=min(BLOCK_H, next_pow2(H)), num_warps=WARPS, **launch_args(pdl, h),
    )
    return h, ids, weights


def decode_down(h: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, down: torch.Tensor, out: torch.Tensor,
                shared: tuple[torch.Tensor, torch.Tensor, torch.Tensor], pdl: str = "on") -> torch.Tensor:
    """Kernel 2: out [1, H] = sum_slot weights * down_ids h + the gated shared expert."""
    top_k, I = h.shape
    H = down.shape[1]
    act, gate, s_down = shared
    S = s_down.shape[1]
    block_out = min(BLOCK_OUT, next_pow2(H))
    launcher(decode_down_kernel)[(triton.cdiv(H, block_out),)](
        h, ids, weights, down, out, act, act.stride(-1), gate, s_down,
        H=H, I=I, S=S, TOP_K=top_k, K_P2=next_pow2(top_k), BLOCK_OUT=block_out,
        BLOCK_INNER=max(16, next_pow2(max(I, S))),  # one step: all weights load before the wait
        num_warps=WARPS, **launch_args(pdl, out),
    )
    return out
