"""Lower the two exported methods into one ExecuTorch program, per backend.

CPU: XNNPACK delegates the dense math; everything else runs on the portable kernels of the pip wheel.
The mutable state buffers are planned once in a memory arena the two methods share.
CUDA: ExecuTorch's CUDA backend compiles each method with AOTInductor into its own shared library;
the state lives inside the delegate as constants, weights go to the external `.ptd`. Kernels written for
programmatic dependent launch are launched with it (aoti_pdl.py).
"""

from __future__ import annotations

import math
import operator
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch.export import ExportedProgram

from .aoti_pdl import pdl_launches


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
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    # weights re-laid out by the CPU kernels (a permute, a concat) fold into constants XNNPACK packs once
    programs = {name: constant_prop_pass(portable_bit_ops(drop_noop_casts(ep)), custom_skip_targets=_fold_skips(ep))
                for name, ep in programs.items()}
    edge = to_edge_transform_and_lower(
        programs,
        transform_passes=[views_for_copies, slices_for_splits, xnnpack_mean],
        partitioner=[XnnpackPartitioner(configs=[*ALL_PARTITIONER_CONFIGS, ViewCopyConfig])],
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
    )
    _add_named_data(edge, named_data)
    planning = MemoryPlanningPass(alloc_mutable_buffers=True, share_mutable_buffers=True)
    # run_reinplace_pass: the caches' index_put becomes an in-place write, not a copy of the cache per call
    config = ExecutorchBackendConfig(memory_planning_pass=planning, emit_mutable_buffer_names=True,
                                     run_reinplace_pass=True)
    return edge.to_executorch(config)


def _static_shape(node) -> list[int] | None:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or not all(isinstance(d, int) for d in val.shape):
        return None
    return list(val.shape)


