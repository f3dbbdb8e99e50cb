"""Weight-only quantized prefill projections in plain PyTorch: the specification.

    y = x @ dequantize(qweight, scales)^T         x [M, K] -> y [M, N]

`kernels/qgemv/reference.py` holds the storage scheme (int8 [N, K], or int4 as offset-binary nibbles packed two a
byte [N, K / 2]; scales [N, K / group] in the activation dtype) and `dequantize` (q s in float32, rounded once to
the scales' dtype). `gemm` and `norm_gemm` are then exactly `kernels/gemm/reference.py`'s ops on that weight: the
Triton kernels dequantize each weight tile to the same rounded values before the dot.
"""

from __future__ import annotations

import torch

from ..gemm import reference as dense
from ..qgemv.reference import dequantize


def gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """x [M, K] -> y [M, N]: `gemm.reference.gemm` on the dequantized weights."""
    return dense.gemm(x, dequantize(qweight, scales, bits, group))


def norm_gemm(
    x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor, eps: float, qweight: torch.Tensor,
    scales: torch.Tensor, bits: int, group: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (y [M, N], r [M, K], n [M, K]): `gemm.reference.norm_gemm` on the dequantized weights."""
    return dense.norm_gemm(x, delta, norm_weight, eps, dequantize(qweight, scales, bits, group))
