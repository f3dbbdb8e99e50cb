"""Decode MoE designs on the H100 (graphed, L2 flushed, medians, scripts/bench_moe.py's timing): the router
kernel alone by top-k method and warps, then whole routed ops and layers (shared expert fused) per design.
(Session 9 also timed a rank-based top-k and the shared expert's rows loaded with the routed ones here; both
lost and were removed: kernels/moe/NOTES.md.)"""

from __future__ import annotations

import sys
from dataclasses import replace

import torch

sys.path.insert(0, "scripts")
import bench_moe as bm  # noqa: E402
from gdn.kernels.moe.decode import RUN4, DecodeConfig, decode_route  # noqa: E402

BASE = DecodeConfig()
DESIGNS = {
    "default": BASE,
    "run 4 default (tile kernel 1, 4 x 2048)": RUN4,
    "unrolled k1 2x1024 w4": replace(BASE, block_h=1024, warps_gate_up=4),
    "unrolled k1 4x1024 w8": replace(BASE, block_i=4, block_h=1024),
    "default, router packed": replace(BASE, pick="packed"),
}


def main() -> None:
    bm.FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    torch.manual_seed(0)
    w = bm.weights()
    d = bm.Decode(w)
    ids = torch.empty(bm.K, dtype=torch.int32, device="cuda")
    wts = torch.empty(bm.K, dtype=torch.float32, device="cuda")
    for pick, warps in [("argmax", 1), ("packed", 1), ("argmax", 4), ("packed", 4)]:
        cfg = replace(BASE, pick=pick, warps_router=warps)
        t = bm.timed(lambda cfg=cfg: decode_route(d.logits, ids, wts, bm.K, True, cfg), eager=False).graph_us
        print(f"router kernel alone, {pick} w{warps}: {t:.2f} us")
    layer, routed = bm.layer_bytes()[:2]
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
