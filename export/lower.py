"""Lower the two exported methods into one ExecuTorch program, per backend.

CPU: XNNPACK delegates the dense math; everything else runs on the portable kernels of the pip wheel.
The mutable state buffers are planned once in a memory arena the two methods share. The graph passes are in
cpu_passes.py, the XNNPACK lowering's shortcuts in xnnpack.py.
CUDA: ExecuTorch's CUDA backend compiles each method with AOTInductor into its own shared library;
the state lives inside the delegate as constants, weights go to the external `.ptd`. Kernels written for
programmatic dependent launch are launched with it (aoti_pdl.py).
"""

from __future__ import annotations

import operator
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch.export import ExportedProgram

from .aoti_pdl import pdl_launches
from .cpu_passes import (drop_noop_casts, fold_skips, inferred_views, portable_bit_ops, select_for_scalar_where,
                         slices_for_splits, views_for_copies, xnnpack_mean)
from .xnnpack import drop_provenance, edge_and_lower, has_call, xnnpack_passes_that_apply


def ensure_flatc() -> None:
    """executorch 1.2.0's wheel ships flatc but does not look for it."""
    if "FLATC_EXECUTABLE" not in os.environ:
        import executorch

        flatc = Path(next(iter(executorch.__path__))) / "data" / "bin" / "flatc"
        if flatc.exists():
            os.environ["FLATC_EXECUTABLE"] = str(flatc)


def lower_cpu(programs: dict[str, ExportedProgram], named_data: dict[str, bytes]):
    """-> ExecutorchProgramManager with shared mutable state."""
    ensure_flatc()
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.generic_node_configs import ViewCopyConfig
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    # weights re-laid out by the CPU kernels (a permute, a concat) fold into constants XNNPACK packs once
    programs = {name: constant_prop_pass(portable_bit_ops(drop_noop_casts(ep)), custom_skip_targets=fold_skips(ep))
                for name, ep in programs.items()}
    for ep in programs.values():
        drop_provenance(ep.graph_module)
    partitioner = XnnpackPartitioner(configs=[*ALL_PARTITIONER_CONFIGS, ViewCopyConfig])
    passes = [drop_provenance, views_for_copies, inferred_views, slices_for_splits, xnnpack_mean,
              select_for_scalar_where]
    with xnnpack_passes_that_apply():
        edge = edge_and_lower(programs, partitioner, passes)
    _add_named_data(edge, named_data)
    planning = MemoryPlanningPass(alloc_mutable_buffers=True, share_mutable_buffers=True)
    # run_reinplace_pass: the caches' index_put becomes an in-place write, not a copy of the cache per call
    config = ExecutorchBackendConfig(memory_planning_pass=planning, emit_mutable_buffer_names=True,
                                     run_reinplace_pass=True)
    return edge.to_executorch(config)


@contextmanager
def _backend_settings(autotune: str, decompose: bool) -> Iterator[None]:
    """autotune (all | decode | none): the CUDA backend compiles GEMMs only from Triton templates (no
    libtorch), picked by autotuning; a method not autotuned takes each GEMM's first template config (a
    much faster export, slower GEMMs). `decode` tunes the one-token method only: its shapes are static,
    while prefill's dynamic length would be tuned at the example length alone.
    decompose: the backend re-traces each method for its decomposition table (conv1d -> conv2d only), a
    whole re-trace for one op; skipped when no method has a convolution."""
    from executorch.backends.cuda.cuda_backend import CudaBackend

    saved = {k: CudaBackend.__dict__[k] for k in ("get_aoti_compile_options", "get_decomposition_table")}
    options = saved["get_aoti_compile_options"].__func__
    tuned = {"all": ("prefill", "decode"), "decode": ("decode",), "none": ()}[autotune]

    def compile_options(cls, specs):
        if cls.method_name_from_compile_specs(specs) in tuned:
            return options(cls, specs)
        return {**options(cls, specs), "test_configs.max_mm_configs": 1}

    CudaBackend.get_aoti_compile_options = classmethod(compile_options)
    if not decompose:
        CudaBackend.get_decomposition_table = classmethod(lambda cls: {})
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(CudaBackend, k, v)


def _is_our_op(node) -> bool:
    """A `gdn::` op, or one wrapped by functionalisation (auto_functionalized(op, ...))."""
    def ours(t) -> bool:
        return getattr(t, "namespace", None) == "gdn"

    return ours(node.target) or bool(node.args and ours(node.args[0]))


