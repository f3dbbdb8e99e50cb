"""Mixture of experts in plain PyTorch: the specification of the router and the routed experts.

Router: probs = softmax(router_logits) in float32, top-k, renormalised when `renormalize`.
Experts: y = sum_k w_k * down_e(silu(gate_e(x)) * up_e(x)), e = the k-th selected expert.
Expert weights are stacked: gate_up [E, 2I, H] (gate rows first, then up), down [E, H, I].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> weights [T, k] (the logits' dtype), expert ids [T, k] (int64)."""
    probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)
    top, idx = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        top = top / top.sum(-1, keepdim=True)
    return top.to(router_logits.dtype), idx


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


def moe_float64(x, router_logits, gate_up, down, top_k, renormalize):
    """Loop over experts in float64 (the ground truth for tests); same arguments as `moe`."""
    weights, idx = route(router_logits.double(), top_k, renormalize)
    x, gate_up, down = x.double(), gate_up.double(), down.double()
    inter = down.shape[-1]
    out = torch.zeros_like(x)
    for e in range(gate_up.shape[0]):
        tok, slot = torch.where(idx == e)
        if tok.numel() == 0:
            continue
        gu = x[tok] @ gate_up[e].T
        h = F.silu(gu[:, :inter]) * gu[:, inter:]
        out.index_add_(0, tok, (h @ down[e].T) * weights[tok, slot, None])
    return out
