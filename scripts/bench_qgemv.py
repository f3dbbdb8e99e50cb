"""Kernel benchmark of the quantized one-token projections (gdn::qgemv, gdn::norm_qgemv) on one CUDA GPU, at
Qwen3.5-2B's decode projection shapes: per shape the bf16 op (gdn::gemv / gdn::norm_gemv), int8 and int4 (ours),
each in its shipped config launched in stream order; us per call, GB/s of the bytes read (qweight + scales + x +
y; the bf16 weights for bf16) and % of copy bandwidth. All calls replayed from one CUDA graph over enough weight
copies that none is served from L2 (scripts/timing.py).

    python scripts/bench_qgemv.py [--group 128] [--only SUBSTRING] [--out results.json]
    python scripts/bench_qgemv.py --configs [--bits 4,8] [--groups 32,128] [--candidates chunks] [--only 2B]
                                                  # every candidate config (triton_qgemv.candidates) per site
    python scripts/bench_qgemv.py --registers [--group 32] [--candidates NAME]
                                                  # no GPU: the candidates' sm_90 compile, per byte and per SM
    python scripts/bench_qgemv.py --error         # no GPU: weight reconstruction error of quantization schemes
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace

import torch
import triton

from gdn.kernels.gemv import triton_gemv, triton_norm_gemv
from gdn.kernels.qgemv import reference, triton_norm_qgemv, triton_qgemv
from gdn.kernels.qgemv import triton_chunks as chunks

import bench_gemv  # scripts/ is on sys.path when run as a script
from bench_gemv import Site
import timing
from tools import sass_stats

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


def config(site: Site, bits: int, name: str = "shipped"):
    """The kernel config `name` (triton_qgemv.candidates) of a site, the PDL form launched in stream order."""
    cfg = triton_gemv.default_config(site.K) if bits == 16 else triton_qgemv.candidates(site.K, bits)[name]
    return replace(cfg, pdl="serial") if cfg.pdl == "on" else cfg


def call(site: Site, bits: int, group: int, name: str = "shipped"):
    """-> one call on a copy's tensors, the ops' kernel in config `name`."""
    cfg = config(site, bits, name)
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


def make_copies(site: Site, bits: int, group: int) -> list[dict[str, torch.Tensor]]:
    """Enough copies of one call's tensors that cycling through them reads none from L2."""
    one = site.N * site.K * (2 if bits == 16 else bits / 8)
    x_cols = 2 * site.K if site.form == "silu_mul" else site.K
    copies = []
    for _ in range(max(2, math.ceil(ROTATE_BYTES / one))):
        t = {"x": torch.randn(1, x_cols, device="cuda", dtype=DT), **weights(site, bits, group)}
        if site.form == "norm":
            t["d"] = torch.randn(1, site.K, device="cuda", dtype=DT)
            t["g"] = 0.1 * torch.randn(site.K, device="cuda", dtype=DT)
        copies.append(t)
    return copies


def time_us(fn, copies: list[dict[str, torch.Tensor]], iters: int) -> float:
    fn(copies[0])
    return timing.median_us(timing.graphed(lambda i: fn(copies[i]), len(copies)), iters=iters) / len(copies)


def measure(site: Site, bits: int, group: int, iters: int,
            names: tuple[str, ...] = ("shipped",)) -> tuple[dict[str, float], int]:
    """-> ({config name: us per call}, bytes read per call), every config on the same copies."""
    copies = make_copies(site, bits, group)
    us = {name: time_us(call(site, bits, group, name), copies, iters) for name in names}
    nbytes = bytes_read(site, copies[0])
    copies.clear()
    torch.cuda.empty_cache()
    return us, nbytes


