"""Registration of `torch.ops.gdn.gemv`, `torch.ops.gdn.norm_gemv` and `torch.ops.gdn.gated_norm_gemv` with
`torch.library.triton_op` (see `gated_delta_rule/op.py` for how export, AOTInductor, the fake and the CPU kernel
fit together). One-token shapes only: the model calls them at decode (a static T == 1) and for lm_head's one row.

All three run `triton_gemv.default_config(K)` (gemv: `gemv_config(N, K)`): the PDL form up to PDL_MAX_K, launched with PDL by Triton on a GPU
and inside CUDA artifacts (gdn.export.aoti_pdl), so each projection's weights load while the kernel before it
drains.
"""

from __future__ import annotations

import torch

from .. import require_package_import
from . import reference, triton_gated_norm_gemv, triton_gemv, triton_norm_gemv

require_package_import(__name__)


@torch.library.triton_op("gdn::gemv", mutates_args=())
def gemv(x: torch.Tensor, w: torch.Tensor, act: str) -> torch.Tensor:
    return triton_gemv.gemv(x, w, act)


gemv.register_kernel("cpu")(reference.gemv)


@torch.library.triton_op("gdn::norm_gemv", mutates_args=())
def norm_gemv(
    x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor, eps: float, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return triton_norm_gemv.norm_gemv(x, delta, norm_weight, eps, w)


@norm_gemv.register_kernel("cpu")
def _(x, delta, norm_weight, eps, w):
    y, r, n = reference.norm_gemv(x, delta, norm_weight, eps, w)
    # an op's outputs may not alias its inputs (r is x when there is no delta)
    return y, r.clone() if delta is None else r, n


@torch.library.triton_op("gdn::gated_norm_gemv", mutates_args=())
def gated_norm_gemv(
    o: torch.Tensor, z: torch.Tensor, norm_weight: torch.Tensor, eps: float, w: torch.Tensor
) -> torch.Tensor:
    return triton_gated_norm_gemv.gated_norm_gemv(o, z, norm_weight, eps, w)


gated_norm_gemv.register_kernel("cpu")(reference.gated_norm_gemv)
