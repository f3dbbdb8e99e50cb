"""The XNNPACK lowering of the CPU methods with fewer re-traces than ExecuTorch's default path, the same program:
one decomposition re-trace per method where the partitioner keeps every linear, XNNPACK's per-partition passes
that cannot apply skipped, and torch.fx's provenance records dropped (README, Speed: the export's time)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import torch
from torch.export import ExportedProgram


def drop_provenance(gm: torch.fx.GraphModule):
    """Deletes each node's `from_node`, torch.fx's provenance record: every re-trace and pass deep-copies the whole
    chain into each node it makes, a chain one level longer per pass (README, Speed: the export's time).
    Dropped before the edge conversion and again before partitioning, the chains stay a few passes deep. Its one
    reader is the debug-handle numbering (profiling metadata): the program's instructions and outputs are the same."""
    from torch.fx.passes.infra.pass_base import PassResult

    for module in gm.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                node.meta.pop("from_node", None)
    return PassResult(gm, False)


def edge_and_lower(programs: dict[str, ExportedProgram], partitioner, passes: list):
    """to_edge_transform_and_lower(programs, passes, [partitioner]) with one decomposition re-trace per method
    instead of three where the result is the same: that function re-traces each method to functionalize it, again
    keeping the partitioner's ops (linear), and a third time after swapping out each kept node its check accepts.
    When the check accepts every such node (no quantized weights), keeping those ops in one re-trace is the same
    program: to_edge with them preserved, the passes, then the partitioner."""
    from executorch.exir import EdgeCompileConfig, to_edge, to_edge_transform_and_lower

    if not all(_partitioner_keeps_all(ep, partitioner) for ep in programs.values()):
        return to_edge_transform_and_lower(programs, transform_passes=passes, partitioner=[partitioner],
                                           compile_config=EdgeCompileConfig(_check_ir_validity=False))
    kept, _ = partitioner.ops_to_not_decompose(next(iter(programs.values())))
    present = [op for op in kept if has_call(programs, lambda n, op=op: n.target == op)]
    config = EdgeCompileConfig(_check_ir_validity=False, preserve_ops=present)
    edge = to_edge(programs, compile_config=config).transform(passes)
    # the partitioner logs a deprecation of this workflow whenever to_edge_transform_and_lower is not on the stack
    with _logger_level("executorch.backends.xnnpack.partition.xnnpack_partitioner", logging.ERROR):
        return edge.to_backend(partitioner)


@contextmanager
def _logger_level(name: str, level: int) -> Iterator[None]:
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


def _partitioner_keeps_all(ep: ExportedProgram, partitioner) -> bool:
    """Does the partitioner's check accept every node of the ops it asks to keep from decomposition?"""
    kept, check = partitioner.ops_to_not_decompose(ep)
    nodes = [n for n in ep.graph.nodes if n.op == "call_function" and n.target in kept]
    return check is None or all(check(n) for n in nodes)


# XNNPACK's preprocessing passes that rewrite only ops of these kinds: run on a partition without one, each is a
# re-trace of the partition that changes nothing (most partitions lack these ops)
XNNPACK_PASS_TRIGGERS = {
    "ConvertToUpsampleBilinear2d": ("upsample",),
    "ConvertToSDPAPass": ("softmax",),
    "FuseBatchNormPass": ("batch_norm",),
    "DecomposeBatchNorm": ("batch_norm",),
    "Conv1dUnsqueezePass": ("convolution",),
    "PReLUReshapePass": ("prelu",),
    "PropagateCustomMetaPass": ("quantize",),
    "RemoveGetItemPass": ("max_pool2d_with_indices", "aten.max.dim"),
    "DecomposeConcatenate": ("aten.cat.",),
    "ConvertToLinearPass": ("aten.mm.", "aten.addmm.", "aten.bmm."),
    "XNNPACKRemoveCloneOpsTransform": ("aten.clone.", "_clone_dim_order"),
    "DimOrderOpsRevertPass": ("dim_order_ops.",),
    "FuseActivationPass": ("relu", "hardtanh"),
    "RemoveRedundantCopyPass": ("aten._to_copy.", "_to_dim_order_copy"),  # DimOrderOpsRevertPass makes _to_copy
}


@contextmanager
def xnnpack_passes_that_apply() -> Iterator[None]:
    """While lowering, XNNPACK's preprocessing of each partition skips the passes of XNNPACK_PASS_TRIGGERS whose
    ops the partition lacks; every other pass runs as before, in its order."""
    from executorch.backends.xnnpack import _passes

    manager = _passes.XNNPACKPassManager
    original = manager.__init__

    def init(self, exported_program, passes=None):
        original(self, exported_program, passes)
        ops = {str(n.target) for n in exported_program.graph.nodes if n.op == "call_function"}
        self.passes = [p for p in self.passes if not _pass_is_idle(p.__name__, ops)]

    manager.__init__ = init
    try:
        yield
    finally:
        manager.__init__ = original


def _pass_is_idle(name: str, ops: set[str]) -> bool:
    triggers = XNNPACK_PASS_TRIGGERS.get(name)
    return triggers is not None and not any(t in op for t in triggers for op in ops)


def has_call(programs: dict[str, ExportedProgram], match) -> bool:
    return any(n.op == "call_function" and match(n) for ep in programs.values() for n in ep.graph.nodes)
