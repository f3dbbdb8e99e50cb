"""Kernel benchmark of the quantized prefill projections (gdn::qgemm, gdn::norm_qgemm) on one CUDA GPU, at every
prefill projection shape of Qwen3.5-2B (bench_gemv's SITES), M = 16, 128, 1024 and 4096 rows, int8 group 64 and
int4 group 32 (the export defaults) unless --schemes says otherwise.

Per (site, scheme, M), all in the same run:
- "qgemm": our kernel in its shipped configuration (`qgemm.tiles.config`) on the site's GEMM input (for norm
  sites the normed n): us, TFLOP/s, % of cuBLAS's time, % of the limit;
- "op": the whole op as the model calls it (norm sites: gdn::norm_qgemm, the norm prologue + the GEMM);
- cuBLAS: `torch.mm(a, w.T)` on the same weights in bf16 (the unquantized model's matmul);
- "deq+mm": the reference (ATen dequantize, then torch.mm), what prefill ran before this op;
- the limit: the larger of the quantized bytes (qweight + scales + x + y) over the copy bandwidth and 2 M N K
  over the matmul rate, both measured in the same run (scripts/timing.py); "% of limit" is limit / time.
Times: all calls replayed from one CUDA graph over enough weight copies that none is served from L2 (x shared),
median per call. Each qgemm output is checked against float64 on the dequantized weights (relative error).

    python scripts/bench_qgemm.py [--only SUBSTRING] [--m 16 128 ...] [--schemes int8:64 int4:32] [--out r.json]
    python scripts/bench_qgemm.py --configs [--only SUBSTRING] [--m 16 64 ...]  # the parts' sweep
    python scripts/bench_qgemm.py --registers [--configs] [--only SUBSTRING]  # no GPU: the parts' sm_90 compile

With --configs, instead: the shipped configuration, each of its parts alone (unbounded) and every candidate part
of the bf16 GEMM (`gemm.tiles.candidates`: stream tiles with split-K, persistent tiles) alone, on the quantized
weights at each M, each checked against float64; the fastest correct part per (site, scheme, M) is printed at
the end, beside cuBLAS on the bf16 weights.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import replace
from typing import Callable

import torch

from gdn.kernels.gemm import tiles as gemm_tiles
from gdn.kernels.gemv.reference import rms_norm
from gdn.kernels.qgemm import reference, tiles, triton_qgemm  # the package registers torch.ops.gdn.*
from gdn.kernels.qgemv import reference as qref

import timing  # scripts/ is on sys.path when run as a script
from bench_gemv import ROTATE_BYTES, SITES, Site, per_call_us

DT = torch.bfloat16
EPS = 1e-6
MS = (16, 128, 1024, 4096)
SCHEMES = ("int8:64", "int4:32")
SITES_2B = [s for s in SITES if s.name.startswith("2B")]


def parse_scheme(text: str) -> tuple[int, int]:
    """'int4:32' -> (4, 32)."""
    found = re.fullmatch(r"int([48]):(\d+)", text)
    if not found:
        raise argparse.ArgumentTypeError(f"a scheme is int8:GROUP or int4:GROUP, got {text!r}")
    return int(found.group(1)), int(found.group(2))


def packed_bytes(site: Site, bits: int, group: int) -> int:
    return site.N * site.K * bits // 8 + site.N * (site.K // group) * DT.itemsize


def inputs(site: Site, M: int, bits: int, group: int) -> tuple[list[dict], list[dict]]:
    """-> (quantized copies: q, s and the shared x / d / g / a; bf16 copies: w, a). a is the GEMM's input (the normed
    residual at norm sites); enough copies of each kind that none is served from L2."""
    K = site.K
    shared = {"x": torch.randn(M, K, device="cuda", dtype=DT)}
    if site.form == "norm":
        shared["d"] = torch.randn(M, K, device="cuda", dtype=DT)
        shared["g"] = 0.1 * torch.randn(K, device="cuda", dtype=DT)
        shared["a"] = rms_norm(shared["x"] + shared["d"], shared["g"], EPS)
    else:
        shared["a"] = shared["x"]
    w = torch.randn(site.N, K, device="cuda", dtype=DT) * K**-0.5
    q, s = qref.quantize(w, bits, group)
    nq = max(2, math.ceil(ROTATE_BYTES / packed_bytes(site, bits, group)))
    nw = max(2, math.ceil(ROTATE_BYTES / (site.N * K * DT.itemsize)))
    quant = [{**shared, "q": q.clone(), "s": s.clone()} for _ in range(nq)]
    dense = [{"a": shared["a"], "w": w.clone()} for _ in range(nw)]
    return quant, dense


def contenders(site: Site, bits: int, group: int) -> dict[str, tuple[Callable[[dict], object], str]]:
    """Column -> (one call on one copy's tensors, which copies it runs on)."""
    fns = {"qgemm": (lambda t: triton_qgemm.qgemm(t["a"], t["q"], t["s"], bits, group), "quant"),
           "cublas": (lambda t: torch.mm(t["a"], t["w"].T), "dense"),
           "deq+mm": (lambda t: reference.gemm(t["a"], t["q"], t["s"], bits, group), "quant")}
    if site.form == "norm":
        fns["op"] = (lambda t: torch.ops.gdn.norm_qgemm(t["x"], t["d"], t["g"], EPS, t["q"], t["s"], bits, group),
                     "quant")
    else:
        fns["op"] = (lambda t: torch.ops.gdn.qgemm(t["a"], t["q"], t["s"], bits, group), "quant")
    return fns


def rel_err(t: dict, bits: int, group: int, cfg: tiles.GemmConfig | None = None) -> float:
    """||y - want|| / ||want|| of one qgemm into a NaN-filled y, want in float64 on the dequantized weights."""
    want = t["a"].double() @ qref.dequantize(t["q"], t["s"], bits, group).double().T
    y = torch.full(want.shape, float("nan"), device=want.device, dtype=DT)
    triton_qgemm.qgemm(t["a"], t["q"], t["s"], bits, group, cfg, out=y)
    return ((y.double() - want).norm() / want.norm()).item()


def measure(site: Site, M: int, bits: int, group: int, iters: int) -> dict[str, float]:
    quant, dense = inputs(site, M, bits, group)
    copies = {"quant": quant, "dense": dense}
    err = rel_err(quant[0], bits, group)
    times = {name: per_call_us(fn, copies[kind], iters) for name, (fn, kind) in contenders(site, bits, group).items()}
    del quant, dense, copies
    torch.cuda.empty_cache()
    return {**times, "rel_err": err}


def limit_us(site: Site, M: int, bits: int, group: int, copy: float, rate: float) -> float:
    nbytes = packed_bytes(site, bits, group) + M * (site.K + site.N) * DT.itemsize
    return max(nbytes / copy, 2 * M * site.N * site.K / rate) * 1e6


def row(site: Site, M: int, bits: int, group: int, t: dict[str, float], copy: float, rate: float) -> str:
    lim = limit_us(site, M, bits, group, copy, rate)
    tflops = 2 * M * site.N * site.K / (t["qgemm"] * 1e-6) / 1e12
    return (f"| {site.name} | {site.N} x {site.K} | int{bits} g{group} | {M} | {t['qgemm']:.2f} | {tflops:.0f} | "
            f"{100 * t['cublas'] / t['qgemm']:.1f} | {lim:.2f} | {100 * lim / t['qgemm']:.1f} | {t['op']:.2f} | "
            f"{t['cublas']:.2f} | {t['deq+mm']:.2f} | {t['rel_err']:.1e} |")


def run(args: argparse.Namespace) -> dict:
    copy, rate = timing.copy_bandwidth(), timing.matmul_rate()
    print(f"{torch.cuda.get_device_name()}, bf16 activations; copy bandwidth {copy / 1e9:.0f} GB/s (read + write); "
          f"matmul rate {rate / 1e12:.0f} TFLOP/s (8192^3 torch.mm); us per call, graphed, weights rotated past L2\n")
    out = {"device": torch.cuda.get_device_name(), "copy_gbs": copy / 1e9, "matmul_tflops": rate / 1e12, "rows": []}
    if args.configs:
        return {**out, "rows": sweep(args, copy, rate)}
    print("| site | N x K | scheme | M | qgemm us | TFLOP/s | % of cuBLAS | limit us | % of limit | op us | cuBLAS us "
          "(bf16) | deq+mm us | rel err |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for site in (s for s in SITES_2B if args.only in s.name):
        for bits, group in args.schemes:
            for M in args.m:
                t = measure(site, M, bits, group, args.iters)
                print(row(site, M, bits, group, t, copy, rate), flush=True)
                out["rows"].append({"site": site.name, "N": site.N, "K": site.K, "bits": bits, "group": group,
                                    "M": M, "times_us": t, "limit_us": limit_us(site, M, bits, group, copy, rate)})
    return out


OPCODES = ("HGMMA", "HMMA", "LDGSTS", "I2F", "F2FP", "LOP3", "FFMA", "FMUL")  # what the --registers line counts


def sweep_parts(site: Site, bits: int, group: int) -> dict[str, tiles.GemmConfig]:
    """name -> a configuration to time: the shipped one, each of its parts alone, every bf16 GEMM candidate part."""
    shipped = tiles.config(site.N, site.K, bits, group, DT)
    out = {"shipped": shipped}
    for i, part in enumerate(shipped.parts):
        out[f"shipped-{i}-{part.kernel}"] = tiles.GemmConfig((replace(part, max_m=0),))
    for name, part in gemm_tiles.candidates(site.N, site.K).items():
        out[f"gemm-{name}"] = tiles.GemmConfig((part,))
    return out


def sweep_one(site: Site, M: int, bits: int, group: int, iters: int) -> dict[str, dict[str, object]]:
    """name -> {us, rel_err} or {error} (a part that does not compile or launch; the sweep goes on)."""
    quant, dense = inputs(site, M, bits, group)
    out = {"cublas": {"us": per_call_us(lambda t: torch.mm(t["a"], t["w"].T), dense, iters), "rel_err": 0.0}}
    for name, cfg in sweep_parts(site, bits, group).items():
        try:
            err = rel_err(quant[0], bits, group, cfg)
            fn = lambda t, cfg=cfg: triton_qgemm.qgemm(t["a"], t["q"], t["s"], bits, group, cfg)  # noqa: E731
            out[name] = {"rel_err": err, "us": per_call_us(fn, quant, iters)}
        except Exception as e:  # noqa: BLE001  (a part's resources, e.g. shared memory, are the device's call)
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
    del quant, dense
    torch.cuda.empty_cache()
    return out


def sweep(args: argparse.Namespace, copy: float, rate: float) -> list[dict]:
    """--configs: every configuration per (site, scheme, M), then the fastest correct one per (site, scheme, M)."""
    print("| site | scheme | M | configuration | us | % of cuBLAS | % of limit | rel err |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for site in (s for s in SITES_2B if args.only in s.name):
        for bits, group in args.schemes:
            for M in args.m:
                res = sweep_one(site, M, bits, group, args.iters)
                lim = limit_us(site, M, bits, group, copy, rate)
                for name, r in res.items():
                    if "error" in r:
                        print(f"| {site.name} | int{bits} g{group} | {M} | {name} | - | - | - | {r['error']} |")
                        continue
                    flag = "" if r["rel_err"] < 1e-2 else " WRONG"
                    print(f"| {site.name} | int{bits} g{group} | {M} | {name} | {r['us']:.2f} | "
                          f"{100 * res['cublas']['us'] / r['us']:.1f} | {100 * lim / r['us']:.1f} | "
                          f"{r['rel_err']:.1e}{flag} |", flush=True)
                ok = {k: r["us"] for k, r in res.items() if k != "cublas" and "us" in r and r["rel_err"] < 1e-2}
                best = min(ok, key=ok.get) if ok else None
                rows.append({"site": site.name, "bits": bits, "group": group, "M": M, "results": res, "best": best})
    print("\nfastest correct configuration per (site, scheme, M):\n")
    for row in rows:
        best = row["best"]
        us = row["results"][best]["us"] if best else float("nan")
        print(f"| {row['site']} | int{row['bits']} g{row['group']} | {row['M']} | {best} | {us:.2f} | "
              f"shipped {row['results']['shipped'].get('us', float('nan')):.2f} | "
              f"cuBLAS bf16 {row['results']['cublas']['us']:.2f} |")
    return rows


def part_stats(site: Site, bits: int, group: int, part: tiles.Part) -> str:
    """One part compiled for sm_90 at the site: registers, spill stack, shared bytes, programs an SM, the main loop's
    SASS count and a few opcodes' counts in the kernel (HGMMA: wgmma tensor-core dots; LDGSTS: cp.async copies;
    I2F: the conversion the dequantization avoids)."""
    from tools.sass_stats import compile_sm90

    t = part.tiles
    types = {"x_ptr": "*bf16", "w_ptr": "*i8" if bits == 8 else "*u8", "s_ptr": "*bf16", "y_ptr": "*bf16",
             "ws_ptr": "*fp32", "M": "i32"}
    const = {"N": site.N, "K": site.K, "KG": site.K // group, "GROUP": group, "BITS": bits, "BM": t.block_m,
             "BN": t.block_n, "BK": t.block_k, "UPCAST": False}
    if part.kernel == tiles.PERSISTENT:
        kernel, const = triton_qgemm._wide_kernel, {**const, "GROUP_M": part.group_m, "FLATTEN": part.flatten}
    else:
        kernel, const = triton_qgemm._stream_kernel, {**const, "SPLIT_K": part.split_k}
    st = compile_sm90(kernel, types, const, t.warps, t.stages)
    ops = " ".join(f"{op} {st.opcodes[op]}" for op in OPCODES)
    spills = " SPILLS" if st.stack else ""
    return (f"{st.registers} registers, {st.stack} B stack{spills}, {st.shared} B shared, {st.programs()} an SM; "
            f"main loop {st.loop} SASS; {ops}")


def registers(only: str, schemes: list[tuple[int, int]], every: bool) -> None:
    """--registers: each part of each site's shipped configuration (with --configs: every part the sweep times)
    compiled for sm_90; no GPU needed."""
    for site in (s for s in SITES_2B if only in s.name):
        for bits, group in schemes:
            shipped = {"shipped": tiles.config(site.N, site.K, bits, group, DT)}
            cfgs = sweep_parts(site, bits, group) if every else shipped
            seen = set()
            for name, cfg in cfgs.items():
                for part in (p for p in cfg.parts if replace(p, max_m=0) not in seen):
                    seen.add(replace(part, max_m=0))
                    t = part.tiles
                    print(f"{site.name} int{bits} g{group} {name} {part.kernel} {t.block_m}x{t.block_n}x{t.block_k} "
                          f"w{t.warps} s{t.stages} split {part.split_k}: {part_stats(site, bits, group, part)}",
                          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registers", action="store_true", help="only the parts' sm_90 compile (no GPU)")
    ap.add_argument("--configs", action="store_true", help="time every candidate part instead (a sweep)")
    ap.add_argument("--only", default="", help="sites whose name contains this")
    ap.add_argument("--m", type=int, nargs="+", default=list(MS), help="row counts (default 16 128 1024 4096)")
    ap.add_argument("--schemes", type=parse_scheme, nargs="+", default=[parse_scheme(s) for s in SCHEMES],
                    help="int8:GROUP / int4:GROUP (default int8:64 int4:32)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", help="also write the numbers to this JSON file")
    args = ap.parse_args()
    if args.registers:
        registers(args.only, args.schemes, args.configs)
        return 0
    if not torch.cuda.is_available():
        print("bench_qgemm: needs a CUDA device (--registers does not)", file=sys.stderr)
        return 2
    out = run(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
