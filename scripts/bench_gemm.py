"""Kernel benchmark of the prefill projections (gdn::gemm, gdn::norm_gemm) on one CUDA GPU, at every prefill
projection shape of Qwen3.5-2B and Qwen3.5-35B-A3B (bench_gemv's SITES without lm_head, whose prefill row is one
norm_gemv), bf16, M = 16, 128, 1024 and 4096 rows.

Per (site, M), all in the same run:
- "gemm": our GEMM kernel in its shipped config (`triton_gemm.config`) on the site's GEMM input (for norm sites
  the normed n): us, TFLOP/s, % of cuBLAS's time, weight GB/s and % of copy bandwidth;
- "op": the whole op as the model would call it (norm sites: gdn::norm_gemm, the norm prologue + the GEMM);
- cuBLAS: `torch.mm(a, w.T)` of the same input;
- with --inductor: Inductor's Triton GEMM template, autotuned (max_autotune, Triton backend only: what
  AOTInductor compiles without our op), on the site's whole computation (norm sites: add + norm + GEMM, which
  Inductor fuses into the template's prologue); slow to compile.
Times: all calls replayed from one CUDA graph over enough weight copies that none is served from L2 (x shared),
median per call (scripts/timing.py). The matmul rate (8192^3 bf16 torch.mm) is printed beside.

With --configs, instead: every candidate part (`tiles.candidates`: the shipped tiles, stream tiles with split-K,
persistent tiles) alone on the site's GEMM input, at M 16 .. 4096 (stream parts up to M 512, persistent ones from
M 128), beside cuBLAS; each result is checked against float64 (a NaN-filled output), and the fastest correct
part per (site, M) is printed at the end, with the shipped configuration's time beside it.

    python scripts/bench_gemm.py [--inductor] [--only SUBSTRING] [--m 16 128 ...] [--out r.json]
    python scripts/bench_gemm.py --configs [--only SUBSTRING] [--m 16 64 ...] [--out sweep.json]
    python scripts/bench_gemm.py --registers [--only SUBSTRING]  # no GPU: every candidate's sm_90 compile
    python scripts/bench_gemm.py --waves      # no GPU: persistent tile counts and waves on 132 SMs
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict
from typing import Callable

import torch

from gdn.kernels.gemm import reference, tiles, triton_gemm, triton_norm  # the package registers torch.ops.gdn.*
from gdn.kernels.gemv.reference import rms_norm

import timing  # scripts/ is on sys.path when run as a script
from bench_gemv import ROTATE_BYTES, SITES, TEMPLATE, Site, per_call_us

DT = torch.bfloat16
EPS = 1e-6
MS = (16, 128, 1024, 4096)
SWEEP_MS = (16, 64, 128, 256, 512, 1024, 4096)
STREAM_MAX_M, PERSISTENT_MIN_M = 512, 128  # the M a sweep times each kind of part at
PREFILL_SITES = [s for s in SITES if not s.name.startswith("lm_head")]


def site_inputs(site: Site, M: int, copies: int) -> list[dict[str, torch.Tensor]]:
    """Per copy: its own weights w [N, K]; shared x (and delta d, gain g) [M, K], and a: the GEMM's input (the
    normed residual for norm sites; for the MLP's down, the activation the model computes before it)."""
    K = site.K
    shared = {"x": torch.randn(M, K, device="cuda", dtype=DT)}
    if site.form == "norm":
        shared["d"] = torch.randn(M, K, device="cuda", dtype=DT)
        shared["g"] = 0.1 * torch.randn(K, device="cuda", dtype=DT)
        shared["a"] = rms_norm(shared["x"] + shared["d"], shared["g"], EPS)
    else:
        shared["a"] = shared["x"]
    return [{**shared, "w": torch.randn(site.N, K, device="cuda", dtype=DT) * K**-0.5} for _ in range(copies)]


def template(site: Site) -> Callable[[dict[str, torch.Tensor]], object]:
    """The site's whole computation for Inductor's GEMM template (compiled and autotuned on first call)."""
    if site.form == "norm":
        fn = lambda t: reference.norm_gemm(t["x"], t["d"], t["g"], EPS, t["w"])  # noqa: E731
    else:
        fn = lambda t: reference.gemm(t["a"], t["w"])  # noqa: E731
    torch._dynamo.reset()
    return torch.compile(fn, options=TEMPLATE, fullgraph=True, dynamic=False)


def contenders(site: Site, with_template: bool) -> dict[str, Callable[[dict[str, torch.Tensor]], object]]:
    """Column -> one call on one copy's tensors."""
    fns = {"gemm": lambda t: triton_gemm.gemm(t["a"], t["w"]), "cublas": lambda t: torch.mm(t["a"], t["w"].T)}
    if site.form == "norm":
        fns["op"] = lambda t: torch.ops.gdn.norm_gemm(t["x"], t["d"], t["g"], EPS, t["w"])
    else:
        fns["op"] = lambda t: torch.ops.gdn.gemm(t["a"], t["w"])
    if with_template:
        fns["inductor"] = template(site)
    return fns


