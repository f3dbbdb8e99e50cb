"""Registration of `torch.ops.gdn.qgemv` and `torch.ops.gdn.norm_qgemv` with `torch.library.triton_op`, as
`gemv/op.py` registers the bf16 ops: the CPU kernels are the reference (dequantize, then the bf16 op); bits,
group and act are non-tensor arguments, constants of the compiled kernel. One-token shapes only.

Both run `triton_qgemv.default_config(K, bits)`: the PDL form up to PDL_MAX_K, launched with PDL by Triton on a
GPU and inside CUDA artifacts (gdn.export.aoti_pdl).
"""

from __future__ import annotations

import torch

from .. import require_package_import
from . import reference, triton_norm_qgemv, triton_qgemv

require_package_import(__name__)


@torch.library.triton_op("gdn::qgemv", mutates_args=())
def qgemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int, group: int,
          act: str) -> torch.Tensor:
    return triton_qgemv.qgemv(x, qweight, scales, bits, group, act)


qgemv.register_kernel("cpu")(reference.gemv)


@torch.library.triton_op("gdn::norm_qgemv", mutates_args=())
def norm_qgemv(
    x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor, eps: float, qweight: torch.Tensor,
    scales: torch.Tensor, bits: int, group: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return triton_norm_qgemv.norm_qgemv(x, delta, norm_weight, eps, qweight, scales, bits, group)


@norm_qgemv.register_kernel("cpu")
def _(x, delta, norm_weight, eps, qweight, scales, bits, group):
    y, r, n = reference.norm_gemv(x, delta, norm_weight, eps, qweight, scales, bits, group)
    # an op's outputs may not alias its inputs (r is x when there is no delta)
    return y, r.clone() if delta is None else r, n
