"""Registration of `torch.ops.gdn.moe` (router + routed experts) and `torch.ops.gdn.moe_shared` (the same
plus the shared expert), as Triton ops: torch.export keeps them as single nodes, AOTInductor compiles their
Triton kernels into the artifact. CPU tensors take the plain-PyTorch reference.

T == 1 (a static shape) takes the fused mat-vec decode kernels; any other T, dynamic ones included, the
grouped-GEMM prefill path.
"""

from __future__ import annotations

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true
from torch.library import triton_op

from .. import require_package_import
from . import reference
from .decode import DecodeConfig, moe_decode
from .prefill import PrefillConfig, moe_prefill

require_package_import(__name__)

# The ops' one-token kernels (DecodeConfig(): router kernel, unrolled kernel 1, tile kernel 2), verified inside
# CUDA artifacts on the H100 (tests/test_export_cuda.py); 31.4 us routed against 34.4 for run 4's default and
# 42.4 for `decode.BASELINE` in one scripts/bench_moe.py run (kernels/moe/NOTES.md, run 5); the router's
# bitonic top-k since session 12; in their PDL form since session 16, launched with PDL by Triton and inside
# artifacts (gdn.export.aoti_pdl): 29.14 against 30.21 us per layer compiled by AOTInductor (NOTES.md, session 16).
ARTIFACT_DECODE = DecodeConfig(pdl="on")
# The T > 1 kernels: an expert's last block a half block where its remainder fits (GEMM rows 19.2 -> 10.6 %
# padding at T = 8192); 1.203 -> 1.188 ms there, 0.610 -> 0.595 at T = 512, outputs bit-equal (NOTES.md,
# sessions 13, 14 and 18).
ARTIFACT_PREFILL = PrefillConfig(half_tail=True)


def moe_triton(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    top_k: int,
    renormalize: bool,
    decode_cfg: DecodeConfig = DecodeConfig(),
) -> torch.Tensor:
    """The Triton implementation (also what the CPU tests run under TRITON_INTERPRET=1); `decode_cfg` lets
    the tests and the benchmark pick the T == 1 kernels, the ops take `ARTIFACT_DECODE`; T > 1 runs
    `ARTIFACT_PREFILL`."""
    if statically_known_true(x.shape[0] == 1):
        return moe_decode(x, router_logits, gate_up, down, top_k, renormalize, cfg=decode_cfg)
    return moe_prefill(x, router_logits, gate_up, down, top_k, renormalize, ARTIFACT_PREFILL)


def moe_shared_triton(
    x: torch.Tensor,
    router_shared: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    shared_down: torch.Tensor,
    top_k: int,
    renormalize: bool,
    decode_cfg: DecodeConfig = DecodeConfig(),
) -> torch.Tensor:
    """router_shared [T, E + 2S + 1] = [router logits | shared gate | shared up | shared gate logit];
    shared_down [H, S]. Decode fuses the shared expert into the down kernel."""
    E, S = gate_up.shape[0], shared_down.shape[1]
    logits, act, gate = router_shared[:, :E], router_shared[:, E : E + 2 * S], router_shared[:, E + 2 * S :]
    if statically_known_true(x.shape[0] == 1):
        return moe_decode(x, logits, gate_up, down, top_k, renormalize, shared=(act, gate, shared_down), cfg=decode_cfg)
    routed = moe_prefill(x, logits, gate_up, down, top_k, renormalize, ARTIFACT_PREFILL)
    return routed + reference.shared_expert(act, gate, shared_down)


@triton_op("gdn::moe", mutates_args=())
def moe(
    x: torch.Tensor, router_logits: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, top_k: int, renormalize: bool
) -> torch.Tensor:
    return moe_triton(x, router_logits, gate_up, down, top_k, renormalize, ARTIFACT_DECODE)


@moe.register_fake
def _(x, router_logits, gate_up, down, top_k, renormalize):
    return torch.empty_like(x)


@moe.register_kernel("cpu")
def _(x, router_logits, gate_up, down, top_k, renormalize):
    return reference.moe(x, router_logits, gate_up, down, top_k, renormalize)


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
    return moe_shared_triton(x, router_shared, gate_up, down, shared_down, top_k, renormalize, ARTIFACT_DECODE)


@moe_shared.register_fake
def _(x, router_shared, gate_up, down, shared_down, top_k, renormalize):
    return torch.empty_like(x)


@moe_shared.register_kernel("cpu")
def _(x, router_shared, gate_up, down, shared_down, top_k, renormalize):
    return reference.moe_shared(x, router_shared, gate_up, down, shared_down, top_k, renormalize)
