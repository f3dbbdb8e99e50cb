"""Prefill MoE configurations on the H100 (graphed, L2 flushed, medians): the router kernel alone by top-k
method at T = 8192, then moe_prefill per PrefillConfig at T = 512 / 2048 / 8192 with the per-kernel split of
the best at 8192."""

from __future__ import annotations

import sys
from dataclasses import replace

import torch

sys.path.insert(0, "scripts")
import bench_gdn  # noqa: E402
import bench_moe as bm  # noqa: E402
from gdn.kernels.moe.launch import next_pow2  # noqa: E402
from gdn.kernels.moe.prefill import PrefillConfig, moe_prefill  # noqa: E402
from gdn.kernels.moe.route import PICKS, route_kernel  # noqa: E402

BASE = PrefillConfig()
CONFIGS = {
    "default": BASE,
    "blocks first (the order before session 9)": replace(BASE, n_first=False),
    "router argmax": replace(BASE, pick="argmax"),
    "down 4 warps": replace(BASE, down_warps=4),
    "bn 128, down 256 x 8 warps": replace(BASE, block_n=128, down_block_n=256),
}


def main() -> None:
    bm.FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    torch.manual_seed(0)
    gate_up, down, _, _ = bm.weights()
    mm = bm.matmul_rate()
    print(f"matmul {mm / 1e12:.0f} TFLOP/s")
    T = 8192
    logits = torch.randn(T, bm.E, device="cuda", dtype=bm.DT)
    ids = torch.empty(T, bm.K, dtype=torch.int32, device="cuda")
    wts = torch.empty(T, bm.K, dtype=torch.float32, device="cuda")
    for pick in ("argmax", "packed"):
        for warps in (4,):
            fn = lambda pick=pick, warps=warps: torch.library.wrap_triton(route_kernel)[(T,)](
                logits, logits.stride(0), logits.stride(1), ids, wts, E=bm.E, E_P2=next_pow2(bm.E), TOP_K=bm.K,
                K_P2=bm.K, RENORM=True, PICK=PICKS.index(pick), num_warps=warps)
            print(f"route_kernel T {T} {pick} w{warps}: {bm.timed(fn, eager=False).graph_us:.1f} us")
    best, best_ms = None, 1e9
    for T in (8192, 2048, 512):
        x = torch.randn(T, bm.H, device="cuda", dtype=bm.DT)
        logits = torch.randn(T, bm.E, device="cuda", dtype=bm.DT)
        flops = 6 * T * bm.K * bm.H * bm.I
        for name, cfg in CONFIGS.items():
            if T != 8192 and cfg not in (BASE, best):
                continue
            try:
                ms = bm.timed(lambda cfg=cfg: moe_prefill(x, logits, gate_up, down, bm.K, True, cfg=cfg), 10,
                              eager=False).graph_us / 1e3
            except Exception as e:  # noqa: BLE001  (a config that does not compile: say so, go on)
                print(f"T {T} {name}: failed {repr(e)[:200]}")
                continue
            print(f"T {T} {name}: {ms:.3f} ms, {flops / ms / 1e9:.0f} TFLOP/s, {100 * flops / ms / 1e-3 / mm:.0f}% of matmul")
            if T == 8192 and ms < best_ms:
                best, best_ms = cfg, ms
        if T == 8192:
            print(f"best {best}")
            print("split:", bench_gdn.kernel_split(lambda: moe_prefill(x, logits, gate_up, down, bm.K, True, cfg=best)))


if __name__ == "__main__":
    main()