def copies_for(site: Site, M: int) -> list[dict[str, torch.Tensor]]:
    return site_inputs(site, M, max(2, math.ceil(ROTATE_BYTES / (site.N * site.K * DT.itemsize))))


def rel_err(t: dict[str, torch.Tensor], want: torch.Tensor, cfg: tiles.GemmConfig | None = None) -> float:
    """||y - want|| / ||want|| of one call into a NaN-filled y (an unwritten output gives NaN)."""
    y = torch.full(want.shape, float("nan"), device=want.device, dtype=DT)
    triton_gemm.gemm(t["a"], t["w"], cfg, out=y)
    return ((y.double() - want).norm() / want.norm()).item()


def measure(site: Site, M: int, with_template: bool, iters: int) -> dict[str, float]:
    copies = copies_for(site, M)
    err = rel_err(copies[0], copies[0]["a"].double() @ copies[0]["w"].double().T)
    times = {name: per_call_us(fn, copies, iters) for name, fn in contenders(site, with_template).items()}
    del copies
    torch.cuda.empty_cache()
    return {**times, "rel_err": err}


def stats(site: Site, M: int, us: float, cublas_us: float, copy: float) -> dict[str, float]:
    weight_gbs = site.N * site.K * DT.itemsize / (us * 1e-6) / 1e9
    return {"us": us, "tflops": 2 * M * site.N * site.K / (us * 1e-6) / 1e12, "pct_cublas": 100 * cublas_us / us,
            "weight_gbs": weight_gbs, "pct_copy": 100 * weight_gbs * 1e9 / copy}


def row(site: Site, M: int, t: dict[str, float], copy: float) -> str:
    s = stats(site, M, t["gemm"], t["cublas"], copy)
    cb = stats(site, M, t["cublas"], t["cublas"], copy)
    ind = f"{t['inductor']:.2f} ({100 * t['cublas'] / t['inductor']:.0f} %)" if "inductor" in t else "-"
    return (f"| {site.name} | {site.N} x {site.K} | {M} | {s['us']:.2f} | {s['tflops']:.0f} | {s['pct_cublas']:.1f} | "
            f"{s['weight_gbs']:.0f} | {s['pct_copy']:.1f} | {t['op']:.2f} | {t['cublas']:.2f} | {cb['tflops']:.0f} | "
            f"{cb['pct_copy']:.1f} | {ind} | {t['rel_err']:.1e} |")


def run(args: argparse.Namespace) -> dict:
    copy, rate = timing.copy_bandwidth(), timing.matmul_rate()
    print(f"{torch.cuda.get_device_name()}, bf16; copy bandwidth {copy / 1e9:.0f} GB/s (read + write); matmul rate "
          f"{rate / 1e12:.0f} TFLOP/s (8192^3 torch.mm); us per call, graphed, weights rotated past L2\n")
    out = {"device": torch.cuda.get_device_name(), "copy_gbs": copy / 1e9, "matmul_tflops": rate / 1e12}
    if args.configs:
        return {**out, **sweep(args, copy)}
    out["rows"] = []
    print("| site | N x K | M | gemm us | TFLOP/s | % of cuBLAS | weight GB/s | % of copy | op us | cuBLAS us | "
          "cuBLAS TFLOP/s | cuBLAS % of copy | Inductor us (% of cuBLAS) | rel err |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for site in PREFILL_SITES:
        if args.only not in site.name:
            continue
        cfg = triton_gemm.config(site.N, site.K, DT)
        for M in args.m:
            t = measure(site, M, args.inductor, args.iters)
            print(row(site, M, t, copy), flush=True)
            out["rows"].append({"site": site.name, "N": site.N, "K": site.K, "M": M, "times_us": t,
                                "gemm": stats(site, M, t["gemm"], t["cublas"], copy), "config": asdict(cfg)})
    return out


def sweep_parts(site: Site, M: int) -> dict[str, tiles.Part]:
    """The candidates a sweep times at M: stream parts up to STREAM_MAX_M, persistent ones from PERSISTENT_MIN_M."""
    return {name: p for name, p in tiles.candidates(site.N, site.K).items()
            if (M <= STREAM_MAX_M if p.kernel == tiles.STREAM else M >= PERSISTENT_MIN_M)}


def timed(fn: Callable[[dict[str, torch.Tensor]], object], copies: list[dict[str, torch.Tensor]], iters: int,
          check: Callable[[], float]) -> dict[str, object]:
    """{us, rel_err}, or {error} where the part does not compile or launch (one line; the sweep goes on)."""
    try:
        return {"rel_err": check(), "us": per_call_us(fn, copies, iters)}
    except Exception as e:  # noqa: BLE001  (a candidate's resources, e.g. shared memory, are the device's call)
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}


