"""Mixture of experts in plain PyTorch: the specification of the router and the routed experts.

Router: probs = softmax(router_logits) in float32, top-k, renormalised when `renormalize`.
Experts: y = sum_k w_k * down_e(silu(gate_e(x)) * up_e(x)), e = the k-th selected expert.
Ties in the router go to the lower expert index (the float64 ground truth and the Triton kernels do so).
Expert weights are stacked: gate_up [E, 2I, H] (gate rows first, then up), down [E, H, I].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> weights [T, k] (the logits' dtype), expert ids [T, k] (int64)."""
    probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)
    top, idx = top_k_by_argmax(probs, top_k)
    if renormalize:
        top = top / top.sum(-1, keepdim=True)
    return top.to(router_logits.dtype), idx


def top_k_by_argmax(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """probs [T, E] -> values [T, k], ids [T, k] (int64), ties to the lower index.
    k argmax passes instead of topk: the ExecuTorch CUDA runtime has no topk kernel, every backend has argmax."""
    experts = torch.arange(probs.shape[-1], device=probs.device)
    values, ids, left = [], [], probs
    for _ in range(k):
        i = left.argmax(-1, keepdim=True)  # [T, 1]
        values.append(left.gather(-1, i))
        ids.append(i)
        left = torch.where(experts == i, float("-inf"), left)
    return torch.cat(values, -1), torch.cat(ids, -1)


def moe(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    top_k: int,
    renormalize: bool,
) -> torch.Tensor:
    """x [T, H]; router_logits [T, E]; gate_up [E, 2I, H]; down [E, H, I] -> routed output [T, H], x's dtype.

    Gathers each token's selected experts' weights ([T, k, 2I, H]): exportable, no data-dependent shapes."""
    weights, idx = route(router_logits, top_k, renormalize)
    inter = down.shape[-1]
    gu = torch.einsum("th,tkih->tki", x, gate_up[idx])  # [T, k, 2I]
    h = F.silu(gu[..., :inter]) * gu[..., inter:]
    y = torch.einsum("tki,tkhi->tkh", h, down[idx])  # [T, k, H]
    return (y * weights.unsqueeze(-1)).sum(1)


def route_stable(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`route` with ties broken towards the lower expert index, in the logits' dtype."""
    probs = F.softmax(router_logits, dim=-1, dtype=router_logits.dtype)
    top, idx = torch.sort(probs, dim=-1, descending=True, stable=True)
    top, idx = top[:, :top_k], idx[:, :top_k]
    if renormalize:
        top = top / top.sum(-1, keepdim=True)
    return top, idx


def moe_float64(x, router_logits, gate_up, down, top_k, renormalize, absolute: bool = False):
    """Loop over experts in float64 (the ground truth for tests); same arguments as `moe`. absolute: sum
    |w| (|h| @ |down|^T) instead, each output's scale for the rounding errors of h and the expert outputs."""
    weights, idx = route_stable(router_logits.double(), top_k, renormalize)
    x = x.double()
    inter = down.shape[-1]
    out = torch.zeros_like(x)
    for e in range(gate_up.shape[0]):
        tok, slot = torch.where(idx == e)
        if tok.numel() == 0:
            continue
        gu = x[tok] @ gate_up[e].double().T  # one expert at a time in float64: memory stays small
        h = F.silu(gu[:, :inter]) * gu[:, inter:]
        if absolute:
            h, d, w = h.abs(), down[e].double().abs(), weights[tok, slot, None].abs()
        else:
            d, w = down[e].double(), weights[tok, slot, None]
        out.index_add_(0, tok, (h @ d.T) * w)
    return out


def shared_expert(act: torch.Tensor, gate: torch.Tensor, shared_down: torch.Tensor) -> torch.Tensor:
    """act [T, 2S] = [gate | up]; gate [T, 1]; shared_down [H, S] -> sigmoid(gate) * down(silu(gate) * up)."""
    g, u = act.chunk(2, dim=-1)
    return torch.sigmoid(gate) * F.linear(F.silu(g) * u, shared_down)


def split_projection(router_shared: torch.Tensor, E: int, S: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """router_shared [T, E + 2S + 1] -> router logits [T, E], shared gate | up [T, 2S], shared gate logit [T, 1]."""
    return router_shared[:, :E], router_shared[:, E : E + 2 * S], router_shared[:, E + 2 * S :]


def moe_shared(x, router_shared, gate_up, down, shared_down, top_k, renormalize):
    """router_shared [T, E + 2S + 1] = [router logits | shared gate | shared up | shared gate logit];
    shared_down [H, S] -> routed experts + the gated shared expert [T, H]."""
    logits, act, gate = split_projection(router_shared, gate_up.shape[0], shared_down.shape[1])
    return moe(x, logits, gate_up, down, top_k, renormalize) + shared_expert(act, gate, shared_down)


def moe_shared_float64(x, router_shared, gate_up, down, shared_down, top_k, renormalize, absolute: bool = False):
    """`moe_shared` in float64 on top of `moe_float64`; absolute: each output's scale for rounding errors, as
    in `moe_float64`, with the shared expert's sigmoid(gate) (|silu(g) * u| @ |shared_down|^T) added."""
    logits, act, gate = split_projection(router_shared.double(), gate_up.shape[0], shared_down.shape[1])
    routed = moe_float64(x, logits, gate_up, down, top_k, renormalize, absolute)
    s_down = shared_down.double()
    if absolute:
        g, u = act.chunk(2, dim=-1)
        return routed + torch.sigmoid(gate) * ((F.silu(g) * u).abs() @ s_down.abs().T)
    return routed + shared_expert(act, gate, s_down)


def group_by_expert(
    ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prefill kernels' layout. ids [T, k] -> pairs [n_blocks * block_m] int32 (flat pair index
    t * k + slot, grouped by expert in expert order, each expert's run padded to a multiple of block_m // 2,
    with the sentinel T * k); per block [n_blocks] int32: block_expert (the expert of each block; E past the
    used ones), block_start (its first row in pairs; 0 past the used ones), block_half (1 where it is a half
    block: an expert's last block when the expert's count leaves a remainder <= block_m // 2 over whole
    blocks). An expert owns cdiv(count, block_m) blocks, so n_blocks = cdiv(T * k, block_m) + E bounds them.
    Here pairs keep ascending order within an expert (a stable sort)."""
    num_pairs = ids.numel()
    n_blocks = (num_pairs + block_m - 1) // block_m + num_experts
    seg = block_m // 2  # the padding step of a segment
    flat = ids.reshape(-1).long()  # [T*k]
    counts = torch.zeros(num_experts, dtype=torch.int64, device=ids.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + seg - 1) // seg * seg
    pad_start = torch.cumsum(padded, 0) - padded
    start = torch.cumsum(counts, 0) - counts
    expert, order = torch.sort(flat, stable=True)
    rank = torch.arange(num_pairs, device=ids.device) - start[expert]
    pos = pad_start[expert] + rank
    pairs = torch.full((n_blocks * block_m,), num_pairs, dtype=torch.int32, device=ids.device)
    pairs.scatter_(0, pos, order.to(torch.int32))
    n_own = (counts + block_m - 1) // block_m  # [E] blocks of each expert
    own_end = torch.cumsum(n_own, 0)
    b = torch.arange(n_blocks, device=ids.device)
    block_expert = torch.searchsorted(own_end, b, right=True)  # [n_blocks], E past the used ones
    used = block_expert < num_experts
    e = block_expert.clamp(max=num_experts - 1)
    j = b - (own_end - n_own)[e]  # the block's index within its expert
    block_start = torch.where(used, pad_start[e] + j * block_m, 0)
    block_half = used & (padded[e] - j * block_m == block_m // 2)
    return pairs, block_expert.to(torch.int32), block_start.to(torch.int32), block_half.to(torch.int32)
