"""Registration of `torch.ops.gdn.moe_shared` (the router, the routed experts and the gated shared expert) as a
Triton op: torch.export keeps it as a single node, AOTInductor compiles its Triton kernels into the artifact.
CPU tensors take the plain-PyTorch reference.

T == 1 (a static shape) takes the one-token mat-vec kernels (decode.py) with the shared expert fused into
their down kernel; any other T, dynamic ones included, the grouped-GEMM path (prefill.py) and the shared
expert in PyTorch.
"""

from __future__ import annotations

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true
from torch.library import triton_op

from .. import require_package_import
from . import reference
from .decode import moe_decode
from .prefill import moe_prefill

require_package_import(__name__)


def moe_shared_triton(
    x: torch.Tensor,
    router_shared: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    shared_down: torch.Tensor,
    top_k: int,
    renormalize: bool,
    pdl: str = "on",
) -> torch.Tensor:
    """The op's Triton implementation (what the CPU tests run under TRITON_INTERPRET=1). router_shared
    [T, E + 2S + 1] = [router logits | shared gate | shared up | shared gate logit]; shared_down [H, S].
    pdl: the decode kernels' launch, "on" (the op) or "serial" (stream order, the race tests' baseline)."""
    logits, act, gate = reference.split_projection(router_shared, gate_up.shape[0], shared_down.shape[1])
    if statically_known_true(x.shape[0] == 1):
        return moe_decode(x, logits, gate_up, down, top_k, renormalize, (act, gate, shared_down), pdl)
    routed = moe_prefill(x, logits, gate_up, down, top_k, renormalize)
    return routed + reference.shared_expert(act, gate, shared_down)


@triton_op("gdn::moe_shared", mutates_args=())
def moe_shared(
    x: torch.Tensor,
    router_shared: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    shared_down: torch.Tensor,
    top_k: int,
    renormalize: bool,
) -> torch.Tensor:
    return moe_shared_triton(x, router_shared, gate_up, down, shared_down, top_k, renormalize)


@moe_shared.register_fake
def _(x, router_shared, gate_up, down, shared_down, top_k, renormalize):
    return torch.empty_like(x)


@moe_shared.register_kernel("cpu")
def _(x, router_shared, gate_up, down, shared_down, top_k, renormalize):
    return reference.moe_shared(x, router_shared, gate_up, down, shared_down, top_k, renormalize)
