"""Registration of `torch.ops.gdn.moe`."""

from __future__ import annotations

import torch

from . import reference


@torch.library.custom_op("gdn::moe", mutates_args=())
def moe(
    x: torch.Tensor, router_logits: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, top_k: int, renormalize: bool
) -> torch.Tensor:
    return reference.moe(x, router_logits, gate_up, down, top_k, renormalize)


@moe.register_fake
def _(x, router_logits, gate_up, down, top_k, renormalize):
    return torch.empty_like(x)
