"""export/lower.py's CPU lowering (the passes in export/cpu_passes.py, the shortcuts in export/xnnpack.py) after
the export-time and decode-time work of issue 34, on small programs lowered by lower_cpu and run in the
ExecuTorch runtime:

- a where with one condition value (a state's reset) becomes a row pick, exact for any values (NaN and inf in the
  rows it drops or keeps), with no portable where left;
- a prefill's reshapes with one dynamic dim become XNNPACK reshapes with that dim inferred, equal to eager at odd
  lengths;
- the export-time shortcuts (one decomposition re-trace per method, XNNPACK's idle passes skipped) write the same
  bytes as the lowering without them; dropped provenance records change only debug handles (same instructions,
  outputs equal bit for bit); a program whose linear the partitioner does not take (a weight computed in the
  program) still lowers and runs, through the full path, with no deprecation line.
"""

from __future__ import annotations

import collections
import contextlib
import logging

import pytest
import torch

import gdn.export.lower as lower
import gdn.export.xnnpack as xnnpack
from gdn.export.lower import lower_cpu


def instructions(et, method: str) -> collections.Counter:
    gm = et.exported_program(method).graph_module
    return collections.Counter(getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes
                               if n.op == "call_function")


def load(et, method: str):
    from executorch.runtime import Runtime, Verification

    return Runtime.get().load_program(et.buffer, verification=Verification.Minimal).load_method(method)


class Reset(torch.nn.Module):
    """The model's reset pattern: a state read as zero when one flag says so, and a two-tensor select."""

    def forward(self, flag, state, other):
        zeroed = torch.where(flag, torch.zeros_like(state), state)  # [1, 3, 5, 7]
        scalar = torch.where(flag, 0.0, other)  # a scalar operand
        picked = torch.where(flag, state, other)  # two full operands
        return zeroed * 2.0, scalar + 1.0, picked


@pytest.mark.slow
def test_scalar_where_becomes_an_exact_row_pick():
    m = Reset()
    shape = (1, 3, 5, 7)
    args = (torch.tensor([True]), torch.randn(shape), torch.randn(shape))
    with torch.no_grad():
        et = lower_cpu({"forward": torch.export.export(m, args, strict=True)}, {})
    assert "where.self_out" not in instructions(et, "forward")
    method = load(et, "forward")
    for flag in (True, False, True):
        state, other = torch.randn(shape), torch.randn(shape)
        state[0, 1, 2, 3], other[0, 2, 4, 6], other[0, 0, 0, 0] = float("nan"), float("inf"), float("nan")
        inputs = (torch.tensor([flag]), state, other)
        got = method.execute(inputs)
        want = m(*inputs)
        for g, w in zip(got, want):
            assert torch.equal(g.isnan(), w.isnan())
            torch.testing.assert_close(g.nan_to_num(), w.nan_to_num(), rtol=0, atol=0)


