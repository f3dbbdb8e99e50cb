"""The decode MoE layer as an artifact runs it: gdn::gemv (the router/shared projection) then gdn::moe_shared,
CHAIN layers with their own weights at Qwen3.5-35B-A3B shapes, bf16, exported at T = 1 and compiled by
AOTInductor the way the ExecuTorch CUDA backend compiles a method (tests/aoti_util.compile_and_load, which
applies gdn.export.aoti_pdl). Once with the ops' decode kernels in their PDL form (launched with PDL), once
plain. Per variant: the PDL launch sites in the generated C++, the compiled chain against eager (the same
kernels launched by Triton) over fresh inputs, and its time replayed from a CUDA graph (L2 flushed by a read, medians), per layer and as a
share of the copy bandwidth over the layer's bytes.

    python scripts/device/moe_aoti_probe.py
"""

from __future__ import annotations

import sys
import torch

sys.path.insert(0, "scripts")
sys.path.insert(0, "tests")
import bench_moe as bm  # noqa: E402
from aoti_util import compile_and_load  # noqa: E402
from gdn.kernels.moe import op  # noqa: E402
from gdn.kernels.moe.decode import DecodeConfig  # noqa: E402

CHAIN = 4


class Chain(torch.nn.Module):
    def __init__(self, sets):
        super().__init__()
        self.sets = torch.nn.ParameterList([torch.nn.Parameter(t, requires_grad=False) for s in sets for t in s])

    def layers(self):
        p = list(self.sets)
        return [p[i : i + 4] for i in range(0, len(p), 4)]

    def forward(self, x):
        for gate_up, down, w_rs, shared_down in self.layers():
            x = torch.ops.gdn.moe_shared(x, torch.ops.gdn.gemv(x, w_rs, "none"), gate_up, down, shared_down, bm.K, True)
        return x


def graphed_us(fn) -> float:
    return bm.timed(fn, eager=False).graph_us


def main() -> None:
    bm.FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    print(torch.cuda.get_device_name(0), flush=True)
    bw = bm.copy_bandwidth()
    nbytes = bm.layer_bytes()[0]
    pct = lambda us: 100 * nbytes / us / 1e3 / (bw / 1e9)
    print(f"copy {bw / 1e9:.0f} GB/s; layer bytes {nbytes / 1e6:.1f} MB", flush=True)
    chain = Chain([bm.weights() for _ in range(CHAIN)]).eval()
    x = torch.randn(1, bm.H, device="cuda", dtype=bm.DT)
    xs = torch.randn(1, bm.H, device="cuda", dtype=bm.DT)
    outs = {}
    for name, cfg in (("plain", DecodeConfig()), ("pdl", DecodeConfig(pdl="on"))):
        op.ARTIFACT_DECODE = cfg
        with torch.no_grad():
            ep = torch.export.export(chain, (x,), strict=True)
            compiled, src = compile_and_load(ep)
            launches = src.count("launchKernelPdl(") - src.count("void launchKernelPdl(")
            worst = 0.0
            for _ in range(10):
                xi = torch.randn(1, bm.H, device="cuda", dtype=bm.DT)
                got, eager = compiled(xi), chain(xi)
                worst = max(worst, ((got - eager).abs().max() / eager.abs().max()).item())
            outs[name] = compiled(xs).clone()
            us = graphed_us(lambda: compiled(x)) / CHAIN
        print(f"{name}: {launches} PDL launch sites; compiled vs eager {worst:.2e} "
              f"(max diff / max |out|, 10 inputs); {CHAIN} layers in one graph: {us:.2f} us per layer "
              f"({pct(us):.1f}% of copy)", flush=True)
    print("pdl vs plain, one input, bit-equal:", torch.equal(outs["pdl"], outs["plain"]))


if __name__ == "__main__":
    main()
