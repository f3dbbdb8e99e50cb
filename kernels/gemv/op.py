"""Registration of `torch.ops.gdn.gemv` with `torch.library.triton_op` (see `gated_delta_rule/op.py` for
how export, AOTInductor, the fake and the CPU kernel fit together). One-token shapes only: the model calls
it at decode (a static T == 1)."""

from __future__ import annotations

import torch

from .. import require_package_import
from . import reference, triton_gemv

require_package_import(__name__)


@torch.library.triton_op("gdn::gemv", mutates_args=())
def gemv(x: torch.Tensor, w: torch.Tensor, act: str) -> torch.Tensor:
    return triton_gemv.gemv(x, w, act)


gemv.register_kernel("cpu")(reference.gemv)
