"""Block sweep of the one-token projection kernels (gdn::gemv / gdn::norm_gemv) at the 2B decode shapes: for each
site, every (rows per program, columns per step, warps, stages, form) candidate, alone (stream order), graphed
over weight copies past L2, us per call and % of copy bandwidth. The shipped config (`default_config`, gemv's `gemv_config`) is marked.

    python scripts/tools/sweep_gemv.py [--only SUBSTRING] [--top 8]
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for timing and bench_gemv

import bench_gemv  # noqa: E402
import timing  # noqa: E402
from gdn.kernels.gemv import triton_gemv, triton_norm_gemv  # noqa: E402
from gdn.kernels.launch import launcher  # noqa: E402


def candidates(K: int) -> list[tuple[int, int, int, int, bool]]:
    """(BN, BK, warps, stages, pdl-form) tuples; the PDL form takes all K in one step."""
    loop = [(bn, bk, w, s, False) for bn, bk, w, s in itertools.product((2, 4, 8), (1024, 2048), (4, 8), (1, 3))
            if bk <= K]
    whole = [(bn, triton.next_power_of_2(K), w, 1, True) for bn, w in itertools.product((1, 2, 4), (4, 8))
             if bn * K <= 16384]
    return loop + whole


def launch(site: bench_gemv.Site, t: dict, bn: int, bk: int, warps: int, stages: int, pdl: bool) -> None:
    N, K = site.N, site.K
    common = {"num_warps": warps, "num_stages": stages, "PDL": pdl, "GDC": False}
    if site.form == "norm":
        programs = triton.cdiv(N, bn)
        cut = triton.cdiv(K, programs)
        launcher(triton_norm_gemv._norm_gemv_kernel)[(programs,)](
            t["x"], t["d"], t["g"], t["w"], t["y"], t["r"], t["n"], t["w"].stride(0), N=N, K=K,
            EPS=bench_gemv.EPS, HAS_DELTA=True, BN=bn, BK=bk, SLICE=cut,
            SLICE_P2=max(16, triton.next_power_of_2(cut)), **common)
    else:
        launcher(triton_gemv._gemv_kernel)[(triton.cdiv(N, bn),)](
            t["x"], t["w"], t["y"], t["w"].stride(0), N=N, K=K, SILU_MUL=site.form == "silu_mul", BN=bn, BK=bk,
            **common)


def sweep(site: bench_gemv.Site, iters: int) -> list[tuple[float, tuple]]:
    count = max(2, math.ceil(bench_gemv.ROTATE_BYTES / (site.N * site.K * 2)))
    copies = [bench_gemv.inputs(site) for _ in range(count)]
    for c in copies:
        c["y"] = c["x"].new_empty((1, site.N))
        c["r"], c["n"] = c["x"].new_empty((1, site.K)), c["x"].new_empty((1, site.K))
    out = []
    for cand in candidates(site.K):
        try:
            launch(site, copies[0], *cand)
            us = timing.median_us(timing.graphed(lambda i: launch(site, copies[i], *cand), count),
                                  iters=iters) / count
        except Exception as e:  # a config that does not compile (registers, shared memory)
            print(f"  skip {cand}: {type(e).__name__}", file=sys.stderr)
            continue
        out.append((us, cand))
    copies.clear()
    torch.cuda.empty_cache()
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="2B", help="sites whose name contains this")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    copy = timing.copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}; copy {copy / 1e9:.0f} GB/s; (BN, BK, warps, stages, one-step form)")
    for site in bench_gemv.SITES:
        if args.only not in site.name:
            continue
        d = triton_gemv.default_config(site.K) if site.form == "norm" else triton_gemv.gemv_config(site.N, site.K)
        shipped = (d.block_n, triton.next_power_of_2(site.K) if d.pdl == "on" else d.block_k, d.warps, 3,
                   d.pdl == "on")
        results = sweep(site, args.iters)
        print(f"\n{site.name} {site.N} x {site.K} ({site.form}):")
        for us, cand in results[: args.top] + [r for r in results if r[1][:3] == shipped[:3] and r[1][4] ==
                                                shipped[4]]:
            pct = 100 * site.N * site.K * 2 / (us * 1e-6) / copy
            print(f"  {us:8.2f} us  {pct:5.1f} %  {cand}{'  <- shipped form' if cand[:3] == shipped[:3] else ''}",
                  flush=True)


if __name__ == "__main__":
    main()
