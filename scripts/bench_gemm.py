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

    python scripts/bench_gemm.py [--inductor] [--configs] [--only SUBSTRING] [--m 16 128 ...] [--out r.json]
    python scripts/bench_gemm.py --registers     # no GPU: sm_90 registers, spill stack, shared memory
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from typing import Callable

import torch

from gdn.kernels.gemm import reference, triton_gemm, triton_norm  # the package registers torch.ops.gdn.*
from gdn.kernels.gemv.reference import rms_norm

import timing  # scripts/ is on sys.path when run as a script
from bench_gemv import ROTATE_BYTES, SITES, TEMPLATE, Site, per_call_us

DT = torch.bfloat16
EPS = 1e-6
MS = (16, 128, 1024, 4096)
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


def contenders(site: Site, with_template: bool, sweep: bool) -> dict[str, Callable[[dict[str, torch.Tensor]], object]]:
    """Column -> one call on one copy's tensors."""
    fns = {"gemm": lambda t: triton_gemm.gemm(t["a"], t["w"]), "cublas": lambda t: torch.mm(t["a"], t["w"].T)}
    if site.form == "norm":
        fns["op"] = lambda t: torch.ops.gdn.norm_gemm(t["x"], t["d"], t["g"], EPS, t["w"])
    else:
        fns["op"] = lambda t: torch.ops.gdn.gemm(t["a"], t["w"])
    if with_template:
        fns["inductor"] = template(site)
    if sweep:
        for i, cfg in enumerate(c for c in triton_gemm.configs() if c.wide.block_m == 128):
            fns[f"config {i}"] = lambda t, cfg=cfg: triton_gemm.gemm(t["a"], t["w"], cfg)
    return fns


def measure(site: Site, M: int, with_template: bool, sweep: bool, iters: int) -> dict[str, float]:
    copies = site_inputs(site, M, max(2, math.ceil(ROTATE_BYTES / (site.N * site.K * DT.itemsize))))
    want = copies[0]["a"].double() @ copies[0]["w"].double().T
    err = ((triton_gemm.gemm(copies[0]["a"], copies[0]["w"]).double() - want).norm() / want.norm()).item()
    times = {name: per_call_us(fn, copies, iters) for name, fn in contenders(site, with_template, sweep).items()}
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
    swept = ", ".join(f"{t[k]:.2f}" for k in t if k.startswith("config "))
    return (f"| {site.name} | {site.N} x {site.K} | {M} | {s['us']:.2f} | {s['tflops']:.0f} | {s['pct_cublas']:.1f} | "
            f"{s['weight_gbs']:.0f} | {s['pct_copy']:.1f} | {t['op']:.2f} | {t['cublas']:.2f} | {cb['tflops']:.0f} | "
            f"{cb['pct_copy']:.1f} | {ind} | {t['rel_err']:.1e} |" + (f" {swept} |" if swept else ""))


def run(args: argparse.Namespace) -> dict:
    copy, rate = timing.copy_bandwidth(), timing.matmul_rate()
    print(f"{torch.cuda.get_device_name()}, bf16; copy bandwidth {copy / 1e9:.0f} GB/s (read + write); matmul rate "
          f"{rate / 1e12:.0f} TFLOP/s (8192^3 torch.mm); us per call, graphed, weights rotated past L2\n")
    if args.configs:
        print("sweep columns (us): " + "; ".join(f"config {i}: {asdict(c)}" for i, c in enumerate(
            c for c in triton_gemm.configs() if c.wide.block_m == 128)) + "\n")
    print("| site | N x K | M | gemm us | TFLOP/s | % of cuBLAS | weight GB/s | % of copy | op us | cuBLAS us | "
          "cuBLAS TFLOP/s | cuBLAS % of copy | Inductor us (% of cuBLAS) | rel err |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    out = {"device": torch.cuda.get_device_name(), "copy_gbs": copy / 1e9, "matmul_tflops": rate / 1e12, "rows": []}
    for site in PREFILL_SITES:
        if args.only not in site.name:
            continue
        cfg = triton_gemm.config(site.N, site.K, DT)
        for M in args.m:
            t = measure(site, M, args.inductor, args.configs, args.iters)
            print(row(site, M, t, copy), flush=True)
            out["rows"].append({"site": site.name, "N": site.N, "K": site.K, "M": M, "times_us": t,
                                "gemm": stats(site, M, t["gemm"], t["cublas"], copy), "config": asdict(cfg)})
    return out


def registers() -> None:
    """--registers: both kernels of each site's shipped configuration (and the fp32 one) compiled for sm_90."""
    from bench_attention import sm90_resources

    cases = [(s.name, s.N, s.K, "bf16", triton_gemm.config(s.N, s.K, DT)) for s in PREFILL_SITES]
    cases += [("fp32", s.N, s.K, "fp32", triton_gemm.FP32) for s in PREFILL_SITES[:1]]
    for name, N, K, dtype, cfg in cases:
        t = {"x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "M": "i32"}
        w, n = cfg.wide, cfg.narrow
        base = {"N": N, "K": K, "UPCAST": False}
        wide = {**base, "BM": w.block_m, "BN": w.block_n, "BK": w.block_k, "GROUP_M": cfg.group_m,
                "FLATTEN": cfg.flatten}
        narrow = {**base, "BM": n.block_m, "BN": n.block_n, "BK": n.block_k}
        print(f"{name} {N} x {K} {dtype} wide {w}: "
              f"{sm90_resources(triton_gemm._wide_kernel, t, wide, w.warps, w.stages)}", flush=True)
        print(f"{name} {N} x {K} {dtype} narrow {n}: "
              f"{sm90_resources(triton_gemm._narrow_kernel, t, narrow, n.warps, n.stages)}", flush=True)
    norm_types = {"x_ptr": "*bf16", "d_ptr": "*bf16", "g_ptr": "*bf16", "r_ptr": "*bf16", "n_ptr": "*bf16"}
    for K in (2048, 4096):
        const = {"K": K, "BK": K, "EPS": EPS, "HAS_DELTA": True}
        print(f"bf16 norm prologue K {K}: "
              f"{sm90_resources(triton_norm._norm_kernel, norm_types, const, 8 if K >= 4096 else 4, 1)}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inductor", action="store_true", help="also time Inductor's autotuned Triton GEMM template")
    ap.add_argument("--configs", action="store_true", help="also time every bf16 configuration config() can return")
    ap.add_argument("--registers", action="store_true", help="only the sm_90 compile of each kernel (no GPU)")
    ap.add_argument("--only", default="", help="sites whose name contains this")
    ap.add_argument("--m", type=int, nargs="+", default=list(MS), help="row counts")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", help="also write the numbers to this JSON file")
    args = ap.parse_args()
    if args.registers:
        registers()
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
