"""Kernel benchmark of the quantized one-token projections (gdn::qgemv, gdn::norm_qgemv) on one CUDA GPU, at
Qwen3.5-2B's decode projection shapes: per shape the bf16 op (gdn::gemv / gdn::norm_gemv), int8 and int4 (ours),
each in its shipped config launched in stream order; us per call, GB/s of the bytes read (qweight + scales + x +
y; the bf16 weights for bf16) and % of copy bandwidth. All calls replayed from one CUDA graph over enough weight
copies that none is served from L2 (scripts/timing.py).

    python scripts/bench_qgemv.py [--group 128] [--only SUBSTRING] [--out results.json]
    python scripts/bench_qgemv.py --registers     # no GPU: registers / spills / SASS per byte of the sm_90 compile
    python scripts/bench_qgemv.py --error         # no GPU: weight reconstruction error of quantization schemes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import replace

import torch

from gdn.kernels.gemv import triton_gemv, triton_norm_gemv
from gdn.kernels.qgemv import reference, triton_norm_qgemv, triton_qgemv

import bench_gemv  # scripts/ is on sys.path when run as a script
from bench_gemv import Site
import timing

DT = torch.bfloat16
EPS = 1e-6
ROTATE_BYTES = 512 << 20  # weights cycled per graph: ten times the H100's L2


# the 2B's decode sites and lm_head: the shapes bench_gemv times in bf16
SITES = [site for site in bench_gemv.SITES if site.name.startswith(("2B", "lm_head"))]


def weights(site: Site, bits: int, group: int) -> dict[str, torch.Tensor]:
    w = torch.randn(site.N, site.K, device="cuda", dtype=DT) * site.K**-0.5
    if bits == 16:
        return {"w": w}
    q, s = reference.quantize(w, bits, group)
    return {"q": q, "s": s}


def call(site: Site, bits: int, group: int):
    """-> one call on a copy's tensors, the ops' kernel in its shipped config launched in stream order."""
    if bits == 16:
        cfg = triton_gemv.default_config(site.K)
    else:
        cfg = triton_qgemv.default_config(site.K, bits)
    cfg = replace(cfg, pdl="serial") if cfg.pdl == "on" else cfg
    if bits == 16 and site.form == "norm":
        return lambda t: triton_norm_gemv.norm_gemv(t["x"], t["d"], t["g"], EPS, t["w"], cfg)
    if bits == 16:
        return lambda t: triton_gemv.gemv(t["x"], t["w"], site.form, cfg)
    if site.form == "norm":
        return lambda t: triton_norm_qgemv.norm_qgemv(t["x"], t["d"], t["g"], EPS, t["q"], t["s"], bits, group, cfg)
    return lambda t: triton_qgemv.qgemv(t["x"], t["q"], t["s"], bits, group, site.form, cfg)


def bytes_read(site: Site, t: dict[str, torch.Tensor]) -> int:
    """Weights (qweight + scales) + x (+ delta, gain) + y, r, n: every byte the kernel must move once."""
    weights_ = sum(t[k].numel() * t[k].element_size() for k in ("w", "q", "s") if k in t)
    xs = sum(t[k].numel() * t[k].element_size() for k in ("x", "d", "g") if k in t)
    outs = site.N + (2 * site.K if site.form == "norm" else 0)
    return weights_ + xs + outs * DT.itemsize


def measure(site: Site, bits: int, group: int, iters: int) -> tuple[float, int]:
    one = site.N * site.K * (2 if bits == 16 else bits / 8)
    count = max(2, math.ceil(ROTATE_BYTES / one))
    x_cols = 2 * site.K if site.form == "silu_mul" else site.K
    copies = []
    for _ in range(count):
        t = {"x": torch.randn(1, x_cols, device="cuda", dtype=DT), **weights(site, bits, group)}
        if site.form == "norm":
            t["d"] = torch.randn(1, site.K, device="cuda", dtype=DT)
            t["g"] = 0.1 * torch.randn(site.K, device="cuda", dtype=DT)
        copies.append(t)
    fn = call(site, bits, group)
    fn(copies[0])
    us = timing.median_us(timing.graphed(lambda i: fn(copies[i]), count), iters=iters) / count
    nbytes = bytes_read(site, copies[0])
    copies.clear()
    torch.cuda.empty_cache()
    return us, nbytes


def bench(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print("bench_qgemv: needs a CUDA device (--registers and --error do not)", file=sys.stderr)
        return 2
    t = timing.Table()
    copy = timing.copy_bandwidth()
    t.put("device", torch.cuda.get_device_name(0))
    t.put("copy_gbs", copy / 1e9)
    t.put("group", args.group)
    print(f"{torch.cuda.get_device_name(0)}; copy bandwidth {copy / 1e9:.0f} GB/s (read + write); group "
          f"{args.group}; us per call, graphed, weights rotated past L2\n")
    print("| site | N x K | input | dtype | MB read | us | GB/s | % of copy | x bf16 speed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for site in SITES:
        if args.only not in site.name:
            continue
        base = None
        for bits in (16, 8, 4):
            us, nbytes = measure(site, bits, args.group, args.iters)
            base = base or us
            gbs = nbytes / (us * 1e-6) / 1e9
            name = "bf16" if bits == 16 else f"int{bits}"
            print(f"| {site.name} | {site.N} x {site.K} | {site.form} | {name} | {nbytes / 1e6:.2f} | {us:.2f} | "
                  f"{gbs:.0f} | {100 * gbs * 1e9 / copy:.1f} | {base / us:.2f} |", flush=True)
            rows.append({"site": site.name, "N": site.N, "K": site.K, "form": site.form, "dtype": name,
                         "bytes": nbytes, "us": us, "gbs": gbs, "pct_copy": 100 * gbs * 1e9 / copy})
    t.put("rows", rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(t.results, f, indent=1)
    return 0


def sm90_resources(kernel, types: dict[str, str], constexprs: dict[str, object], warps: int) -> tuple[str, int]:
    """(registers, spill stack and shared bytes; SASS instruction count) of one specialisation compiled for
    sm_90, with 16-byte aligned pointers and strides as Triton specialises them at launch."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    signature = {n: "constexpr" if n in constexprs else types[n] for n in names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
               if n not in constexprs and (types[n].startswith("*") or n.startswith("s_"))}
    src = ASTSource(kernel, signature, constexprs=constexprs, attrs=aligned)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": 1})
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([f"{tools}/cuobjdump", "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([f"{tools}/cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    count = len(re.findall(r"^\s+/\*[0-9a-f]{4}\*/\s+\S", sass, re.M))
    what = f"{found[1]} registers, {found[2]} B stack, {compiled.metadata.shared} B shared" if found else usage[-200:]
    return what, count


def registers(group: int) -> int:
    """--registers: each site's kernels in the shipped config; SASS instructions per weight byte of a thread."""
    import triton

    t = timing.Table(34)
    for site in SITES:
        for bits in (8, 4):
            cfg = triton_qgemv.default_config(site.K, bits)
            pdl = cfg.pdl == "on"
            bn, bg, _ = (cfg.block_n, triton.next_power_of_2(site.K // group) if pdl
                         else max(1, cfg.block_k // group), None)
            types = {"x_ptr": "*bf16", "d_ptr": "*bf16", "g_ptr": "*bf16", "w_ptr": "*u8" if bits == 4 else "*i8",
                     "s_ptr": "*bf16", "y_ptr": "*bf16", "r_ptr": "*bf16", "n_ptr": "*bf16", "s_wn": "i32",
                     "s_sn": "i32"}
            const = {"N": site.N, "K": site.K, "KG": site.K // group, "GROUP": group, "BITS": bits, "BN": bn,
                     "BG": bg, "PDL": pdl, "GDC": pdl}
            if site.form == "norm":
                kernel, const = triton_norm_qgemv._norm_qgemv_kernel, {**const, "EPS": EPS, "HAS_DELTA": True,
                                                                        "SLICE": 16, "SLICE_P2": 16}
            else:
                kernel, const = triton_qgemv._qgemv_kernel, {**const, "SILU_MUL": site.form == "silu_mul"}
            used, count = sm90_resources(kernel, types, const, cfg.warps)
            step_bytes = bn * bg * group * bits / 8 / (32 * cfg.warps)  # a thread's weight bytes per step
            t.row(f"{site.name} int{bits} g{group}", "", f"{used}; {count} SASS, {step_bytes:.0f} B a thread a "
                  f"step; {cfg}")
    return 0


def asymmetric(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """min/max asymmetric: 2^bits levels from each group's min to its max, float32 scale and zero point."""
    N, K = w.shape
    wg = w.reshape(N, K // group, group)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    s = ((hi - lo) / (2**bits - 1)).clamp_min(1e-30)
    return (torch.round((wg - lo) / s) * s + lo).reshape(N, K)


def clipped16(w: torch.Tensor, group: int) -> torch.Tensor:
    """int4 symmetric on [-8, 7] with s = absmax / 8: the positive maximum clips to 7 s."""
    N, K = w.shape
    wg = w.reshape(N, K // group, group)
    s = (wg.abs().amax(-1, keepdim=True) / 8).clamp_min(1e-30)
    return (torch.round(wg / s).clamp(-8, 7) * s).reshape(N, K)


def error(seed: int = 0) -> int:
    """--error: relative RMS reconstruction error ||w - w'|| / ||w|| of 1024 x 4096 weights (bf16), per scheme."""
    torch.manual_seed(seed)
    dists = {"normal": torch.randn(1024, 4096), "student-t 3": torch.distributions.StudentT(3.0).sample((1024, 4096))}
    print("| weights | bits | group | ours: symmetric absmax, bf16 scales | same, fp32 scales | asymmetric min/max "
          "(fp32 scale + zero) | int4 [-8, 7], s = absmax / 8 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for dname, w in dists.items():
        w = w.to(DT).float()
        for bits in (8, 4):
            for group in (32, 64, 128):
                def rel(w2: torch.Tensor) -> str:
                    return f"{((w2 - w).norm() / w.norm()).item():.3e}"

                ours = reference.dequantize(*reference.quantize(w.to(DT), bits, group), bits, group).float()
                f32 = reference.dequantize(*reference.quantize(w, bits, group), bits, group)
                c16 = rel(clipped16(w, group)) if bits == 4 else "-"
                print(f"| {dname} | {bits} | {group} | {rel(ours)} | {rel(f32)} | "
                      f"{rel(asymmetric(w, bits, group))} | {c16} |", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--only", default="", help="sites whose name contains this")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", help="also write the numbers to this JSON file")
    ap.add_argument("--registers", action="store_true", help="only the sm_90 compile of each site's kernels")
    ap.add_argument("--error", action="store_true", help="only the reconstruction error of quantization schemes")
    args = ap.parse_args()
    if args.registers:
        return registers(args.group)
    if args.error:
        return error()
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
