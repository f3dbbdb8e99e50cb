"""Kernel benchmark of the one-token projections (gdn::gemv, gdn::norm_gemv, gdn::gated_norm_gemv) on one CUDA GPU,
at every decode projection shape of Qwen3.5-2B and Qwen3.5-35B-A3B, bf16.

Per shape:
- "op alone": the op's kernel in its shipped config (`triton_gemv.default_config`), the PDL form launched in
  stream order, so no call overlaps another; GB/s over the weight bytes and % of copy bandwidth;
- "op chained": the op as the model launches it (with PDL where its config has it), back to back, so each call's
  weight loads overlap the tail of the one before;
- cuBLAS: `F.linear` of the same one row (its input computed beforehand);
- norm_gemv sites: the residual add and the norm as one Inductor kernel, then gdn::gemv (the model without the
  fusion); gated_norm_gemv sites (GDN out_proj): the gated RMS norm as Inductor compiles it, then gdn::gemv;
- with --inductor: Inductor's autotuned Triton GEMM template with the op's input computation in front (what
  AOTInductor compiles for a one-row linear without our ops); slow to compile.
Every column: all calls replayed from one CUDA graph over enough weight copies that none is served from L2,
median per call (scripts/timing.py).

    python scripts/bench_gemv.py [--inductor] [--only SUBSTRING] > table.md
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from gdn.kernels.gemv import reference, triton_gated_norm_gemv, triton_gemv, triton_norm_gemv  # registers the ops

import timing  # scripts/ is on sys.path when run as a script

DT = torch.bfloat16
EPS = 1e-6
ROTATE_BYTES = 512 << 20  # weights cycled per graph: ten times the H100's L2
TEMPLATE = {"max_autotune": True, "max_autotune_gemm_backends": "TRITON"}
GDN_V = 128  # the GDN value head size of both models (gated norm sites)


@dataclass(frozen=True)
class Site:
    name: str
    N: int
    K: int
    form: str  # "norm" (gdn::norm_gemv), "gated" (gdn::gated_norm_gemv), or gdn::gemv's act: "none" / "silu_mul"


# hidden 2048; 2B: GDN Hk = Hv = 16 heads of 128, attention 8 query / 2 KV heads of 256, MLP 6144;
# 35B-A3B: GDN Hv = 32, attention 16 / 2 heads, 256 experts, shared expert 512. in_proj = 2 Hk dk + 2 Hv dv + 2 Hv,
# qkv = 2 Hq D + 2 Hkv D, router_shared = E + 2 S + 1.
SITES = [
    Site("2B GDN in_proj", 8224, 2048, "norm"),
    Site("2B attention qkv", 5120, 2048, "norm"),
    Site("2B MLP gate_up", 12288, 2048, "norm"),
    Site("2B GDN out_proj, attention o_proj", 2048, 2048, "none"),
    Site("2B MLP down", 2048, 6144, "silu_mul"),
    Site("35B-A3B GDN in_proj", 12352, 2048, "norm"),
    Site("35B-A3B attention qkv", 9216, 2048, "norm"),
    Site("35B-A3B MoE router/shared", 1281, 2048, "norm"),
    Site("35B-A3B GDN out_proj, attention o_proj", 2048, 4096, "none"),
    Site("2B GDN out_proj, gated norm", 2048, 2048, "gated"),
    Site("35B-A3B GDN out_proj, gated norm", 2048, 4096, "gated"),
    Site("lm_head (both)", 248320, 2048, "norm"),
]


def add_norm(x: torch.Tensor, d: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = x + d
    return r, reference.rms_norm(r, g, EPS)


def gated_norm(o: torch.Tensor, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """[1, Hv V] -> the GDN layer's gated RMS norm per head of GDN_V, flattened."""
    return reference.gated_rms_norm(o.view(1, -1, GDN_V), z.view(1, -1, GDN_V), g, EPS).view(1, -1)


def inputs(site: Site) -> dict[str, torch.Tensor]:
    """One call's tensors: x (and delta d, gain g) as the op takes them, w [N, K], and a [1, K]: the linear's own
    input (the activation, or the normed residual)."""
    N, K = site.N, site.K
    x = torch.randn(1, 2 * K if site.form == "silu_mul" else K, device="cuda", dtype=DT)
    t = {"x": x, "w": torch.randn(N, K, device="cuda", dtype=DT) * K**-0.5}
    if site.form == "norm":
        t["d"] = torch.randn(1, K, device="cuda", dtype=DT)
        t["g"] = 0.1 * torch.randn(K, device="cuda", dtype=DT)
        t["a"] = add_norm(x, t["d"], t["g"])[1]
    elif site.form == "gated":  # x is the recurrence's o, d the gate z, g the norm's plain weight [V]
        t["d"] = torch.randn(1, K, device="cuda", dtype=DT)
        t["g"] = 1 + 0.1 * torch.randn(GDN_V, device="cuda", dtype=DT)
        t["a"] = gated_norm(x, t["d"], t["g"])
    else:
        t["a"] = reference.activation(x, site.form)
    return t


