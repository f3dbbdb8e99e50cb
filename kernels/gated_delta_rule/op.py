"""Registration of the gated-delta-rule ops (`torch.ops.gdn.*`) with `torch.library.triton_op`.

`torch.export` keeps them as single custom-op nodes (any prefill length exports); AOTInductor then sees
the Triton kernels inside and compiles them into the artifact. `triton_op` registers the body itself as
the fake (meta) implementation: it only allocates outputs, and the wrapped launches are no-ops on fake
tensors. The CPU kernel is the plain-PyTorch reference. CPU artifacts call the references directly
(kernels="reference"): the ExecuTorch CPU runtime has no kernels for custom ops.
The state argument is declared mutated; the kernels update it in place. The decode op's optional `count`
([1] int64 on the device) marks a pad when 0: the step then changes no state (reference.py).
`gdn::conv_recurrent_gated_delta_rule` is the CUDA set's decode step from the in_proj output: conv, gates, norms
and recurrence in one kernel (triton_fused_decode.py); it mutates both states.
"""

from __future__ import annotations

import torch

from .. import require_package_import
from . import reference, triton_chunk, triton_decode, triton_fused_decode

require_package_import(__name__)


@torch.library.triton_op("gdn::chunk_gated_delta_rule", mutates_args={"state"})
def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    reset: torch.Tensor,
) -> torch.Tensor:
    return triton_chunk.chunk_gated_delta_rule(q, k, v, g, beta, state, reset)


@torch.library.triton_op("gdn::recurrent_gated_delta_rule", mutates_args={"state"})
def recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    state: torch.Tensor,
    reset: torch.Tensor,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    return triton_decode.recurrent_gated_delta_rule(q, k, v, a, b, A_log, dt_bias, state, reset, count)


@torch.library.triton_op("gdn::conv_recurrent_gated_delta_rule", mutates_args={"conv_state", "state"})
def conv_recurrent_gated_delta_rule(
    projected: torch.Tensor,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    state: torch.Tensor,
    reset: torch.Tensor,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    return triton_fused_decode.conv_recurrent_gated_delta_rule(
        projected, conv_state, conv_weight, A_log, dt_bias, state, reset, count
    )


chunk_gated_delta_rule.register_kernel("cpu")(reference.chunk_gated_delta_rule)
conv_recurrent_gated_delta_rule.register_kernel("cpu")(reference.conv_recurrent_gated_delta_rule)
recurrent_gated_delta_rule.register_kernel("cpu")(reference.recurrent_gated_delta_rule)