class Heads(torch.nn.Module):
    """x [T, 24] -> reshapes with the dynamic T, around linears and elementwise ops XNNPACK runs."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(24, 24)
        self.out = torch.nn.Linear(24, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        h = torch.sigmoid(self.proj(x)).view(T, 4, 6).unsqueeze(0)  # [1, T, 4, 6]
        h = (h * 3.0).squeeze(0).reshape(T, 24)
        return self.out(h)


@pytest.mark.slow
def test_dynamic_reshapes_run_in_xnnpack_and_equal_eager():
    torch.manual_seed(0)
    m = Heads().eval()
    T = torch.export.Dim("T", min=1, max=64)
    with torch.no_grad():
        ep = torch.export.export(m, (torch.randn(5, 24),), dynamic_shapes=({0: T},), strict=True)
        et = lower_cpu({"forward": ep}, {})
    ops = instructions(et, "forward")
    assert ops["executorch_call_delegate"] == 1, ops
    assert not [k for k in ops if "view" in k or "squeeze" in k], ops
    method = load(et, "forward")
    for n in (1, 7, 64, 33):
        x = torch.randn(n, 24)
        with torch.no_grad():
            want = m(x)
        torch.testing.assert_close(method.execute((x,))[0], want, rtol=1e-5, atol=1e-6)


class Block(torch.nn.Module):
    """Linears, a matmul with a constant, a softmax, a concat and a dynamic prefill length: the ops whose passes
    the shortcuts keep or skip."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(16, 32)
        self.b = torch.nn.Linear(32, 16)
        self.register_buffer("ones", torch.ones(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        w = torch.softmax(h, dim=-1)
        s = torch.mm(h * w, self.ones)  # [T, 1]
        return torch.cat([self.b(h) * s, x], dim=-1)


def programs(m: torch.nn.Module) -> dict:
    T = torch.export.Dim("T", min=1, max=64)
    with torch.no_grad():
        return {"prefill": torch.export.export(m, (torch.randn(3, 16),), dynamic_shapes=({0: T},), strict=True),
                "decode": torch.export.export(m, (torch.randn(1, 16),), strict=True)}


@contextlib.contextmanager
def without(*names: str):
    """lower_cpu with some shortcuts off: `edge` the full decomposition path, `skips` every XNNPACK pass,
    `provenance` the provenance records kept."""
    from torch.fx.passes.infra.pass_base import PassResult

    saved = xnnpack._partitioner_keeps_all, lower.xnnpack_passes_that_apply, lower.drop_provenance
    if "edge" in names:
        xnnpack._partitioner_keeps_all = lambda ep, partitioner: False
    if "skips" in names:
        lower.xnnpack_passes_that_apply = contextlib.nullcontext
    if "provenance" in names:
        lower.drop_provenance = lambda gm: PassResult(gm, False)
    try:
        yield
    finally:
        xnnpack._partitioner_keeps_all, lower.xnnpack_passes_that_apply, lower.drop_provenance = saved


@pytest.mark.slow
def test_edge_and_pass_shortcuts_write_the_same_bytes():
    torch.manual_seed(0)
    m = Block().eval()
    fast = lower_cpu(programs(m), {}).buffer
    with without("edge", "skips"):
        full = lower_cpu(programs(m), {}).buffer
    assert fast == full


@pytest.mark.slow
def test_dropped_provenance_keeps_the_program():
    """Only the debug-handle numbering may change: the same instructions, outputs equal bit for bit."""
    torch.manual_seed(0)
    m = Block().eval()
    fast = lower_cpu(programs(m), {})
    with without("provenance"):
        kept = lower_cpu(programs(m), {})
    for method in ("prefill", "decode"):
        assert instructions(fast, method) == instructions(kept, method)
    runs = [(load(fast, "prefill"), load(kept, "prefill")), (load(fast, "decode"), load(kept, "decode"))]
    for (a, b), n in zip(runs, (7, 1)):
        x = torch.randn(n, 16)
        assert torch.equal(a.execute((x,))[0], b.execute((x,))[0])


class ComputedWeight(torch.nn.Module):
    """A linear whose weight the program computes (as a dequantisation does): XNNPACK's linear takes static
    weights only, so the partitioner's check rejects it and it must be decomposed."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.w * 0.5)


@pytest.mark.slow
def test_a_rejected_linear_takes_the_full_path(caplog):
    m = ComputedWeight()
    with torch.no_grad():
        ep = torch.export.export(m, (torch.randn(2, 16),), strict=True)
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    assert not xnnpack._partitioner_keeps_all(ep, XnnpackPartitioner(configs=ALL_PARTITIONER_CONFIGS))
    with caplog.at_level(logging.WARNING):
        et = lower_cpu({"forward": ep}, {})
    assert "DEPRECATION" not in caplog.text
    x = torch.randn(2, 16)
    with torch.no_grad():
        want = m(x)
    torch.testing.assert_close(load(et, "forward").execute((x,))[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_the_shortcut_path_logs_no_deprecation(caplog):
    with caplog.at_level(logging.WARNING):
        lower_cpu(programs(Block().eval()), {})
    assert "DEPRECATION" not in caplog.text
