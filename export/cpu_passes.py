"""Graph passes of the CPU lowering (export/lower.py `lower_cpu`): fewer portable instructions and more of the
program inside XNNPACK, each exact (tests/test_cpu_lower.py, tests/test_cpu_lower_speed.py)."""

from __future__ import annotations

import math
import operator

import torch
from torch.export import ExportedProgram


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


def inferred_views(gm: torch.fx.GraphModule):
    """Edge-dialect view / unsqueeze / squeeze copies whose output has one dynamic dim (the prefill's length) as a
    view_copy with that dim inferred (-1): XNNPACK takes a reshape with one inferred dim, not a symbolic one, so
    each of these split the prefill's partitions (and the portable kernel copies it)."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from torch.fx.passes.infra.pass_base import PassResult

    aten = exir_ops.edge.aten
    reshapes = (aten.view_copy.default, aten.unsqueeze_copy.default, aten.squeeze_copy.dim, aten.squeeze_copy.dims,
                aten.squeeze_copy.default)
    changed = False
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in reshapes or _static_shape(node) is not None:
            continue
        dims = list(node.meta["val"].shape)
        if sum(not isinstance(d, int) for d in dims) != 1:
            continue
        shape = [d if isinstance(d, int) else -1 for d in dims]
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


# below this many elements a broadcast where costs less than the pick's extra instructions (README, Speed)
PICK_MIN_ELEMENTS = 64


def select_for_scalar_where(gm: torch.fx.GraphModule):
    """where(c, a, b) of static shape with one condition value (the GDN and conv states' reset) as a row pick:
    cat([b, a]) as [2, N] rows, index_select of row int(c), a view back. The portable where broadcasts its
    condition element by element, many times slower than the pick on a state (README, Speed). Exact for any
    values, NaN included: a copy, no arithmetic. Each of a, b has the output's shape or is a constant fill (full_like,
    scalar_tensor, full), which becomes a full of that shape; other wheres, and those of fewer than
    PICK_MIN_ELEMENTS elements, stay. A condition's index and a fill are made once and shared by every where that
    uses them."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from torch.fx.passes.infra.pass_base import PassResult

    made: dict = {}
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not exir_ops.edge.aten.where.self:
            continue
        cond, a, b = node.args
        out = _static_shape(node)
        if out is None or math.prod(out) < PICK_MIN_ELEMENTS or not _one_value(cond):
            continue
        if any(_row_fill(x, out, node) is False for x in (a, b)):
            continue
        rows = [_where_row(gm, x, out, node, made) for x in (b, a)]
        _replace_where(gm, node, _where_index(gm, cond, node, made), rows, out)
        changed = True
    gm.recompile()
    return PassResult(gm, changed)


FILL_TARGETS = ("aten.full_like.default", "aten.scalar_tensor.default", "aten.full.default")


def _one_value(node) -> bool:
    shape = _static_shape(node)
    return shape is not None and math.prod(shape) == 1


def _row_fill(x, out: list[int], where):
    """None: x has the output's shape and dtype; a number: x is a fill of that value; False: neither."""
    if _static_shape(x) == out and x.meta["val"].dtype == where.meta["val"].dtype:
        return None
    name = str(x.target) if x.op == "call_function" else ""
    if not name.endswith(FILL_TARGETS):
        return False
    return x.args[0] if "scalar_tensor" in name else x.args[1]


def _edge_node(gm: torch.fx.GraphModule, target, args: tuple, val, kwargs: dict | None = None):
    node = gm.graph.call_function(target, args, kwargs or {})
    node.meta["val"] = val
    return node


def _where_row(gm: torch.fx.GraphModule, x, out: list[int], where, made: dict):
    """-> a [1, N] node holding x at the output's shape (a fill made once per shape, value and dtype)."""
    from executorch.exir.dialects._ops import ops as exir_ops

    aten, n, val = exir_ops.edge.aten, math.prod(out), where.meta["val"]
    fill = _row_fill(x, out, where)
    with gm.graph.inserting_before(where):
        if fill is None:
            return _edge_node(gm, aten.view_copy.default, (x, [1, n]), x.meta["val"].reshape(1, n))
        key = ("fill", n, fill, val.dtype)
        if key not in made:
            made[key] = _edge_node(gm, aten.full.default, ([1, n], fill), val.new_full((1, n), fill),
                                   {"dtype": val.dtype})
    return made[key]


def _where_index(gm: torch.fx.GraphModule, cond, where, made: dict):
    """-> cond as an int64 index [1] (made once per condition)."""
    from executorch.exir.dialects._ops import ops as exir_ops

    if ("index", cond) not in made:
        cast = exir_ops.edge.dim_order_ops._to_dim_order_copy.default
        with gm.graph.inserting_before(where):
            flat = _edge_node(gm, exir_ops.edge.aten.view_copy.default, (cond, [1]), cond.meta["val"].reshape(1))
            made[("index", cond)] = _edge_node(gm, cast, (flat,), flat.meta["val"].to(torch.int64),
                                               {"dtype": torch.int64, "dim_order": [0]})
    return made[("index", cond)]


def _replace_where(gm: torch.fx.GraphModule, where, index, rows: list, out: list[int]) -> None:
    from executorch.exir.dialects._ops import ops as exir_ops

    aten, val = exir_ops.edge.aten, where.meta["val"]
    with gm.graph.inserting_before(where):
        both = _edge_node(gm, aten.cat.default, (rows, 0), torch.cat([r.meta["val"] for r in rows]))  # [2, N]
        pick = _edge_node(gm, aten.index_select.default, (both, 0, index), both.meta["val"][:1])
        shaped = _edge_node(gm, aten.view_copy.default, (pick, out), val)
    where.replace_all_uses_with(shaped)
    gm.graph.erase_node(where)


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


def fold_skips(ep: ExportedProgram) -> set | None:
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
