"""Registration of `torch.ops.gdn.prefill_attention` and `torch.ops.gdn.decode_attention` with
`torch.library.triton_op` (see `gated_delta_rule/op.py` for how export, AOTInductor, the fake and the CPU kernel
fit together). Both write the new k, v into the caches, which are declared mutated; the kernels update them in
place. The CPU kernel is the plain-PyTorch reference."""

from __future__ import annotations

import torch

from .. import require_package_import
from . import reference, triton_decode, triton_prefill

require_package_import(__name__)


@torch.library.triton_op("gdn::prefill_attention", mutates_args={"k_cache", "v_cache"})
def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    input_pos: torch.Tensor,
) -> torch.Tensor:
    return triton_prefill.prefill_attention(q, k, v, k_cache, v_cache, input_pos)


@torch.library.triton_op("gdn::decode_attention", mutates_args={"k_cache", "v_cache"})
def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    input_pos: torch.Tensor,
) -> torch.Tensor:
    return triton_decode.decode_attention(q, k, v, k_cache, v_cache, input_pos)


prefill_attention.register_kernel("cpu")(reference.prefill_attention)
decode_attention.register_kernel("cpu")(reference.decode_attention)
