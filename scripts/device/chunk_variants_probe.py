"""Chunked prefill on 16-bit inputs: speed and error of `triton_chunk.Precision16` variants beside FLA 0.6.0,
in one run. Errors are relative RMS against the float64 recurrence (tests' `truth`) at Qwen3.5 shapes (Hk 16,
Hv 32, K = V = 128, bf16), random and aligned keys, fresh inputs per trial; times are graphed medians
(bench_gdn's `timed`, `graphed`) with the profiler's per-kernel split.

    python scripts/device/chunk_variants_probe.py [--trials 3] [--only label,label]

Labels name VARIANTS through the fused path; label@split goes through the split path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from gdn.kernels.gated_delta_rule.triton_chunk import (  # noqa: E402
    PRECISE16, PRECISE_STATE16, Precision16, chunk_gated_delta_rule,
)

VARIANTS = {  # label -> Precision16 (the default, and more precise choices)
    "default": Precision16(),
    "state": PRECISE_STATE16,
    "all1": Precision16(qkv_terms=1),
    "qkv3": Precision16(qkv_terms=3),
    "u16": Precision16(u_16=True),
    "session9": PRECISE16,
}


def options(label: str) -> dict:
    """label or label@split: the precision through the fused path, or through the split path."""
    name, _, path = label.partition("@")
    return dict(precision=VARIANTS[name], path=path or "fused")


def fla_fn():
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
    except Exception as e:  # noqa: BLE001  (FLA is optional; say why it is missing)
        print(f"FLA not importable: {e!r}"[:120])
        return None

    def run(x, state):
        with torch.no_grad():
            o, s = fla_chunk(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=state,
                             output_final_state=True, use_qk_l2norm_in_kernel=True)
        return o, s

    return run


def errors(variants: dict, fla, trials: int) -> None:
    import test_gated_delta_rule as t

    for keys in ("random", "aligned"):
        c = t.Case(1000, 16, 32, 128, 128, torch.bfloat16, "rand", keys)
        acc = {}
        for _ in range(trials):
            x = t.make(c, "cuda")
            o64, s64 = t.truth(x)
            reset = torch.zeros(1, dtype=torch.bool, device="cuda")
            for label, kw in variants.items():
                s = x["state"].clone()
                out = torch.full_like(x["v"], float("nan"))
                o = chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], s, reset, out=out,
                                           **kw)
                acc.setdefault(label, []).append((t.rel_rms(o, o64), t.rel_rms(s, s64)))
            if fla is not None:
                o, s = fla(x, x["state"].clone())
                acc.setdefault("FLA 0.6.0", []).append((t.rel_rms(o, o64), t.rel_rms(s, s64)))
        for label, errs in acc.items():
            om, sm = (max(e[i] for e in errs) for i in (0, 1))
            print(f"error T=1000 {keys:7s} {label:14s} o max {om:.2e}  state max {sm:.2e}  ({trials} trials)",
                  flush=True)


def speed(variants: dict, fla, block_v: int = 0) -> None:
    import bench_gdn as b

    reset = torch.zeros(1, dtype=torch.bool, device="cuda")
    for T in (1024, 4096, 8192):
        x = b.prefill_inputs(T, torch.bfloat16)
        times = {}
        for label, kw in variants.items():
            s = x["state"].clone()
            fn = lambda s=s, kw=kw: chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], s,
                                                             reset, block_v=block_v, **kw)
            times[label] = b.timed(b.graphed(lambda i: fn(), 4), reps=9, inner=1) / 4 / 1e3
            print(f"speed T={T} {label:14s} graphed {times[label]:.3f} ms; kernels {b.kernel_split(fn)}", flush=True)
        if fla is not None:
            s = x["state"].clone()
            fn = lambda: fla(x, s)
            ftime = b.timed(b.graphed(lambda i: fn(), 4), reps=9, inner=1) / 4 / 1e3
            ratios = ", ".join(f"{k} {v / ftime:.2f}x" for k, v in times.items())
            print(f"speed T={T} FLA 0.6.0      graphed {ftime:.3f} ms; ours/FLA: {ratios}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--only", help="comma-separated variant labels")
    p.add_argument("--skip-errors", action="store_true")
    p.add_argument("--prep-warps", type=int)
    p.add_argument("--block-v", type=int, default=0, help="state-pass V tile")
    p.add_argument("--state-stages", type=int)
    p.add_argument("--no-inverse", action="store_true", help="timing only: the prep kernel's WY inverse "
                   "replaced by the identity (wrong results), to see its share of the prep time")
    args = p.parse_args()
    from gdn.kernels.gated_delta_rule import triton_chunk

    if args.state_stages:
        triton_chunk.STATE_STAGES = args.state_stages
    if args.prep_warps:
        triton_chunk.PREP_WARPS = args.prep_warps
    if args.no_inverse:
        import triton
        import triton.language as tl

        @triton.jit
        def identity(a, ri, PREC: tl.constexpr):
            return tl.where(ri[:, None] == ri[None, :], 1.0, 0.0) + a * 0.0

        triton_chunk._unit_lower_inverse = identity
        args.skip_errors = True
    labels = args.only.split(",") if args.only else list(VARIANTS)
    variants = {k: options(k) for k in labels}
    fla = fla_fn()
    print(f"device: {torch.cuda.get_device_name()}", flush=True)
    speed(variants, fla, args.block_v)
    if not args.skip_errors:
        errors(variants, fla, args.trials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
