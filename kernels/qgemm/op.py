"""Registration of `torch.ops.gdn.qgemm` and `torch.ops.gdn.norm_qgemm` with `torch.library.triton_op`, as
`gemm/op.py` registers the bf16 ops: M (the prefill chunk's length) may be symbolic, the launch grids being
arithmetic on it; bits and group are non-tensor arguments, constants of the compiled kernels. The CPU kernels
are the reference (dequantize, then gemm's reference)."""

from __future__ import annotations

import torch

from .. import require_package_import
from . import reference, triton_norm, triton_qgemm

require_package_import(__name__)


@torch.library.triton_op("gdn::qgemm", mutates_args=())
def qgemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    return triton_qgemm.qgemm(x, qweight, scales, bits, group)


qgemm.register_kernel("cpu")(reference.gemm)


@torch.library.triton_op("gdn::norm_qgemm", mutates_args=())
def norm_qgemm(
    x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor, eps: float, qweight: torch.Tensor,
    scales: torch.Tensor, bits: int, group: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return triton_norm.norm_qgemm(x, delta, norm_weight, eps, qweight, scales, bits, group)


@norm_qgemm.register_kernel("cpu")
def _(x, delta, norm_weight, eps, qweight, scales, bits, group):
    y, r, n = reference.norm_gemm(x, delta, norm_weight, eps, qweight, scales, bits, group)
    # an op's outputs may not alias its inputs (r is x when there is no delta)
    return y, r.clone() if delta is None else r, n