def sweep_one(site: Site, M: int, iters: int) -> dict[str, dict[str, object]]:
    """name -> {us, rel_err} for cuBLAS, the shipped configuration and every candidate part alone at M."""
    copies = copies_for(site, M)
    a, w = copies[0]["a"], copies[0]["w"]
    want = a.double() @ w.double().T
    mm_err = lambda: ((torch.mm(a, w.T).double() - want).norm() / want.norm()).item()  # noqa: E731
    out = {"cublas": timed(lambda t: torch.mm(t["a"], t["w"].T), copies, iters, mm_err),
           "shipped": timed(lambda t: triton_gemm.gemm(t["a"], t["w"]), copies, iters,
                            lambda: rel_err(copies[0], want))}
    for name, part in sweep_parts(site, M).items():
        cfg = tiles.GemmConfig((part,))
        out[name] = timed(lambda t, cfg=cfg: triton_gemm.gemm(t["a"], t["w"], cfg), copies, iters,
                          lambda cfg=cfg: rel_err(copies[0], want, cfg))
    return out


def best_part(results: dict[str, dict[str, object]]) -> str | None:
    """The fastest candidate part whose output is right (bf16 relative error below 1e-2)."""
    ok = {k: r["us"] for k, r in results.items() if k not in ("cublas", "shipped") and "us" in r
          and r["rel_err"] < 1e-2}
    return min(ok, key=ok.get) if ok else None


def sweep_row(site: Site, M: int, name: str, r: dict[str, object], cublas_us: float, copy: float) -> str:
    if "error" in r:
        return f"| {site.name} | {M} | {name} | - | - | - | - | {r['error']} |"
    s = stats(site, M, r["us"], cublas_us, copy)
    flag = "" if r["rel_err"] < 1e-2 else " WRONG"
    return (f"| {site.name} | {M} | {name} | {r['us']:.2f} | {s['pct_cublas']:.1f} | {s['pct_copy']:.1f} | "
            f"{s['tflops']:.0f} | {r['rel_err']:.1e}{flag} |")


