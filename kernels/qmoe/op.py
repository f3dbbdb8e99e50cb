"""Registration of `torch.ops.gdn.qmoe_shared` (`gdn::moe_shared` with int8 / int4 group-quantized expert and
shared-expert down weights) as a Triton op: torch.export keeps it as one node, AOTInductor compiles its Triton
kernels into the artifact. CPU tensors take the reference (dequantize, then the float op).

T == 1 (a static shape) takes the one-token kernels (decode.py), the shared expert fused into their down kernel;
any other T, dynamic ones included, the grouped GEMMs on dequantized tiles (prefill.py) and the shared expert's
down projection through the dequant-GEMM (kernels/qgemm), so no dequantized copy of a weight is made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.fx.experimental.symbolic_shapes import statically_known_true
from torch.library import triton_op

from .. import require_package_import
from ..launch import dense
from ..moe import reference as moe_ref
from ..qgemm.triton_qgemm import qgemm
from . import reference
from .decode import qmoe_decode
from .prefill import qmoe_prefill

require_package_import(__name__)


def check_kernel_group(group: int, bits: int) -> None:
    """The kernels step in whole groups of a power-of-two size (int4: whole bytes)."""
    if group & (group - 1) or group < 2:
        raise ValueError(f"the qmoe_shared Triton kernels take power-of-two group sizes >= 2, got {group} "
                         f"(int{bits})")


def qmoe_shared_triton(
    x: torch.Tensor, router_shared: torch.Tensor, gate_up_q: torch.Tensor, gate_up_s: torch.Tensor,
    down_q: torch.Tensor, down_s: torch.Tensor, shared_down_q: torch.Tensor, shared_down_s: torch.Tensor,
    top_k: int, renormalize: bool, bits: int, group: int, pdl: str = "on",
) -> torch.Tensor:
    """The op's Triton implementation (what the CPU tests run under TRITON_INTERPRET=1); arguments as
    `reference.moe_shared`. pdl: the decode kernels' launch, "on" (the op) or "serial" (stream order)."""
    E, _, _, S = reference.check_inputs(x, router_shared, gate_up_q, gate_up_s, down_q, down_s, shared_down_q,
                                        shared_down_s, top_k, bits, group)
    check_kernel_group(group, bits)
    experts = dense(gate_up_q, gate_up_s, down_q, down_s)
    logits, act, gate = moe_ref.split_projection(router_shared, E, S)
    if statically_known_true(x.shape[0] == 1):
        shared = (act, gate, *dense(shared_down_q, shared_down_s))
        return qmoe_decode(x, logits, experts, top_k, renormalize, shared, bits, group, pdl)
    routed = qmoe_prefill(x, logits, experts, top_k, renormalize, bits, group)
    g, u = act.chunk(2, dim=-1)  # the shared expert as moe_ref.shared_expert, its down on the packed weight
    return routed + torch.sigmoid(gate) * qgemm(F.silu(g) * u, shared_down_q, shared_down_s, bits, group)


@triton_op("gdn::qmoe_shared", mutates_args=())
def qmoe_shared(
    x: torch.Tensor, router_shared: torch.Tensor, gate_up_q: torch.Tensor, gate_up_s: torch.Tensor,
    down_q: torch.Tensor, down_s: torch.Tensor, shared_down_q: torch.Tensor, shared_down_s: torch.Tensor,
    top_k: int, renormalize: bool, bits: int, group: int,
) -> torch.Tensor:
    return qmoe_shared_triton(x, router_shared, gate_up_q, gate_up_s, down_q, down_s, shared_down_q,
                              shared_down_s, top_k, renormalize, bits, group)


@qmoe_shared.register_fake
def _(x, router_shared, gate_up_q, gate_up_s, down_q, down_s, shared_down_q, shared_down_s, top_k, renormalize,
      bits, group):
    reference.check_inputs(x, router_shared, gate_up_q, gate_up_s, down_q, down_s, shared_down_q, shared_down_s,
                           top_k, bits, group)
    return torch.empty_like(x)


qmoe_shared.register_kernel("cpu")(reference.moe_shared)
