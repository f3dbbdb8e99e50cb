"""Registration of `torch.ops.gdn.causal_conv1d` with `torch.library.triton_op` (see
`gated_delta_rule/op.py` for how export, AOTInductor, the fake and the CPU kernel fit together).
The conv state argument is declared mutated; the kernel updates it in place. `count` (optional, [1] int64 on
the device) is the number of real rows; the rows after it are pads (reference.py)."""

from __future__ import annotations

import torch

from .. import require_package_import
from . import reference, triton_conv

require_package_import(__name__)


@torch.library.triton_op("gdn::causal_conv1d", mutates_args={"conv_state"})
def causal_conv1d(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, reset: torch.Tensor,
                  count: torch.Tensor | None = None) -> torch.Tensor:
    return triton_conv.causal_conv1d(x, conv_state, weight, reset, count)


causal_conv1d.register_kernel("cpu")(reference.causal_conv1d)
