"""Registration of `torch.ops.gdn.gemm` and `torch.ops.gdn.norm_gemm` with `torch.library.triton_op` (see
`gated_delta_rule/op.py` for how export, AOTInductor, the fake and the CPU kernel fit together). M (the prefill
chunk's length) may be symbolic: the launch grids are arithmetic on it, so the fake that torch derives from the
body keeps M dynamic and records no guard. The CPU kernels are the plain-PyTorch reference."""

from __future__ import annotations

import torch

from .. import require_package_import
from . import reference, triton_gemm, triton_norm

require_package_import(__name__)


@torch.library.triton_op("gdn::gemm", mutates_args=())
def gemm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return triton_gemm.gemm(x, w)


gemm.register_kernel("cpu")(reference.gemm)


@torch.library.triton_op("gdn::norm_gemm", mutates_args=())
def norm_gemm(
    x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor, eps: float, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return triton_norm.norm_gemm(x, delta, norm_weight, eps, w)


@norm_gemm.register_kernel("cpu")
def _(x, delta, norm_weight, eps, w):
    y, r, n = reference.norm_gemm(x, delta, norm_weight, eps, w)
    # an op's outputs may not alias its inputs (r is x when there is no delta)
    return y, r.clone() if delta is None else r, n
