"""Causal depthwise conv1d with SiLU over a rolling state, in plain PyTorch: the specification.

The state holds the last W-1 inputs (pre-activation, pre-conv) of the real tokens seen so far, token-major. Rows
0 .. n-1 of x are real tokens and rows n .. T-1 pads (n = count, on the device; every row when count is None):
    x_full = [state; x]                                  # [T + W - 1, C]
    y[t, c] = silu(sum_j weight[c, j] * x_full[t + j, c])   for t < n;  y[t] = 0 for a pad
    state  <- x_full[n : n + W - 1]                      # the last W-1 real inputs, reaching into the old state
A pad row of x may hold anything (NaN too): no real output and no state row reads it. With n = 0 (a decode pad)
the state is kept as it was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, reset: torch.Tensor,
                  count: torch.Tensor | None = None) -> torch.Tensor:
    """x [1, T, C]; conv_state [1, W-1, C] (updated in place); weight [C, W]; reset [1] bool (treat the
    incoming state as zero); count [1] int64, the real rows 0 .. count-1 (None: all T). Returns y [1, T, C] in
    x's dtype, zero in the pad rows; accumulates in float32."""
    T, W = x.shape[1], weight.shape[1]
    state = torch.where(reset, torch.zeros_like(conv_state), conv_state)
    full = torch.cat([state.to(x.dtype), x], dim=1)  # [1, T + W - 1, C]
    wf = weight.float()
    acc = full[:, 0:T].float() * wf[:, 0]
    for j in range(1, W):
        acc = acc + full[:, j : j + T].float() * wf[:, j]
    y = F.silu(acc).to(x.dtype)
    if count is None:
        conv_state.copy_(full[:, T:].to(conv_state.dtype))
        return y
    rows = torch.arange(W - 1, device=x.device) + count  # [W-1]: x_full rows n .. n + W - 2
    conv_state.copy_(full.index_select(1, rows).to(conv_state.dtype))
    real = (torch.arange(T, device=x.device) < count)[None, :, None]  # [1, T, 1]
    return torch.where(real, y, 0.0)
