"""The residual add and zero-centred RMS norm in front of a quantized prefill projection
(`reference.norm_gemm`): `kernels/gemm`'s prologue kernel (`add_norm`: r and n once per row), then
`triton_qgemm.qgemm` on its n."""

from __future__ import annotations

import torch

from ..gemm.tiles import GemmConfig
from ..gemm.triton_norm import add_norm
from .triton_qgemm import check_args, qgemm


def check_norm_args(x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor, qweight: torch.Tensor,
                    scales: torch.Tensor, bits: int, group: int) -> None:
    _, K = check_args(x, qweight, scales, bits, group)
    if (delta is not None and tuple(delta.shape) != tuple(x.shape)) or tuple(norm_weight.shape) != (K,):
        got = f"x {tuple(x.shape)}, delta {None if delta is None else tuple(delta.shape)}, " \
              f"norm weight {tuple(norm_weight.shape)}"
        raise ValueError(f"norm_qgemm wants delta like x (or None) and norm weight [{K}], got {got}")
    if delta is not None and delta.dtype != x.dtype:
        raise ValueError(f"norm_qgemm wants delta in x's dtype {x.dtype}, got {delta.dtype}")


def norm_qgemm(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    bits: int,
    group: int,
    cfg: GemmConfig | None = None,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as `reference.norm_gemm`. cfg: the GEMM's configuration (`tiles.config` unless given);
    out: (y, r, n)."""
    check_norm_args(x, delta, norm_weight, qweight, scales, bits, group)
    r, n = add_norm(x, delta, norm_weight, eps, None if out is None else out[1:])
    y = qgemm(n, qweight, scales, bits, group, cfg, None if out is None else out[0])
    return y, r, n
