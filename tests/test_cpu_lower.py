"""The CPU graph passes (export/cpu_passes.py) on a small program lowered by lower_cpu and run in the ExecuTorch runtime:
static unsqueeze / squeeze / size-1 selects become views, a fused projection's split becomes slices, the mean over
the last dim becomes XNNPACK's 4-D mean; none of them is left to a portable kernel, and the outputs equal the eager
module's (fresh random inputs, odd sizes). The runtime's llama ops run from an artifact built by lower_cpu."""

from __future__ import annotations

import collections

import pytest
import torch

from gdn.export.lower import lower_cpu


class Mixed(torch.nn.Module):
    """x [T, 37] -> the ops the passes rewrite, around linears XNNPACK runs."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(37, 3 + 5 + 11)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.proj(x).split([3, 5, 11], dim=-1)
        norm = c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + 1e-6)  # [T, 11]
        gate = torch.sigmoid(a).unsqueeze(0)[0].sum(-1, keepdim=True)  # [T, 1]
        return torch.cat([norm * gate, b.unsqueeze(1).squeeze(1)], dim=-1)


def instructions(et, method: str) -> collections.Counter:
    gm = et.exported_program(method).graph_module
    return collections.Counter(getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes
                               if n.op == "call_function")


@pytest.mark.slow
def test_passes_leave_no_portable_reshape_split_or_mean():
    from executorch.runtime import Runtime, Verification

    torch.manual_seed(0)
    m = Mixed().eval()
    x = torch.randn(7, 37)
    with torch.no_grad():
        et = lower_cpu({"forward": torch.export.export(m, (x,), strict=True)}, {})
    ops = instructions(et, "forward")
    left = [k for k in ops if any(w in k for w in ("unsqueeze_copy", "squeeze_copy", "split_with_sizes", "mean"))]
    assert not left, f"left to portable kernels: {left}"
    method = Runtime.get().load_program(et.buffer, verification=Verification.Minimal).load_method("forward")
    for _ in range(3):
        x = torch.randn(7, 37)
        with torch.no_grad():
            want = m(x)
        torch.testing.assert_close(method.execute((x,))[0], want, rtol=1e-5, atol=1e-6)


class Attend(torch.nn.Module):
    """cpu.py's attention on float32 caches of the model's layout, as the artifact's two methods call it."""

    def __init__(self, Hkv: int, S: int, D: int, decode: bool):
        super().__init__()
        from gdn.kernels.attention import cpu

        self.fn = cpu.decode_attention if decode else cpu.prefill_attention
        shape = cpu.cache_shape(Hkv, S, D, torch.float32)
        self.register_buffer("k_cache", torch.zeros(shape))
        self.register_buffer("v_cache", torch.zeros(shape))

    def forward(self, q, k, v, input_pos):
        return self.fn(q, k, v, self.k_cache, self.v_cache, input_pos)


@pytest.mark.slow
def test_llama_ops_run_in_the_runtime_like_eager():
    """Prefill chunks (one with pads past the cache's end), then decode steps and a decode pad: the runtime's
    outputs against the eager module's, which runs the same kernels through torch."""
    from executorch.runtime import Runtime, Verification

    from gdn.runner.methods import load_llm_ops

    H, Hkv, S, D = 4, 2, 40, 16
    T = torch.export.Dim("T", min=1, max=16)
    ex = (torch.randn(2, H, D), torch.randn(2, Hkv, D), torch.randn(2, Hkv, D), torch.arange(2))
    one = tuple(t[:1] for t in ex)
    with torch.no_grad():
        progs = {"prefill": torch.export.export(Attend(Hkv, S, D, False), ex, dynamic_shapes=({0: T},) * 4,
                                                strict=True),
                 "decode": torch.export.export(Attend(Hkv, S, D, True), one, strict=True)}
    et = lower_cpu(progs, {})
    load_llm_ops()
    program = Runtime.get().load_program(et.buffer, verification=Verification.Minimal)
    ours = {m: program.load_method(m) for m in ("prefill", "decode")}
    eager = Attend(Hkv, S, D, False)  # one pair of caches for both calls, as the artifact shares them
    calls = [(13, 0, 13), (16, 13, 16), (16, 29, 5), (1, 34, 1), (1, -1, 0), (1, 35, 1)]  # (T, first pos, real)
    for n, p0, real in calls:
        pos = torch.cat([torch.arange(p0, p0 + real), torch.full((n - real,), -1)]) if p0 >= 0 else torch.tensor([-1])
        args = (torch.randn(n, H, D), torch.randn(n, Hkv, D), torch.randn(n, Hkv, D), pos)
        fn = eager.fn if n > 1 else Attend(Hkv, S, D, True).fn
        with torch.no_grad():
            want = fn(*args[:3], eager.k_cache, eager.v_cache, pos)
        got = ours["prefill" if n > 1 else "decode"].execute(args)[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
