"""The decode MoE layer as an artifact runs it, CHAIN layers with their own weights at Qwen3.5-35B-A3B shapes,
bf16, exported at T = 1 and compiled by AOTInductor the way the ExecuTorch CUDA backend compiles a method
(tests/aoti_util.compile_and_load, which applies gdn.export.aoti_pdl). Two chains: "gemv", the router/shared
projection (gdn::gemv) then gdn::moe_shared, each layer's output the next one's input; "norm_gemv", the model's
layer since session 17: the residual add, the RMS norm and the projection in one gdn::norm_gemv, then
gdn::moe_shared, whose output the next layer adds. Each once with the ops' kernels in their PDL form (launched
with PDL), once plain. The PDL and plain projections sum in another order (one step over K against 1024-column steps), so the
variants are not compared with each other. Per variant: the PDL launch sites in the generated C++, the compiled chain against eager
(the same kernels launched by Triton) over fresh inputs, and its time replayed from a CUDA graph (L2 flushed by
a read, medians), per layer and as a share of the copy bandwidth over the layer's bytes.

    python scripts/device/moe_aoti_probe.py
"""

from __future__ import annotations

import sys
import torch

sys.path.insert(0, "scripts")
sys.path.insert(0, "tests")
import bench_moe as bm  # noqa: E402
from aoti_util import compile_and_load, pdl_launch_sites  # noqa: E402
from gdn.kernels.gemv import op as gemv_op  # noqa: E402
from gdn.kernels.moe import op  # noqa: E402
from gdn.kernels.moe.decode import DecodeConfig  # noqa: E402

CHAIN = 4


class Chain(torch.nn.Module):
    def __init__(self, sets, gains, norm: bool):
        super().__init__()
        self.norm = norm
        self.sets = torch.nn.ParameterList([torch.nn.Parameter(t, requires_grad=False) for s in sets for t in s])
        self.gains = torch.nn.ParameterList([torch.nn.Parameter(g, requires_grad=False) for g in gains])

    def layers(self):
        p = list(self.sets)
        return [p[i : i + 4] for i in range(0, len(p), 4)]

    def forward(self, x):
        delta = None
        for (gate_up, down, w_rs, shared_down), g in zip(self.layers(), self.gains):
            if self.norm:
                y, x, n = torch.ops.gdn.norm_gemv(x, delta, g, 1e-6, w_rs)
                delta = torch.ops.gdn.moe_shared(n, y, gate_up, down, shared_down, bm.K, True)
            else:
                x = torch.ops.gdn.moe_shared(x, torch.ops.gdn.gemv(x, w_rs, "none"), gate_up, down, shared_down, bm.K,
                                             True)
        # the norm chain's output is the stream and the pending sublayer output, which the next layer's norm_gemv
        # (or lm_head's) adds: no add kernel of its own
        return (x,) if delta is None else (x, delta)


def graphed_us(fn) -> float:
    return bm.timed(fn, eager=False).graph_us


def main() -> None:
    bm.FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    print(torch.cuda.get_device_name(0), flush=True)
    bw = bm.copy_bandwidth()
    nbytes = bm.layer_bytes()[0]
    pct = lambda us: 100 * nbytes / us / 1e3 / (bw / 1e9)
    print(f"copy {bw / 1e9:.0f} GB/s; layer bytes {nbytes / 1e6:.1f} MB", flush=True)
    sets = [bm.weights() for _ in range(CHAIN)]
    # the post-attention norm's gain per layer (zero-centred: the norm scales by 1 + g)
    gains = [0.1 * torch.randn(bm.H, device="cuda", dtype=bm.DT) for _ in range(CHAIN)]
    x = torch.randn(1, bm.H, device="cuda", dtype=bm.DT)
    for chain_name, pdl in (("gemv", "off"), ("gemv", "on"), ("norm_gemv", "off"), ("norm_gemv", "on")):
        name = f"{chain_name}, {'pdl' if pdl == 'on' else 'plain'}"
        chain = Chain(sets, gains, norm=chain_name == "norm_gemv").eval()
        op.ARTIFACT_DECODE, gemv_op.ARTIFACT_PDL = DecodeConfig(pdl=pdl), pdl
        with torch.no_grad():
            ep = torch.export.export(chain, (x,), strict=True)
            compiled, src = compile_and_load(ep)
            launches = pdl_launch_sites(src)
            worst = 0.0
            for _ in range(10):
                xi = torch.randn(1, bm.H, device="cuda", dtype=bm.DT)
                for got, eager in zip(compiled(xi), chain(xi)):
                    worst = max(worst, ((got - eager).abs().max() / eager.abs().max()).item())
            us = graphed_us(lambda: compiled(x)) / CHAIN
        print(f"{name}: {launches} PDL launch sites; compiled vs eager {worst:.2e} "
              f"(max diff / max |out|, 10 inputs); {CHAIN} layers in one graph: {us:.2f} us per layer "
              f"({pct(us):.1f}% of copy)", flush=True)


if __name__ == "__main__":
    main()
