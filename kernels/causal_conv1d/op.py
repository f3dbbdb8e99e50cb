"""Registration of `torch.ops.gdn.causal_conv1d`; the conv state argument is declared mutated."""

from __future__ import annotations

import torch

from . import reference


@torch.library.custom_op("gdn::causal_conv1d", mutates_args=("conv_state",))
def causal_conv1d(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
    return reference.causal_conv1d(x, conv_state, weight, reset)


@causal_conv1d.register_fake
def _(x, conv_state, weight, reset):
    return torch.empty_like(x)
