"""Registration of `torch.ops.gdn.gemv` and `torch.ops.gdn.norm_gemv` with `torch.library.triton_op` (see
`gated_delta_rule/op.py` for how export, AOTInductor, the fake and the CPU kernel fit together). One-token shapes
only: the model calls them at decode (a static T == 1) and for lm_head's one row.
"""

from __future__ import annotations

import torch

from .. import require_package_import
from . import reference, triton_gemv, triton_norm_gemv
from .triton_gemv import GemvConfig, default_config

require_package_import(__name__)

PDL_MAX_K = 4096  # the PDL form takes K in one step: [4, 4096] weights per program at 8 warps (64 per thread)
ARTIFACT_PDL = "on"  # the probes set "off" to time the plain kernels


def artifact_config(K: int) -> GemvConfig:
    """The ops' config: `default_config`, in its PDL form where one step over K fits. Launched with PDL by
    Triton on a GPU and inside CUDA artifacts (gdn.export.aoti_pdl), so each projection's weights load while
    the kernel before it drains (kernels/gemv/NOTES.md)."""
    cfg = default_config(K)
    if K > PDL_MAX_K:
        return cfg
    return GemvConfig(cfg.block_n, cfg.block_k, cfg.warps, pdl=ARTIFACT_PDL)


@torch.library.triton_op("gdn::gemv", mutates_args=())
def gemv(x: torch.Tensor, w: torch.Tensor, act: str) -> torch.Tensor:
    return triton_gemv.gemv(x, w, act, artifact_config(w.shape[1]))


gemv.register_kernel("cpu")(reference.gemv)


@torch.library.triton_op("gdn::norm_gemv", mutates_args=())
def norm_gemv(
    x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor, eps: float, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return triton_norm_gemv.norm_gemv(x, delta, norm_weight, eps, w, artifact_config(w.shape[1]))


@norm_gemv.register_kernel("cpu")
def _(x, delta, norm_weight, eps, w):
    y, r, n = reference.norm_gemv(x, delta, norm_weight, eps, w)
    # an op's outputs may not alias its inputs (r is x when there is no delta)
    return y, r.clone() if delta is None else r, n
