"""Benchmark of the gdn Triton kernels on one CUDA device (CUDA events, medians), in one run:

- decode (fused recurrent gated delta rule) at Qwen3.5-35B-A3B shapes, a sweep of tiles and warps: us/call,
  bytes, GB/s against a device-to-device copy of the same bytes and of 1 GiB measured here; states rotate
  through more memory than L2 holds.
- chunked prefill at T = 1024, 4096, 8192: the fused path (default, and with the state update split) and the
  split path with session 10's precision, beside FLA's chunk_gated_delta_rule (if importable), eager and
  graphed, each with its per-kernel split.
- causal conv1d: us/call, decode and prefill.

Usage: python scripts/bench_gdn.py [--json out.json] [--only decode|prefill|conv] [--fp32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from gdn.kernels.causal_conv1d import reference as conv_ref
from gdn.kernels.causal_conv1d import triton_conv
from gdn.kernels.gated_delta_rule import reference as gdr_ref
from gdn.kernels.gated_delta_rule import triton_chunk, triton_decode

HK, HV, K, V, W = 16, 32, 128, 128, 4
ROTATE = 48  # states per rotation: 48 x 2 MiB = 96 MiB > the 50 MiB L2 of an H100


class Rows(list):
    """Table rows, each printed as soon as it is measured (a cut-off run still reports what it had)."""

    def append(self, row) -> None:
        super().append(row)
        print(f"{row[0]:<48}  {row[1]:>14}  {row[2]}", flush=True)


def timed(fn, reps: int = 30, inner: int = 20) -> float:
    """Median over `reps` of the mean time of `inner` back-to-back calls, in microseconds."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / inner)
    return statistics.median(samples)


def graphed(fn, calls: int):
    """Capture `calls` invocations of fn (each call index i) in one CUDA graph; returns replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(calls):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    return graph.replay


def copy_bandwidth(nbytes: int, rotate: int) -> tuple[float, float]:
    """(us per copy, GB/s counting read + write) for copies of `nbytes` rotating over `rotate` pairs, graphed.
    The copy is an SM kernel (x * 1): inside a CUDA graph, `copy_` becomes a memcpy node, which on the H100
    moved 2420 GB/s against 2970 for the same copy run eagerly or by any SM kernel, graphed or not."""
    src = [torch.randn(nbytes // 4, device="cuda") for _ in range(rotate)]
    dst = [torch.empty(nbytes // 4, device="cuda") for _ in range(rotate)]
    replay = graphed(lambda i: torch.mul(src[i], 1.0, out=dst[i]), rotate)
    us = timed(replay, inner=5) / rotate
    return us, 2 * nbytes / us / 1e3


def bench_copy(rows: list) -> float:
    us, gbs = copy_bandwidth(1 << 30, 1)
    rows.append(("copy 1 GiB d2d (graphed)", f"{us:.1f} us", f"{gbs:.0f} GB/s"))
    return gbs


def decode_inputs(dtype=torch.bfloat16):
    d = dict(device="cuda")
    return dict(
        q=torch.randn(1, 1, HK, K, **d).to(dtype), k=torch.randn(1, 1, HK, K, **d).to(dtype),
        v=torch.randn(1, 1, HV, V, **d).to(dtype), a=torch.randn(1, 1, HV, **d).to(dtype),
        b=torch.randn(1, 1, HV, **d).to(dtype), A_log=torch.rand(HV, **d), dt_bias=torch.randn(HV, **d),
    )


def bench_decode(rows: list, results: dict) -> None:
    x = decode_inputs()
    states = [torch.randn(1, HV, K, V, device="cuda") * 0.1 for _ in range(ROTATE)]
    reset = torch.zeros(1, dtype=torch.bool, device="cuda")
    out = torch.empty(1, 1, HV, V, dtype=torch.bfloat16, device="cuda")
    state_bytes = HV * K * V * 4
    moved = 2 * state_bytes + (2 * HK * K + 2 * HV * V + 2 * HV) * 2 + 2 * HV * 4
    copy_us, copy_gbs = copy_bandwidth(state_bytes, ROTATE)
    rows.append((f"copy {state_bytes >> 20} MiB d2d x{ROTATE} rotating (graphed)", f"{copy_us:.2f} us", f"{copy_gbs:.0f} GB/s"))
    results["decode_copy_gbs"] = copy_gbs
    args = lambda s: (x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], s, reset)
    big = results["copy_1GiB_gbs"]
    sweep = [(bv, 4, mode) for bv in (16, 32, 64) for mode in ("graphed", "eager")]
    sweep += [(bv, nw, "graphed") for bv in (8, 16, 32) for nw in (1, 2, 8)]
    for bv, nw, mode in sweep:
        call = lambda i, bv=bv, nw=nw: triton_decode.recurrent_gated_delta_rule(
            *args(states[i % ROTATE]), block_v=bv, out=out, num_warps=nw
        )
        if mode == "graphed":
            replay = graphed(call, ROTATE)
            us = timed(replay, inner=5) / ROTATE
        else:
            counter = iter(range(10**9))
            us = timed(lambda: call(next(counter)))
        gbs = moved / us / 1e3
        share = f"{100 * gbs / copy_gbs:.0f}% of the same-size copy, {100 * gbs / big:.0f}% of 1 GiB"
        rows.append((f"decode fused BV={bv} warps={nw} ({mode})", f"{us:.2f} us", f"{gbs:.0f} GB/s = {share}"))
        results[f"decode_bv{bv}_w{nw}_{mode}_us"] = us
    ref_call = lambda i: gdr_ref.recurrent_gated_delta_rule(*args(states[i % ROTATE]))
    replay = graphed(ref_call, ROTATE)
    us = timed(replay, inner=2, reps=10) / ROTATE
    rows.append(("decode reference PyTorch, unfused (graphed)", f"{us:.2f} us", f"{moved / us / 1e3:.0f} GB/s"))
    results["decode_reference_graphed_us"] = us
    rows.append(("decode bytes moved per call", f"{moved} B", "state read + write dominates"))


def prefill_inputs(T: int, dtype=torch.bfloat16):
    d = dict(device="cuda")
    a, b = torch.randn(1, T, HV, **d), torch.randn(1, T, HV, **d)
    A_log, dt_bias = torch.empty(HV, **d).uniform_(0.5, 8).log(), torch.randn(HV, **d) * 0.5
    g, beta = gdr_ref.gates(a, b, A_log, dt_bias)
    return dict(
        q=torch.randn(1, T, HK, K, **d).to(dtype), k=torch.randn(1, T, HK, K, **d).to(dtype),
        v=torch.randn(1, T, HV, V, **d).to(dtype), g=g, beta=beta, state=torch.randn(1, HV, K, V, **d) * 0.1,
        a=a, b=b, A_log=A_log, dt_bias=dt_bias,
    )


def kernel_split(fn) -> str:
    """CUDA time per kernel name (profiler), for one call after warm-up."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    parts = []
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0:
            parts.append(f"{e.key[:28]} {e.device_time_total / 1e3:.3f}")
    return "; ".join(parts)


