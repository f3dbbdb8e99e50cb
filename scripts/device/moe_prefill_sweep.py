"""Prefill MoE configurations on the H100 (graphed, L2 flushed, medians): the router kernel alone by top-k
method at T = 8192, then moe_prefill per PrefillConfig at T = 512 / 2048 / 8192: the op's config against full
(BLOCK_M-padded) blocks and against the "topk" router at every T, the other configs at T = 8192 only; per T the
GEMM rows that are padding by grouping, each config's output against the default's; at 8192 the per-kernel
split of the default, the full blocks and the best config, and torch._grouped_mm (CUTLASS) on the same two
GEMMs as a peer.

    python scripts/device/moe_prefill_sweep.py [--T 8192 2048 512] [--configs NAME ...] [--iters 10] [--list]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch

sys.path.insert(0, "scripts")
import bench_gdn  # noqa: E402
import bench_moe as bm  # noqa: E402
from gdn.kernels.moe import reference  # noqa: E402
from gdn.kernels.moe.launch import next_pow2  # noqa: E402
from gdn.kernels.moe.op import ARTIFACT_PREFILL  # noqa: E402
from gdn.kernels.moe.prefill import group_by_expert, moe_prefill  # noqa: E402
from gdn.kernels.moe.route import PICKS, route_kernel  # noqa: E402

BASE = ARTIFACT_PREFILL
COMPARED = {  # timed at every T
    "default (the op's, half tail)": BASE,
    "full blocks": replace(BASE, half_tail=False),
    "router topk": replace(BASE, pick="topk"),
}
CONFIGS = {
    **COMPARED,
    "blocks first (the order before session 9)": replace(BASE, n_first=False),
    "router argmax": replace(BASE, pick="argmax"),
    "down 4 warps": replace(BASE, down_warps=4),
    # 128 x 2*128 gate/up and 128 x 256 down tiles: 16 warps hold them in ~100 registers, one program per SM
    # (8 warps needed 255: scripts/sass_moe_prefill.py); 1.278 against 1.214 ms in session 18
    "wide x 16 warps": replace(BASE, block_n=128, warps=16, down_block_n=256, down_warps=16),
}


def padding(logits: torch.Tensor, half_tail: bool) -> str:
    """GEMM rows of the grouping (a half block counts BLOCK_M // 2) and the share of them that is padding."""
    _, ids = reference.route(logits, bm.K, True)
    _, block_expert, _, block_half = group_by_expert(ids.int(), bm.E, BASE.block_m, half_tail)
    rows = torch.where(block_half == 1, BASE.block_m // 2, BASE.block_m)[block_expert < bm.E].sum().item()
    return f"{rows} rows, {100 * (1 - ids.numel() / rows):.1f}% padding, {(block_half == 1).sum().item()} half blocks"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split(":")[0])
    p.add_argument("--T", type=int, nargs="+", default=[8192, 2048, 512], help="token counts, 8192 first for the best")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), metavar="NAME",
                   help=f"configs to time (default all): {', '.join(map(repr, CONFIGS))}")
    p.add_argument("--iters", type=int, default=10, help="timed replays per config")
    p.add_argument("--list", action="store_true", help="print the configs and exit")
    args = p.parse_args()
    if args.list:
        for name, cfg in CONFIGS.items():
            print(f"{name}{' (every T)' if name in COMPARED else ''}: {cfg}")
        return 0
    configs = {name: CONFIGS[name] for name in args.configs}
    bm.FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    torch.manual_seed(0)
    gate_up, down, _, _ = bm.weights()
    mm = bm.matmul_rate()
    print(f"matmul {mm / 1e12:.0f} TFLOP/s")
    T = 8192
    logits = torch.randn(T, bm.E, device="cuda", dtype=bm.DT)
    ids = torch.empty(T, bm.K, dtype=torch.int32, device="cuda")
    wts = torch.empty(T, bm.K, dtype=torch.float32, device="cuda")
    for pick in PICKS:
        for warps in (4,):
            fn = lambda pick=pick, warps=warps: torch.library.wrap_triton(route_kernel)[(T,)](
                logits, logits.stride(0), logits.stride(1), ids, wts, E=bm.E, E_P2=next_pow2(bm.E), TOP_K=bm.K,
                K_P2=bm.K, RENORM=True, PICK=PICKS.index(pick), num_warps=warps)
            print(f"route_kernel T {T} {pick} w{warps}: {bm.timed(fn, eager=False).graph_us:.1f} us")
    best, best_ms = None, 1e9
    for T in args.T:
        x = torch.randn(T, bm.H, device="cuda", dtype=bm.DT)
        logits = torch.randn(T, bm.E, device="cuda", dtype=bm.DT)
        flops = 6 * T * bm.K * bm.H * bm.I
        print(f"T {T} GEMM rows: BLOCK_M-padded {padding(logits, False)}; half tail {padding(logits, True)}")
        want = moe_prefill(x, logits, gate_up, down, bm.K, True, cfg=BASE).double()
        for name, cfg in configs.items():
            if T != 8192 and name not in COMPARED and cfg != best:
                continue
            try:
                diff = (moe_prefill(x, logits, gate_up, down, bm.K, True, cfg=cfg).double() - want).abs().max().item()
                ms = bm.timed(lambda cfg=cfg: moe_prefill(x, logits, gate_up, down, bm.K, True, cfg=cfg), args.iters,
                              eager=False).graph_us / 1e3
            except Exception as e:  # noqa: BLE001  (a config that does not compile: say so, go on)
                print(f"T {T} {name}: failed {repr(e)[:200]}")
                continue
            print(f"T {T} {name}: {ms:.3f} ms, {flops / ms / 1e9:.0f} TFLOP/s, {100 * flops / ms / 1e-3 / mm:.0f}% of "
                  f"matmul; max |out - default's| {diff / want.abs().max().item():.1e} of max |out|")
            if T == 8192 and ms < best_ms:
                best, best_ms = cfg, ms
        if T == 8192:
            try:
                t1, t2 = bm.grouped_mm_ms(x, logits, gate_up, down, args.iters)
                print(f"T {T} peer torch._grouped_mm (sorted, unpadded): gate/up {t1:.3f} ms, down {t2:.3f} ms, "
                      f"both {t1 + t2:.3f} ms")
            except Exception as e:  # noqa: BLE001
                print(f"T {T} peer torch._grouped_mm: failed {repr(e)[:200]}")
            print(f"best {best}")
            for name, cfg in {"default": BASE, "full blocks": COMPARED["full blocks"], "best": best}.items():
                if cfg is not None and (name != "best" or best not in (BASE, COMPARED["full blocks"])):
                    print(f"split, {name}:", bench_gdn.kernel_split(
                        lambda cfg=cfg: moe_prefill(x, logits, gate_up, down, bm.K, True, cfg=cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
