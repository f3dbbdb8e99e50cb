"""Causal depthwise conv1d with SiLU over a rolling state, in plain PyTorch: the specification.

The state holds the last W-1 inputs (pre-activation, pre-conv) of the previous call, token-major:
    x_full = [state; x]                                  # [T + W - 1, C]
    y[t, c] = silu(sum_j weight[c, j] * x_full[t + j, c])
    state  <- x_full[-(W - 1):]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
    """x [1, T, C]; conv_state [1, W-1, C] (updated in place); weight [C, W]; reset [1] bool (treat the
    incoming state as zero). Returns y [1, T, C] in x's dtype; accumulates in float32."""
    T, W = x.shape[1], weight.shape[1]
    state = torch.where(reset, torch.zeros_like(conv_state), conv_state)
    full = torch.cat([state.to(x.dtype), x], dim=1)  # [1, T + W - 1, C]
    wf = weight.float()
    acc = full[:, 0:T].float() * wf[:, 0]
    for j in range(1, W):
        acc = acc + full[:, j : j + T].float() * wf[:, j]
    conv_state.copy_(full[:, T:].to(conv_state.dtype))
    return F.silu(acc).to(x.dtype)
