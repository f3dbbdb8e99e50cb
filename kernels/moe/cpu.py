"""The MoE block as the ExecuTorch CPU runtime runs it fastest: every expert for every token, as two GEMMs.

Same function as `reference.moe_shared` (the router, top-k and renormalisation are the reference's own), but
the routed experts are evaluated densely: one GEMM of x against all experts' gate | up rows, then the routing
weights (zero for the experts a token did not select) scale each expert's silu(gate) * up, and one GEMM against
all experts' down columns beside the shared expert's sums it all. No weights are gathered per token (the
reference's gather copies each token's experts, a portable-kernel copy of 2I x H floats per token and slot),
and XNNPACK runs both GEMMs on weights that export's constant propagation lays out once. At these sizes
(E = 8) reading every expert costs less than gathering two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import reference
from .reference import route, split_projection

# computing every expert costs E / top_k times the routed work: beyond this many experts the reference's
# per-token gather is kept (the dense form was measured at E = 8 only)
DENSE_MAX_EXPERTS = 16


def dense_routing(weights: torch.Tensor, ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """weights, ids [T, k] -> [T, E]: each token's weight per expert, 0 where not selected."""
    experts = torch.arange(num_experts, device=ids.device)
    hit = ids.unsqueeze(-1) == experts  # [T, k, E]
    return torch.where(hit, weights.unsqueeze(-1), torch.zeros_like(weights).unsqueeze(-1)).sum(1)


def moe_shared(x, router_shared, gate_up, down, shared_down, top_k, renormalize):
    """`reference.moe_shared`: x [T, H]; router_shared [T, E + 2S + 1]; gate_up [E, 2I, H]; down [E, H, I];
    shared_down [H, S] -> [T, H] in x's dtype."""
    T, (E, I2, H) = x.shape[0], gate_up.shape
    if E > DENSE_MAX_EXPERTS:
        return reference.moe_shared(x, router_shared, gate_up, down, shared_down, top_k, renormalize)
    inter, S = I2 // 2, shared_down.shape[1]
    logits, act, gate = split_projection(router_shared, E, S)
    weights, ids = route(logits, top_k, renormalize)
    gu = F.linear(x, gate_up.reshape(E * I2, H)).view(T, E, I2)  # [T, E, 2I]
    h = F.silu(gu[..., :inter]) * gu[..., inter:] * dense_routing(weights, ids, E).unsqueeze(-1)  # [T, E, I]
    g, u = act.chunk(2, dim=-1)
    shared = torch.sigmoid(gate) * (F.silu(g) * u)  # [T, S]
    all_down = torch.cat([down.permute(1, 0, 2).reshape(H, E * inter), shared_down], dim=1)  # [H, E I + S]
    return F.linear(torch.cat([h.reshape(T, E * inter), shared], dim=1), all_down)
