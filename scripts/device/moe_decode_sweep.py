"""Decode MoE designs on the H100 (graphed, L2 flushed, medians, scripts/bench_moe.py's timing): the router
kernel alone by top-k method and warps, then whole routed ops and layers (shared expert fused) per design."""

from __future__ import annotations

import sys
from dataclasses import replace

import torch

sys.path.insert(0, "scripts")
import bench_moe as bm  # noqa: E402
from gdn.kernels.moe.decode import DecodeConfig, decode_route  # noqa: E402

BASE = DecodeConfig()
DESIGNS = {
    "default": BASE,
    "router packed w1": replace(BASE, pick="packed"),
    "router rank w2": replace(BASE, pick="rank", warps_router=2),
    "router rank w4": replace(BASE, pick="rank", warps_router=4),
    "router rank w8": replace(BASE, pick="rank", warps_router=8),
    "inline rank": replace(BASE, router="inline", pick="rank"),
    "inline packed": replace(BASE, router="inline", pick="packed"),
    "rank w4 + shared same step": replace(BASE, pick="rank", warps_router=4, shared_same_step=True),
    "rank w4 + unrolled k1 2x512 w4": replace(BASE, pick="rank", warps_router=4, gate_up="unrolled", block_i=2,
                                              block_h=512, warps_gate_up=4),
    "rank w4 + unrolled k1 2x1024 w4": replace(BASE, pick="rank", warps_router=4, gate_up="unrolled", block_i=2,
                                               block_h=1024, warps_gate_up=4),
    "inline rank + unrolled k1 4x512 w8": replace(BASE, router="inline", pick="rank", gate_up="unrolled",
                                                  block_i=4, block_h=512, warps_gate_up=8),
}


def main() -> None:
    bm.FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    torch.manual_seed(0)
    w = bm.weights()
    d = bm.Decode(w)
    ids = torch.empty(bm.K, dtype=torch.int32, device="cuda")
    wts = torch.empty(bm.K, dtype=torch.float32, device="cuda")
    for pick, warps in [("argmax", 1), ("packed", 1), ("rank", 1), ("rank", 2), ("rank", 4), ("rank", 8)]:
        cfg = replace(BASE, pick=pick, warps_router=warps)
        t = bm.timed(lambda cfg=cfg: decode_route(d.logits, ids, wts, bm.K, True, cfg), eager=False).graph_us
        print(f"router kernel alone, {pick} w{warps}: {t:.2f} us")
    expert = 3 * bm.I * bm.H * 2
    routed, layer = bm.K * expert, bm.K * expert + 3 * bm.S * bm.H * 2 + (bm.E + 1) * bm.H * 2
    bw = bm.copy_bandwidth()
    print(f"copy {bw / 1e9:.0f} GB/s")
    for name, cfg in DESIGNS.items():
        r = bm.timed(d.routed(cfg), eager=False).graph_us
        lay = bm.timed(d.layer(cfg), eager=False).graph_us
        k1 = bm.timed(d.kernel1(cfg), eager=False).graph_us
        k2 = bm.timed(d.kernel2(cfg, True), eager=False).graph_us
        print(f"{name}: routed {r:.2f} us ({100 * routed / r / 1e3 / (bw / 1e9):.0f}% copy), layer {lay:.2f} us "
              f"({100 * layer / lay / 1e3 / (bw / 1e9):.0f}%), k1(+router) {k1:.2f}, k2(+shared) {k2:.2f}")


if __name__ == "__main__":
    main()