def sweep(args: argparse.Namespace, copy: float) -> dict:
    """--configs: every candidate part per (site, M), then the fastest correct one per (site, M)."""
    print("| site | M | part | us | % of cuBLAS | % of copy | TFLOP/s | rel err |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for site in (s for s in PREFILL_SITES if args.only in s.name):
        parts = {name: asdict(p) for name, p in tiles.candidates(site.N, site.K).items()}
        for M in args.m:
            res = sweep_one(site, M, args.iters)
            torch.cuda.empty_cache()  # the sweep's inputs for this M are gone
            for name, r in res.items():
                print(sweep_row(site, M, name, r, res["cublas"]["us"], copy), flush=True)
            rows.append({"site": site.name, "N": site.N, "K": site.K, "M": M, "results": res,
                         "best": best_part(res), "parts": parts})
    print_best(rows, copy)
    return {"rows": rows}


def print_best(rows: list[dict], copy: float) -> None:
    print("\nfastest correct part per (site, M):\n")
    print("| site | N x K | M | best part | us | % of cuBLAS | % of copy | shipped us | cuBLAS us | split |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        site, M, res, best = Site(row["site"], row["N"], row["K"], ""), row["M"], row["results"], row["best"]
        if best is None:
            print(f"| {site.name} | {site.N} x {site.K} | {M} | none correct | | | | | | |")
            continue
        s = stats(site, M, res[best]["us"], res["cublas"]["us"], copy)
        print(f"| {site.name} | {site.N} x {site.K} | {M} | {best} | {res[best]['us']:.2f} | {s['pct_cublas']:.1f} | "
              f"{s['pct_copy']:.1f} | {res['shipped'].get('us', float('nan')):.2f} | {res['cublas']['us']:.2f} | "
              f"{row['parts'][best]['split_k']} |")


def part_resources(part: tiles.Part, N: int, K: int, dtype: str = "bf16") -> str:
    """One part's kernel compiled for sm_90 at [N, K] in dtype: registers, spill stack, shared bytes, and how many of
    its programs an SM holds (65,536 registers, 228 KiB of shared memory, 1 KiB of it reserved per program)."""
    from bench_attention import sm90_resources

    t = part.tiles
    types = {"x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "ws_ptr": "*fp32", "M": "i32"}
    const = {"N": N, "K": K, "UPCAST": False, "BM": t.block_m, "BN": t.block_n, "BK": t.block_k}
    if part.kernel == tiles.PERSISTENT:
        kernel, const = triton_gemm._wide_kernel, {**const, "GROUP_M": part.group_m, "FLATTEN": part.flatten}
    else:
        kernel, const = triton_gemm._stream_kernel, {**const, "SPLIT_K": part.split_k}
    used = sm90_resources(kernel, types, const, t.warps, t.stages)
    found = re.match(r"(\d+) registers, (\d+) B stack, (\d+) B shared", used)
    if not found:
        return used
    regs, stack, shared = (int(g) for g in found.groups())
    per_sm = min(65536 // (-(-regs // 8) * 8 * 32 * t.warps), (228 << 10) // (shared + 1024))
    flags = (" SPILLS" if stack else "") + (" SHARED OVER 227 KiB" if shared > 227 << 10 else "")
    return f"{used}; {per_sm} an SM{flags}"


def registers(only: str) -> None:
    """--registers: every candidate part of each site compiled for sm_90, the split-K sum, fp32, the norm."""
    from bench_attention import sm90_resources

    splits = set()
    for site in (s for s in PREFILL_SITES if only in s.name):
        for name, part in tiles.candidates(site.N, site.K).items():
            print(f"{site.name} {site.N} x {site.K} {name} split {part.split_k}: "
                  f"{part_resources(part, site.N, site.K)}", flush=True)
            splits.add((site.N, part.split_k))
    for part in tiles.FP32.parts:
        print(f"fp32 2048 x 2048 {part.kernel} {part.tiles}: {part_resources(part, 2048, 2048, 'fp32')}", flush=True)
    red = {"ws_ptr": "*fp32", "y_ptr": "*bf16", "M": "i32"}
    for N, split in sorted(s for s in splits if s[1] > 1):
        const = {"N": N, "SPLIT_K": split, "BM": triton_gemm.REDUCE_BM, "BN": triton_gemm.REDUCE_BN}
        print(f"split-K sum N {N} split {split}: {sm90_resources(triton_gemm._reduce_kernel, red, const, 4, 1)}",
              flush=True)
    norm_types = {"x_ptr": "*bf16", "d_ptr": "*bf16", "g_ptr": "*bf16", "r_ptr": "*bf16", "n_ptr": "*bf16"}
    for K in (2048, 4096):
        const = {"K": K, "BK": K, "EPS": EPS, "HAS_DELTA": True}
        print(f"bf16 norm prologue K {K}: "
              f"{sm90_resources(triton_norm._norm_kernel, norm_types, const, 8 if K >= 4096 else 4, 1)}", flush=True)


WAVE_TILES = {"128x128": (tiles.Tiles(128, 128, 64, 8, 4), 1), "128x256": (tiles.Tiles(128, 256, 64, 8, 3), 1),
              "64x256": (tiles.Tiles(64, 256, 64, 4, 4), 1), "64x128": (tiles.Tiles(64, 128, 64, 4, 4), 1),
              "128x128, 2 an SM": (tiles.Tiles(128, 128, 64, 8, 2), 2)}


def waves() -> None:
    """--waves: per site and M, each persistent tile's output tiles, waves on 132 SMs and the share of the last
    wave's slots that have work (the rest idle while it runs): tiles / (ceil(waves) * programs)."""
    print("| site | N x K | M | " + " | ".join(f"{k}: tiles, waves, busy" for k in WAVE_TILES) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in WAVE_TILES) + " |")
    for site in PREFILL_SITES:
        for M in (128, 256, 512, 1024, 4096):
            cells = []
            for t, per_sm in WAVE_TILES.values():
                count, w = tiles.waves(M, site.N, t, tiles.SMS * per_sm)
                cells.append(f"{count}, {w:.2f}, {100 * w / math.ceil(w):.0f} %")
            print(f"| {site.name} | {site.N} x {site.K} | {M} | " + " | ".join(cells) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inductor", action="store_true", help="also time Inductor's autotuned Triton GEMM template")
    ap.add_argument("--configs", action="store_true", help="time every candidate part (tiles.candidates) instead")
    ap.add_argument("--registers", action="store_true", help="only every candidate's sm_90 compile (no GPU)")
    ap.add_argument("--waves", action="store_true", help="only the persistent tiles' wave counts (no GPU)")
    ap.add_argument("--only", default="", help="sites whose name contains this")
    ap.add_argument("--m", type=int, nargs="+", help="row counts (default 16 128 1024 4096; --configs: 16 .. 4096)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", help="also write the numbers to this JSON file")
    args = ap.parse_args()
    args.m = args.m or list(SWEEP_MS if args.configs else MS)
    if args.registers:
        registers(args.only)
        return 0
    if args.waves:
        waves()
        return 0
    if not torch.cuda.is_available():
        print("bench_gemm: needs a CUDA device (--registers does not)", file=sys.stderr)
        return 2
    out = run(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
