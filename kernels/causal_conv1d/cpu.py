"""The causal conv1d of one token as CPU artifacts trace it: `reference.causal_conv1d`'s contract at T == 1, in the
ops XNNPACK runs inside the surrounding partition (a concat, a product, a matmul for the sum over the window, the
SiLU), and one select each for the pad's state and output. Longer chunks take the reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import reference


def causal_conv1d(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, reset: torch.Tensor,
                  count: torch.Tensor | None = None) -> torch.Tensor:
    """x [1, T, C]; conv_state [1, W-1, C] (updated in place); weight [C, W]; reset [1] bool; count [1] int64 or
    None -> y [1, T, C] in x's dtype (reference.py)."""
    if x.shape[1] != 1 or x.dtype != torch.float32 or conv_state.dtype != torch.float32:
        return reference.causal_conv1d(x, conv_state, weight, reset, count)
    W = weight.shape[1]
    state = torch.where(reset, torch.zeros((), dtype=x.dtype, device=x.device), conv_state)
    full = torch.cat([state, x], dim=1)[0]  # [W, C]
    # the window's sum as ones [1, W] @ (full * w^T): a batched matmul (XNNPACK's mm wants a constant right
    # operand), where a sum over dim 0 is a portable kernel
    ones = torch.ones(1, 1, W, dtype=x.dtype, device=x.device)
    y = F.silu(torch.bmm(ones, (full * weight.float().t())[None]))  # [1, 1, C]
    if count is None:
        conv_state.copy_(full[1:].unsqueeze(0))
        return y
    real = count > 0  # [1]: a decode pad keeps the state and outputs 0
    conv_state.copy_(torch.where(real, full[1:].unsqueeze(0), state))
    return torch.where(real, y, torch.zeros((), dtype=y.dtype, device=y.device))