def template(site: Site) -> Callable[[dict[str, torch.Tensor]], object]:
    """The site's whole computation for Inductor's GEMM template (compiled on first call)."""
    if site.form == "norm":
        fn = lambda t: reference.norm_gemv(t["x"], t["d"], t["g"], EPS, t["w"])  # noqa: E731
    elif site.form == "gated":
        fn = lambda t: reference.gated_norm_gemv(t["x"], t["d"], t["g"], EPS, t["w"])  # noqa: E731
    else:
        fn = lambda t: reference.gemv(t["x"], t["w"], site.form)  # noqa: E731
    torch._dynamo.reset()
    return torch.compile(fn, options=TEMPLATE, fullgraph=True, dynamic=False)


def contenders(site: Site, with_template: bool) -> dict[str, Callable[[dict[str, torch.Tensor]], object]]:
    """Column -> one call on one copy's tensors."""
    gemv = site.form not in ("norm", "gated")
    cfg = triton_gemv.gemv_config(site.N, site.K) if gemv else triton_gemv.default_config(site.K)
    alone = replace(cfg, pdl="serial") if cfg.pdl == "on" else cfg  # same kernel, launched in stream order
    if site.form == "norm":
        torch._dynamo.reset()
        separate = torch.compile(add_norm, fullgraph=True, dynamic=False)
        fns = {
            "alone": lambda t: triton_norm_gemv.norm_gemv(t["x"], t["d"], t["g"], EPS, t["w"], alone),
            "chained": lambda t: torch.ops.gdn.norm_gemv(t["x"], t["d"], t["g"], EPS, t["w"]),
            "separate": lambda t: torch.ops.gdn.gemv(separate(t["x"], t["d"], t["g"])[1], t["w"], "none"),
        }
    elif site.form == "gated":
        torch._dynamo.reset()
        separate = torch.compile(gated_norm, fullgraph=True, dynamic=False)
        fns = {
            "alone": lambda t: triton_gated_norm_gemv.gated_norm_gemv(t["x"], t["d"], t["g"], EPS, t["w"], alone),
            "chained": lambda t: torch.ops.gdn.gated_norm_gemv(t["x"], t["d"], t["g"], EPS, t["w"]),
            "separate": lambda t: torch.ops.gdn.gemv(separate(t["x"], t["d"], t["g"]), t["w"], "none"),
        }
    else:
        fns = {
            "alone": lambda t: triton_gemv.gemv(t["x"], t["w"], site.form, alone),
            "chained": lambda t: torch.ops.gdn.gemv(t["x"], t["w"], site.form),
        }
    fns["cublas"] = lambda t: F.linear(t["a"], t["w"])
    if with_template:
        fns["inductor"] = template(site)
    return fns


def per_call_us(fn: Callable[[dict[str, torch.Tensor]], object], copies: list[dict[str, torch.Tensor]],
                iters: int) -> float:
    """Median us per call of fn over every copy, all calls replayed from one graph."""
    fn(copies[0])  # compile / autotune outside the graph
    return timing.median_us(timing.graphed(lambda i: fn(copies[i]), len(copies)), iters=iters) / len(copies)


def measure(site: Site, with_template: bool, iters: int) -> dict[str, float]:
    count = max(2, math.ceil(ROTATE_BYTES / (site.N * site.K * DT.itemsize)))
    copies = [inputs(site) for _ in range(count)]
    times = {name: per_call_us(fn, copies, iters) for name, fn in contenders(site, with_template).items()}
    del copies
    torch.cuda.empty_cache()
    return times


def row(site: Site, us: dict[str, float], copy: float) -> str:
    weight_bytes = site.N * site.K * DT.itemsize
    gbs = weight_bytes / (us["alone"] * 1e-6) / 1e9

    def cell(name: str) -> str:
        return f"{us[name]:.2f}" if name in us else "-"

    return (f"| {site.name} | {site.N} x {site.K} | {site.form} | {weight_bytes / 1e6:.1f} | {cell('alone')} | "
            f"{gbs:.0f} | {100 * gbs * 1e9 / copy:.1f} | {cell('chained')} | {cell('cublas')} | "
            f"{cell('separate')} | {cell('inductor')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inductor", action="store_true", help="also time Inductor's autotuned GEMM template")
    ap.add_argument("--only", default="", help="sites whose name contains this")
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    copy = timing.copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}, bf16; copy bandwidth {copy / 1e9:.0f} GB/s (read + write); "
          f"us per call, graphed, weights rotated past L2\n")
    print("| site | N x K | input | weights MB | op alone us | GB/s | % of copy | op chained us | cuBLAS us | "
          "norm (Inductor), then gemv us | Inductor template us |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for site in SITES:
        if args.only in site.name:
            print(row(site, measure(site, args.inductor, args.iters), copy), flush=True)


if __name__ == "__main__":
    main()