def _is_convolution(node) -> bool:
    return "aten.conv" in str(node.target)


def split_to_slices(programs: dict[str, ExportedProgram]) -> dict[str, ExportedProgram]:
    """`chunk`, `split(int)` and `split(list)` become split_copy / split_with_sizes_copy in the edge dialect: an op
    the CUDA backend has no kernel for, and a copy kernel per part (a fused projection's q, k, v, z, ... every
    layer and step). Rewritten in place as slices (static split dims only) they compile to views."""
    targets = (torch.ops.aten.chunk.default, torch.ops.aten.split.Tensor, torch.ops.aten.split_with_sizes.default)
    for ep in programs.values():
        graph = ep.graph_module.graph
        for node in [n for n in graph.nodes if n.target in targets]:
            x, parts = node.args[0], node.args[1]
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
            full = x.meta["val"].shape[dim]
            if not isinstance(full, int) or any(u.target is not operator.getitem for u in node.users):
                continue
            bounds = _split_bounds(node.target, parts, full)
            for user in list(node.users):
                start, stop = bounds[user.args[1]]
                with graph.inserting_before(user):
                    piece = graph.call_function(torch.ops.aten.slice.Tensor, (x, dim, start, stop))
                piece.meta = dict(user.meta)
                user.replace_all_uses_with(piece)
                graph.erase_node(user)
            graph.erase_node(node)
        ep.graph_module.recompile()
    return programs


def _split_bounds(target, parts, full: int) -> list[tuple[int, int]]:
    """[(start, stop)] of each part: `parts` is chunk's count, split's size, or split_with_sizes' sizes."""
    if target == torch.ops.aten.split_with_sizes.default:
        sizes = list(parts)
    else:
        size = -(-full // parts) if target == torch.ops.aten.chunk.default else parts
        sizes = [min(size, full - i) for i in range(0, full, size)]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [(a, a + n) for a, n in zip(starts, sizes)]


@contextmanager
def _triton_op_decomposition() -> Iterator[None]:
    """torch.export keeps each triton_op as one node, and functionalisation wraps an op that mutates its
    state in auto_functionalized, which AOTInductor compiles as an extern call back into the op (a
    "fallback kernel" the ExecuTorch CUDA runtime does not have). With export's switch that preserves
    triton_ops turned off, re-tracing inlines the op bodies: the Triton kernels appear as
    triton_kernel_wrapper_functional nodes, which AOTInductor compiles into the library and reinplaces."""
    import torch.export._trace as trace

    original = trace.custom_triton_ops_decomposition_disabled
    trace.custom_triton_ops_decomposition_disabled = lambda: False
    try:
        yield
    finally:
        trace.custom_triton_ops_decomposition_disabled = original


def inline_triton_ops(programs: dict[str, ExportedProgram]) -> dict[str, ExportedProgram]:
    """A re-trace of each method, one of the export's slow steps: only where our ops appear."""
    if not has_call(programs, _is_our_op):
        return programs
    with _triton_op_decomposition():
        return {name: ep.run_decompositions({}) for name, ep in programs.items()}


def lower_cuda(programs: dict[str, ExportedProgram], named_data: dict[str, bytes], autotune: str = "decode"):
    """-> ExecutorchProgramManager whose tensor data holds one `.ptd` (the weights blobs)."""
    programs = split_to_slices(inline_triton_ops(programs))
    with _backend_settings(autotune, decompose=has_call(programs, _is_convolution)), pdl_launches():
        return _lower_cuda(programs, named_data)


def _lower_cuda(programs: dict[str, ExportedProgram], named_data: dict[str, bytes]):
    ensure_flatc()
    from executorch.backends.cuda.cuda_backend import CudaBackend
    from executorch.backends.cuda.cuda_partitioner import CudaPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    partitioners = {name: [CudaPartitioner([CudaBackend.generate_method_name_compile_spec(name)])] for name in programs}
    edge = to_edge_transform_and_lower(
        programs,
        partitioner=partitioners,
        compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True),
    )
    _add_named_data(edge, named_data)
    config = ExecutorchBackendConfig(
        extract_delegate_segments=True,
        do_quant_fusion_and_const_prop=True,
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
    )
    return edge.to_executorch(config)


def _add_named_data(edge, named_data: dict[str, bytes]) -> None:
    """Our metadata entries live in the .pte itself (external_tag None)."""
    for key, data in named_data.items():
        edge._named_data_store.add_named_data(key, data, 1, None)