PREFILL_PATHS = (  # row label, result-key slug, keywords of triton_chunk.chunk_gated_delta_rule
    ("fused (default)", "fused", {}),
    ("fused, state update split", "fused_state", dict(precision=triton_chunk.PRECISE_STATE16)),
    ("split, session 10 default", "split_s10", dict(path="split", precision=triton_chunk.PRECISE_STATE16)),
)


def time_path(ours, x: dict, reset: torch.Tensor, kw: dict) -> tuple:
    """-> eager ms, graphed ms, per-kernel split, and one call's output and final state."""
    ms = timed(ours, reps=9, inner=2) / 1e3
    # graphed: GPU time without the ~0.2 ms of Python per wrap_triton launch (fused launches 2, split 3)
    gms = timed(graphed(lambda i: ours(), 4), reps=9, inner=1) / 4 / 1e3
    split_line = kernel_split(ours)
    s1 = x["state"].clone()
    o1 = triton_chunk.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], s1, reset, **kw)
    return ms, gms, split_line, o1, s1


def bench_prefill(rows: list, results: dict, fp32: bool = False) -> None:
    """The prefill paths of PREFILL_PATHS side by side (fused: one sequential state + output pass; split: state
    pass + parallel output pass), each with its per-kernel profiler split."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
    except Exception as e:  # noqa: BLE001  (FLA is optional here; say why it is missing)
        fla_chunk = None
        rows.append(("FLA", "not importable", repr(e)[:80]))
    reset = torch.zeros(1, dtype=torch.bool, device="cuda")
    for T in (1024, 4096, 8192):
        for dtype in (torch.bfloat16, torch.float32) if T == 8192 and fp32 else (torch.bfloat16,):
            x = prefill_inputs(T, dtype)
            tag = "bf16" if dtype == torch.bfloat16 else "fp32"
            times, gtimes, finals = {}, {}, {}
            for label, slug, kw in PREFILL_PATHS:
                s = x["state"].clone()
                ours = lambda kw=kw, s=s: triton_chunk.chunk_gated_delta_rule(
                    x["q"], x["k"], x["v"], x["g"], x["beta"], s, reset, **kw
                )
                ms, gms, split_line, o1, s1 = time_path(ours, x, reset, kw)
                finals[slug] = (o1, s1)
                times[slug], gtimes[slug] = ms, gms
                results[f"prefill_T{T}_{tag}_{slug}_ms"] = ms
                results[f"prefill_T{T}_{tag}_{slug}_graphed_ms"] = gms
                rows.append((f"prefill ours {label} T={T} {tag}", f"{ms:.3f} ms",
                             f"graphed {gms:.3f} ms; kernels {split_line}"))
            (o_new, s_new), (o_old, s_old) = finals["fused"], finals["split_s10"]
            rel = ((o_new.float() - o_old.float()).norm() / o_old.float().norm()).item()
            srel = ((s_new - s_old).norm() / s_old.norm()).item()
            ratio = gtimes["fused"] / gtimes["split_s10"]
            rows.append((f"  fused / split s10 T={T} {tag}", f"{ratio:.2f}x",
                         f"graphed (eager {times['fused'] / times['split_s10']:.2f}x); "
                         f"rel diff o {rel:.1e} state {srel:.1e}"))
            if fla_chunk is None or dtype != torch.bfloat16:
                continue
            with torch.no_grad():
                theirs = lambda: fla_chunk(
                    x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["state"], output_final_state=True,
                    use_qk_l2norm_in_kernel=True,
                )
                fms = timed(theirs, reps=9, inner=2) / 1e3
                fla_split = kernel_split(theirs)
                try:
                    fgms = timed(graphed(lambda i: theirs(), 4), reps=9, inner=1) / 4 / 1e3
                except Exception as e:  # noqa: BLE001  (say why FLA could not be captured)
                    fgms = float("nan")
                    rows.append(("FLA graphed", "not captured", repr(e)[:80]))
                o_fla, s_fla = theirs()
            rel = ((o_new.float() - o_fla.float()).norm() / o_fla.float().norm()).item()
            srel = ((s_new - s_fla.float()).norm() / s_fla.float().norm()).item()
            results[f"prefill_T{T}_fla_ms"], results[f"prefill_T{T}_fla_graphed_ms"] = fms, fgms
            ratios = ", ".join(f"{slug} {gtimes[slug] / fgms:.2f}x" for slug in gtimes)
            rows.append((f"prefill FLA  T={T} bf16", f"{fms:.3f} ms",
                         f"graphed {fgms:.3f} ms; kernels {fla_split}"))
            rows.append((f"  ours/FLA T={T} bf16, graphed", ratios,
                         f"eager {times['fused'] / fms:.2f}x; fused vs FLA rel diff o {rel:.1e} state {srel:.1e}"))
            gate = lambda: gdr_ref.gates(x["a"], x["b"], x["A_log"], x["dt_bias"])
            rows.append((f"  gate math in PyTorch T={T}", f"{timed(gate) / 1e3:.3f} ms", "upper bound on fusing gates into the prep kernel"))


def bench_conv(rows: list, results: dict) -> None:
    """Eager (launch included) and graphed (GPU time) per call; graphed calls rotate over enough inputs
    (>= 200 MB) that a prefill input is not still in L2 from the previous call."""
    C = 2 * HK * K + HV * V
    weight = torch.randn(C, W, device="cuda")
    reset = torch.zeros(1, dtype=torch.bool, device="cuda")
    calls = 20
    for T in (1, 1024, 4096, 8192):
        nbuf = min(calls, -(-200_000_000 // (T * C * 2)))
        xs = [torch.randn(1, T, C, device="cuda").to(torch.bfloat16) for _ in range(nbuf)]
        sts = [torch.randn(1, W - 1, C, device="cuda").to(torch.bfloat16) for _ in range(nbuf)]
        x, st = xs[0], sts[0]
        us = timed(lambda: triton_conv.causal_conv1d(x, st, weight, reset))
        replay = graphed(lambda i: triton_conv.causal_conv1d(xs[i % nbuf], sts[i % nbuf], weight, reset), calls)
        gus = timed(replay, inner=5) / calls
        moved = 2 * x.numel() * 2 + weight.numel() * 4 + 2 * st.numel() * 2
        results[f"conv_T{T}_us"] = us
        results[f"conv_T{T}_graphed_us"] = gus
        extra = f"eager {us:.1f} us; {moved / gus / 1e3:.0f} GB/s graphed"
        if T == 1:
            results["conv_decode_graphed_us"] = gus
            extra += f"; reference eager {timed(lambda: conv_ref.causal_conv1d(x, st, weight, reset)):.1f} us"
        rows.append((f"conv T={T} C={C} bf16 (graphed)", f"{gus:.2f} us", extra))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--only", choices=["decode", "prefill", "conv"], action="append")
    parser.add_argument("--fp32", action="store_true", help="also time the fp32 prefill at T = 8192 (slow: ~0.1 s a call)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gdn: needs a CUDA device", file=sys.stderr)
        return 2
    rows = Rows()
    rows.append(("device", torch.cuda.get_device_name(0), f"torch {torch.__version__}"))
    results: dict = {"device": torch.cuda.get_device_name(0)}
    results["copy_1GiB_gbs"] = bench_copy(rows)
    sections = {"decode": bench_decode, "conv": bench_conv,
                "prefill": lambda rows, results: bench_prefill(rows, results, args.fp32)}
    for name in args.only or list(sections):
        sections[name](rows, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
