"""The MoE block as the ExecuTorch CPU runtime runs it fastest: every expert for every token, as two GEMMs.

Same function as `reference.moe_shared` (the router's softmax in float32, its top-k with ties to the lower
expert, renormalisation), but the top-k is a dense rank count (`dense_route`) and the routed experts are evaluated
densely: one GEMM of x against all experts' gate | up rows, then the routing
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
from .reference import split_projection

# computing every expert costs E / top_k times the routed work: beyond this many experts the reference's
# per-token gather is kept (the dense form was measured at E = 8 only)
DENSE_MAX_EXPERTS = 16


def dense_route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> torch.Tensor:
    """`reference.route` as dense weights [T, E] in the logits' dtype, 0 for the experts a token did not select.
    An expert is selected when fewer than k others outrank it (a higher probability, or an equal one at a lower
    index: the reference's tie rule), counted with elementwise ops and matmuls that XNNPACK runs, where k argmax
    passes take a dozen portable-kernel instructions per layer."""
    probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)  # [T, E]
    T, E = probs.shape
    ones = torch.ones(E, 1, device=probs.device)
    # above[t, e, j] = 1 where p_j > p_e: a difference of two floats is 0 only when they are equal
    above = torch.clamp(probs[:, None, :] - probs[:, :, None], 0.0, 1.0).ceil()
    experts = torch.arange(E, device=probs.device)
    lower = (experts[None, :] < experts[:, None]).float()  # [E(e), E(j)]: 1 where j < e
    outranks = lower * (1.0 - above.transpose(1, 2)) + (1.0 - lower) * above  # p_j >= p_e for j < e, else >
    rank = torch.mm(outranks.reshape(T * E, E), ones).view(T, E)  # how many experts outrank e
    weights = probs * torch.clamp(top_k - rank, 0.0, 1.0)  # ranks are whole numbers: 1 for the k best, else 0
    if renormalize:
        weights = weights / torch.mm(weights, ones)
    return weights.to(router_logits.dtype)


def moe_shared(x, router_shared, gate_up, down, shared_down, top_k, renormalize):
    """`reference.moe_shared`: x [T, H]; router_shared [T, E + 2S + 1]; gate_up [E, 2I, H]; down [E, H, I];
    shared_down [H, S] -> [T, H] in x's dtype."""
    T, (E, I2, H) = x.shape[0], gate_up.shape
    if E > DENSE_MAX_EXPERTS:
        return reference.moe_shared(x, router_shared, gate_up, down, shared_down, top_k, renormalize)
    inter, S = I2 // 2, shared_down.shape[1]
    logits, act, gate = split_projection(router_shared, E, S)
    gu = F.linear(x, gate_up.reshape(E * I2, H)).view(T, E, I2)  # [T, E, 2I]
    h = F.silu(gu[..., :inter]) * gu[..., inter:] * dense_route(logits, top_k, renormalize).unsqueeze(-1)  # [T, E, I]
    g, u = act.chunk(2, dim=-1)
    shared = torch.sigmoid(gate) * (F.silu(g) * u)  # [T, S]
    all_down = torch.cat([down.permute(1, 0, 2).reshape(H, E * inter), shared_down], dim=1)  # [H, E I + S]
    return F.linear(torch.cat([h.reshape(T, E * inter), shared], dim=1), all_down)
