"""Registration of the gated-delta-rule ops (`torch.ops.gdn.*`): opaque to `torch.export`, so a dynamic
prefill length of any size exports; the state argument is declared mutated."""

from __future__ import annotations

import torch

from . import reference


@torch.library.custom_op("gdn::chunk_gated_delta_rule", mutates_args=("state",))
def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    reset: torch.Tensor,
) -> torch.Tensor:
    return reference.chunk_gated_delta_rule(q, k, v, g, beta, state, reset)


@chunk_gated_delta_rule.register_fake
def _(q, k, v, g, beta, state, reset):
    return torch.empty_like(v)


@torch.library.custom_op("gdn::recurrent_gated_delta_rule", mutates_args=("state",))
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
) -> torch.Tensor:
    return reference.recurrent_gated_delta_rule(q, k, v, a, b, A_log, dt_bias, state, reset)


@recurrent_gated_delta_rule.register_fake
def _(q, k, v, a, b, A_log, dt_bias, state, reset):
    return torch.empty_like(v)