def views_for_copies(gm: torch.fx.GraphModule):
    """Edge-dialect unsqueeze / squeeze copies, and selects of a size-1 dim, of static shape as view_copy: each a
    portable-kernel copy and an instruction per call otherwise; a view_copy XNNPACK takes inside a partition, or
    the emitter turns into a memory view (no instruction)."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from torch.fx.passes.infra.pass_base import PassResult

    aten = exir_ops.edge.aten
    reshapes = (aten.unsqueeze_copy.default, aten.squeeze_copy.dim, aten.squeeze_copy.dims, aten.squeeze_copy.default)
    changed = False
    for node in gm.graph.nodes:
        shape = _static_shape(node) if node.op == "call_function" else None
        if shape is None:
            continue
        size_one_select = (node.target is aten.select_copy.int
                           and node.args[0].meta["val"].shape[node.args[1]] == 1)
        if node.target in reshapes or size_one_select:
            node.target, node.args, node.kwargs = aten.view_copy.default, (node.args[0], shape), {}
            changed = True
    gm.recompile()
    return PassResult(gm, changed)


def slices_for_splits(gm: torch.fx.GraphModule):
    """Edge-dialect split_with_sizes_copy of a static tensor (a fused projection's parts) as one slice_copy per
    part: XNNPACK takes static slices inside a partition, the split is a portable kernel between two."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from torch.fx.passes.infra.pass_base import PassResult

    aten = exir_ops.edge.aten
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.split_with_sizes_copy.default:
            continue
        x, sizes = node.args[0], node.args[1]
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if _static_shape(x) is None or any(u.target is not operator.getitem for u in node.users):
            continue
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        for user in list(node.users):
            i = user.args[1]
            with gm.graph.inserting_before(user):
                piece = gm.graph.call_function(aten.slice_copy.Tensor, (x, dim, starts[i], starts[i] + sizes[i]))
            piece.meta = dict(user.meta)
            user.replace_all_uses_with(piece)
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
        changed = True
    gm.recompile()
    return PassResult(gm, changed)


def xnnpack_mean(gm: torch.fx.GraphModule):
    """mean over the last dim (keepdim) of a static tensor [..., K] as XNNPACK's mean: over the two inner dims of
    a 4-D view [rows, 1, K, 1]. The norms' means, which stay on portable kernels otherwise."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from torch.fx.passes.infra.pass_base import PassResult

    aten = exir_ops.edge.aten
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.mean.dim or node.kwargs.get("dtype") is not None:
            continue
        x, dims = node.args[0], node.args[1]
        shape, out = _static_shape(x), _static_shape(node)
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if shape is None or out is None or not keep or list(dims) not in ([-1], [len(shape) - 1]):
            continue
        rows = [math.prod(shape[:-1]), 1, shape[-1], 1]
        with gm.graph.inserting_before(node):
            v = gm.graph.call_function(aten.view_copy.default, (x, rows))
            v.meta["val"] = x.meta["val"].reshape(rows)
            m = gm.graph.call_function(aten.mean.dim, (v, [-2, -1], True))
            m.meta["val"] = v.meta["val"].mean([-2, -1], keepdim=True)
            r = gm.graph.call_function(aten.view_copy.default, (m, out))
            r.meta["val"] = node.meta["val"]
        node.replace_all_uses_with(r)
        gm.graph.erase_node(node)
        changed = True
    gm.recompile()
    return PassResult(gm, changed)


NOOP_CAST_TARGETS = (torch.ops.aten.to.dtype, torch.ops.aten.to.dtype_layout)
# the first ops of kernels/qgemv/reference.py's dequantize (int4: the nibble masks; int8: the cast to float)
DEQUANT_ENTRY_TARGETS = (torch.ops.aten.bitwise_and.Scalar, torch.ops.aten.bitwise_right_shift.Tensor_Scalar,
                         torch.ops.aten.to.dtype, torch.ops.aten._to_copy.default)
# `p & 15` and `p >> 4` trace to the Python operators' overloads, which the portable kernels lack
BIT_OP_NAMES = {torch.ops.aten.__and__.Scalar: torch.ops.aten.bitwise_and.Scalar,
                torch.ops.aten.__rshift__.Scalar: torch.ops.aten.bitwise_right_shift.Tensor_Scalar}


def portable_bit_ops(ep: ExportedProgram) -> ExportedProgram:
    """The int4 unpacking's `&` and `>>` as the named bitwise ops the portable kernels implement."""
    for node in ep.graph_module.graph.nodes:
        if node.op == "call_function" and node.target in BIT_OP_NAMES:
            node.target = BIT_OP_NAMES[node.target]
    ep.graph_module.recompile()
    return ep


def _fold_skips(ep: ExportedProgram) -> set | None:
    """Quantized weights (`*.qweight`) are dequantized in the program: folded, the artifact would hold them as
    floats. So constant propagation stops at the dequantisation's first ops (which also leaves casts of other
    constants to run). None (the pass's default) without quantized weights."""
    from executorch.exir.passes.constant_prop_pass import get_default_skip_targets_no_quant

    if not any(t.endswith(".qweight") for t in ep.graph_signature.inputs_to_parameters.values()):
        return None
    return set(get_default_skip_targets_no_quant()) | set(DEQUANT_ENTRY_TARGETS)


def drop_noop_casts(ep: ExportedProgram) -> ExportedProgram:
    """`.float()` / `.to(dtype)` on a tensor already of that dtype (the fp32 CPU path's kernels cast freely)
    leave a cast and a metadata assertion per call in the exported graph: a quarter of its nodes, each paid in
    every lowering pass. The casts are identities there: their uses read the input instead."""
    graph = ep.graph_module.graph
    for node in list(graph.nodes):
        if node.target is torch.ops.aten._assert_tensor_metadata.default and not node.users:
            graph.erase_node(node)
        elif node.target in NOOP_CAST_TARGETS and _is_identity_cast(node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    ep.graph_module.recompile()
    return ep


def _is_identity_cast(node) -> bool:
    src, out = node.args[0].meta.get("val"), node.meta.get("val")
    if not isinstance(src, torch.Tensor) or not isinstance(out, torch.Tensor):
        return False
    kw = node.kwargs
    copy = kw.get("copy", False) or (node.target is torch.ops.aten.to.dtype and len(node.args) > 3 and node.args[3])
    same_layout = kw.get("memory_format") in (None, torch.preserve_format)
    return src.dtype == out.dtype and src.device == out.device and not copy and same_layout


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


def _has_call(programs: dict[str, ExportedProgram], match) -> bool:
    return any(n.op == "call_function" and match(n) for ep in programs.values() for n in ep.graph.nodes)


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
    if not _has_call(programs, _is_our_op):
        return programs
    with _triton_op_decomposition():
        return {name: ep.run_decompositions({}) for name, ep in programs.items()}


def lower_cuda(programs: dict[str, ExportedProgram], named_data: dict[str, bytes], autotune: str = "decode"):
    """-> ExecutorchProgramManager whose tensor data holds one `.ptd` (the weights blobs)."""
    programs = split_to_slices(inline_triton_ops(programs))
    with _backend_settings(autotune, decompose=_has_call(programs, _is_convolution)), pdl_launches():
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