def start(args: argparse.Namespace) -> tuple[timing.Table, float] | None:
    if not torch.cuda.is_available():
        print("bench_qgemv: needs a CUDA device (--registers and --error do not)", file=sys.stderr)
        return None
    t = timing.Table()
    copy = timing.copy_bandwidth()
    t.put("device", torch.cuda.get_device_name(0))
    t.put("copy_gbs", copy / 1e9)
    print(f"{torch.cuda.get_device_name(0)}; copy bandwidth {copy / 1e9:.0f} GB/s (read + write); us per call, "
          f"graphed, weights rotated past L2\n")
    return t, copy


def bench(args: argparse.Namespace) -> int:
    started = start(args)
    if started is None:
        return 2
    t, copy = started
    t.put("group", args.group)
    print(f"group {args.group}\n\n| site | N x K | input | dtype | MB read | us | GB/s | % of copy | x bf16 speed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for site in SITES:
        if args.only not in site.name:
            continue
        base = None
        for bits in (16, 8, 4):
            us, nbytes = measure(site, bits, args.group, args.iters)
            us = us["shipped"]
            base = base or us
            gbs = nbytes / (us * 1e-6) / 1e9
            name = "bf16" if bits == 16 else f"int{bits}"
            print(f"| {site.name} | {site.N} x {site.K} | {site.form} | {name} | {nbytes / 1e6:.2f} | {us:.2f} | "
                  f"{gbs:.0f} | {100 * gbs * 1e9 / copy:.1f} | {base / us:.2f} |", flush=True)
            rows.append({"site": site.name, "N": site.N, "K": site.K, "form": site.form, "dtype": name,
                         "bytes": nbytes, "us": us, "gbs": gbs, "pct_copy": 100 * gbs * 1e9 / copy})
    t.put("rows", rows)
    return save(t, args.out)


def save(t: timing.Table, out: str | None) -> int:
    if out:
        with open(out, "w") as f:
            json.dump(t.results, f, indent=1)
    return 0


def configs(args: argparse.Namespace) -> int:
    """--configs: every candidate config at every site, int4 and int8, each group of --groups, beside bf16;
    then the best config per site, bits and group."""
    started = start(args)
    if started is None:
        return 2
    t, copy = started
    print("| site | N x K | dtype | group | config | us | % of copy | x bf16 speed | x shipped |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows, best = [], []
    for site in SITES:
        if args.only not in site.name:
            continue
        bf16, _ = measure(site, 16, 128, args.iters)
        for bits in args.bits:
            for group in args.groups:
                names = tuple(n for n in triton_qgemv.candidates(site.K, bits)
                              if args.candidates in n or n == "shipped")
                us, nbytes = measure(site, bits, group, args.iters, names)
                for name, u in us.items():
                    pct = 100 * nbytes / (u * 1e-6) / copy
                    print(f"| {site.name} | {site.N} x {site.K} | int{bits} | {group} | {name} | {u:.2f} | {pct:.1f} | "
                          f"{bf16['shipped'] / u:.2f} | {us['shipped'] / u:.2f} |", flush=True)
                    rows.append({"site": site.name, "bits": bits, "group": group, "config": name, "us": u,
                                 "pct_copy": pct, "bf16_us": bf16["shipped"]})
                top = min(us, key=us.get)
                best.append(f"| {site.name} | int{bits} | {group} | {top} | {us[top]:.2f} | "
                            f"{100 * nbytes / (us[top] * 1e-6) / copy:.1f} | {us['shipped']:.2f} |")
    print("\nbest per site\n\n| site | dtype | group | config | us | % of copy | shipped us |\n| --- | --- | --- | --- "
          "| --- | --- | --- |")
    print("\n".join(best))
    t.put("rows", rows)
    return save(t, args.out)


def compile_stats(site: Site, bits: int, group: int, cfg) -> tuple[sass_stats.Stats, int, int]:
    """-> (sm_90 stats of the site's kernel in `cfg`, a program's weight bytes per step, steps in flight)."""
    pdl = cfg.pdl == "on"
    bn = min(cfg.block_n, triton.next_power_of_2(site.N))
    types = {"x_ptr": "*bf16", "d_ptr": "*bf16", "g_ptr": "*bf16", "s_ptr": "*bf16", "y_ptr": "*bf16",
             "r_ptr": "*bf16", "n_ptr": "*bf16", "s_wn": "i32", "s_sn": "i32", "one": "i32",
             "w_ptr": "*i32" if cfg.layout == "chunks" else "*u8" if bits == 4 else "*i8"}
    const = {"N": site.N, "K": site.K, "BITS": bits, "BN": bn, "PDL": pdl, "GDC": pdl}
    if cfg.layout == "chunks":
        kc, cg = chunks.chunk_shape(site.K, bits, group)
        step = chunks.block_chunks(pdl, cfg.block_k, site.K, bits)
        const.update(KC=kc, CG=cg, BC=step, STAGES=cfg.stages)
        step = min(step, kc) * chunks.CHUNK_BYTES
        kernels = (chunks._norm_qgemv_chunks_kernel, chunks._qgemv_chunks_kernel)
    else:
        step = triton.next_power_of_2(site.K // group) if pdl else max(1, cfg.block_k // group)
        const.update(KG=site.K // group, GROUP=group, BG=step)
        step = min(step, site.K // group) * group * bits // 8
        kernels = (triton_norm_qgemv._norm_qgemv_kernel, triton_qgemv._qgemv_kernel)
    if site.form == "norm":
        kernel, const = kernels[0], {**const, "EPS": EPS, "HAS_DELTA": True, "SLICE": 16, "SLICE_P2": 16}
    else:
        kernel, const = kernels[1], {**const, "SILU_MUL": site.form == "silu_mul"}
    stats = sass_stats.compile_sm90(kernel, types, const, cfg.warps, cfg.stages)
    return stats, bn * step, 1 if pdl else cfg.stages


def registers(args: argparse.Namespace) -> int:
    """--registers: each site's kernels in every candidate config compiled for sm_90: resources, programs per SM,
    weight bytes in flight per SM, SASS instructions per weight byte (the main loop's, or the whole kernel's)."""
    print(f"group {args.group}; sm_90 compile; per SM: programs by registers / by shared memory, weight KiB in "
          "flight (programs x step bytes x stages)\n")
    print("| site | dtype | config | registers | stack B | shared B | programs / SM | KiB in flight / SM | "
          "B a thread a step | SASS (loop) | SASS per byte | top opcodes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for site in SITES:
        if args.only not in site.name:
            continue
        for bits in args.bits:
            for name, cfg in triton_qgemv.candidates(site.K, bits).items():
                if args.candidates not in name and name != "shipped":
                    continue
                s, step, stages = compile_stats(site, bits, args.group, cfg)
                mine = step / (32 * cfg.warps)
                body = s.loop or s.instructions
                print(f"| {site.name} | int{bits} | {name} | {s.registers} | {s.stack} | {s.shared} | "
                      f"{s.programs_by_registers()} / {s.programs_by_shared()} | "
                      f"{s.programs() * step * stages / 1024:.0f} | {mine:.0f} | {s.instructions} ({s.loop}) | "
                      f"{body / mine:.1f} | {s.top(6)} |", flush=True)
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
    ap.add_argument("--configs", action="store_true", help="time every candidate config (triton_qgemv.candidates)")
    ap.add_argument("--bits", type=lambda v: tuple(int(b) for b in v.split(",")), default=(4, 8),
                    help="--configs, --registers: comma-separated, default 4,8")
    ap.add_argument("--groups", type=lambda v: tuple(int(g) for g in v.split(",")), default=(32, 128),
                    help="--configs: comma-separated group sizes, default 32,128")
    ap.add_argument("--candidates", default="", help="--configs, --registers: candidates whose name contains this")
    ap.add_argument("--error", action="store_true", help="only the reconstruction error of quantization schemes")
    args = ap.parse_args()
    if args.registers:
        return registers(args)
    if args.configs:
        return configs(args)
    if args.error:
        return error()
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
