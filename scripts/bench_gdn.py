"""Benchmark of the gated delta rule and causal conv1d kernels that the gdn ops ship, on one CUDA device.

Qwen3.5-35B-A3B shapes: Hk 16, Hv 32, K = V = 128; conv width 4 over C = 2 Hk K + Hv V = 8192 channels. Times
are GPU time from CUDA-graph replays (scripts/timing.py); eager calls would add the Python of each `wrap_triton`
launch, which the ops inside artifacts never pay.

- decode: one token, states rotating through more memory than L2 holds; us per call and GB/s against the SM
  copy of the same bytes (rotating likewise) and of 1 GiB; the plain-PyTorch reference beside it.
- chunked prefill at T = 1024, 4096, 8192 bf16 (and T = 8192 fp32 with --fp32): ms per call with the profiler's
  per-kernel medians, beside FLA's chunk_gated_delta_rule when importable (same inputs; how far its o and state
  are from ours).
- causal conv1d: decode (T = 1) and prefill (T = 1024, 4096, 8192), inputs rotating past L2: us per call and
  % of the 1 GiB copy rate; the plain-PyTorch reference beside it.
- fused: a GDN layer's decode step after in_proj, at the 2B (Hv 16) and 35B-A3B (Hv 32) shapes, bf16, as the
  model launches it (the ops, PDL on): gdn::conv_recurrent_gated_delta_rule + gdn::gated_norm_gemv (out_proj
  2048 x Hv V) against the unfused chain, causal_conv1d + recurrent_gated_delta_rule + the gated norm as Inductor
  compiles it + gdn::gemv; each also without out_proj. States and out_proj weights rotate past L2.

Usage: python scripts/bench_gdn.py [--only decode|prefill|conv|fused ...] [--fp32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

import torch

from gdn.kernels.causal_conv1d import reference as conv_ref
from gdn.kernels.causal_conv1d import triton_conv
from gdn.kernels.gated_delta_rule import reference as gdr_ref
from gdn.kernels.gated_delta_rule import triton_chunk, triton_decode
from timing import copy_bandwidth, flush_l2, graphed, kernel_medians, median_us, Table  # scripts/ is on sys.path as a script

HK, HV, K, V, W = 16, 32, 128, 128, 4
C = 2 * HK * K + HV * V
ROTATE = 48  # decode states per rotation: 48 x 2 MiB = 96 MiB, past the 50 MiB L2 of an H100
PREFILL_T = (1024, 4096, 8192)
CONV_T = (1, 1024, 4096, 8192)
ROTATE_BYTES = 200_000_000  # conv inputs per rotation, past L2


def rotated_us(call: Callable[[int], object], n: int, iters: int = 20, inner: int = 5) -> float:
    """us per call of call(0), ..., call(n - 1) replayed from one CUDA graph."""
    return median_us(graphed(call, n), iters=iters, inner=inner) / n


def kernels_line(fn: Callable[[], object]) -> str:
    """The profiler's median us per kernel of one call (L2 flushed before each call)."""
    return ", ".join(f"{name[:40]} {us:.1f}" for name, us in kernel_medians(fn).items())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def bench_decode(t: Table, copy_1g: float) -> None:
    d = dict(device="cuda")
    x = [torch.randn(1, 1, HK, K, **d).bfloat16(), torch.randn(1, 1, HK, K, **d).bfloat16(),
         torch.randn(1, 1, HV, V, **d).bfloat16(), torch.randn(1, 1, HV, **d).bfloat16(),
         torch.randn(1, 1, HV, **d).bfloat16(), torch.rand(HV, **d).log(), torch.randn(HV, **d)]
    states = [torch.randn(1, HV, K, V, **d) * 0.1 for _ in range(ROTATE)]
    reset = torch.zeros(1, dtype=torch.bool, **d)
    out = torch.empty(1, 1, HV, V, dtype=torch.bfloat16, **d)
    state_bytes = HV * K * V * 4
    moved = 2 * state_bytes + sum(a.numel() * a.element_size() for a in x) + out.numel() * 2
    copy = copy_bandwidth(state_bytes, ROTATE)
    us = rotated_us(lambda i: triton_decode.recurrent_gated_delta_rule(*x, states[i % ROTATE], reset, out=out), ROTATE)
    ref = rotated_us(lambda i: gdr_ref.recurrent_gated_delta_rule(*x, states[i % ROTATE], reset), ROTATE)
    gbs = moved / us / 1e3
    t.row(f"copy {state_bytes >> 20} MiB x {ROTATE} rotating", f"{state_bytes * 2 / copy * 1e6:.2f} us",
          f"{copy / 1e9:.0f} GB/s")
    t.row("decode", f"{us:.2f} us", f"{moved} B, {gbs:.0f} GB/s = {gbs * 1e9 / copy:.0%} of the same-size copy, "
          f"{gbs * 1e9 / copy_1g:.0%} of 1 GiB")
    t.row("decode reference (PyTorch, unfused)", f"{ref:.2f} us", f"{ref / us:.1f}x ours")
    t.put("decode", dict(us=us, bytes=moved, gbs=gbs, copy_same_size_gbs=copy / 1e9, reference_us=ref))


def prefill_inputs(T: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    d = dict(device="cuda")
    a, b = torch.randn(1, T, HV, **d), torch.randn(1, T, HV, **d)
    g, beta = gdr_ref.gates(a, b, torch.empty(HV, **d).uniform_(0.5, 8).log(), torch.randn(HV, **d) * 0.5)
    return dict(q=torch.randn(1, T, HK, K, **d).to(dtype), k=torch.randn(1, T, HK, K, **d).to(dtype),
                v=torch.randn(1, T, HV, V, **d).to(dtype), g=g, beta=beta, state=torch.randn(1, HV, K, V, **d) * 0.1)


def fla_chunk() -> Callable | None:
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as e:  # noqa: BLE001  (FLA is an optional peer; say why it is missing)
        print(f"FLA not importable: {e!r}"[:120], flush=True)
        return None
    return chunk_gated_delta_rule


def fla_row(t: Table, tag: str, x: dict[str, torch.Tensor], ms: float, fla: Callable) -> float | None:
    """FLA's ms per call on the same inputs (None where it cannot be graphed), with how far its o and state are
    from ours."""
    theirs = lambda: fla(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["state"],
                         output_final_state=True, use_qk_l2norm_in_kernel=True)
    with torch.no_grad():
        try:
            fms = rotated_us(lambda i: theirs(), 4, iters=9, inner=1) / 1e3
        except Exception as e:  # noqa: BLE001  (say why FLA could not be captured)
            t.row(f"prefill FLA {tag}", "not graphed", repr(e)[:80])
            return None
        line = kernels_line(theirs)
        o_fla, s_fla = theirs()
    s_ours = x["state"].clone()
    reset = torch.zeros(1, dtype=torch.bool, device="cuda")
    o = triton_chunk.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], s_ours, reset)
    diff = f"o differs from ours by {rel(o_fla, o):.1e}, state {rel(s_fla, s_ours):.1e}"
    t.row(f"prefill FLA {tag}", f"{fms:.3f} ms", f"ours / FLA {ms / fms:.2f}x; {diff}; {line}")
    return fms


def bench_prefill_one(t: Table, T: int, dtype: torch.dtype, fla: Callable | None) -> None:
    x = prefill_inputs(T, dtype)
    tag = f"T={T} {'bf16' if dtype == torch.bfloat16 else 'fp32'}"
    reset = torch.zeros(1, dtype=torch.bool, device="cuda")
    state = x["state"].clone()
    ours = lambda: triton_chunk.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], state, reset)
    ms = rotated_us(lambda i: ours(), 4, iters=9, inner=1) / 1e3
    t.row(f"prefill {tag}", f"{ms:.3f} ms", kernels_line(ours))
    fms = fla_row(t, tag, x, ms, fla) if fla is not None and dtype == torch.bfloat16 else None
    t.put(f"prefill {tag}", dict(ms=ms, fla_ms=fms))


def bench_prefill(t: Table, fp32: bool) -> None:
    fla = fla_chunk()
    flush_l2()  # allocates its buffer outside the profiled calls
    for T in PREFILL_T:
        bench_prefill_one(t, T, torch.bfloat16, fla)
    if fp32:
        bench_prefill_one(t, PREFILL_T[-1], torch.float32, fla)


def bench_conv(t: Table, copy_1g: float) -> None:
    weight = torch.randn(C, W, device="cuda")
    reset = torch.zeros(1, dtype=torch.bool, device="cuda")
    for T in CONV_T:
        n = max(2, min(20, -(-ROTATE_BYTES // (T * C * 2))))
        xs = [torch.randn(1, T, C, device="cuda").bfloat16() for _ in range(n)]
        sts = [torch.randn(1, W - 1, C, device="cuda").bfloat16() for _ in range(n)]
        us = rotated_us(lambda i: triton_conv.causal_conv1d(xs[i], sts[i], weight, reset), n)
        ref = rotated_us(lambda i: conv_ref.causal_conv1d(xs[i], sts[i], weight, reset), n)
        moved = 2 * T * C * 2 + weight.numel() * 4 + 2 * (W - 1) * C * 2  # x read, y written, weight, state
        gbs = moved / us / 1e3
        t.row(f"conv T={T} C={C} bf16", f"{us:.2f} us",
              f"{gbs:.0f} GB/s = {gbs * 1e9 / copy_1g:.0%} of copy; reference {ref:.2f} us")
        t.put(f"conv T={T}", dict(us=us, gbs=gbs, reference_us=ref))


def fused_inputs(hv: int) -> dict:
    """One layer's decode-step tensors at Hk 16, Hv = hv, K = V = 128 (in_proj output, weights, rotated states)."""
    d = dict(device="cuda")
    c = 2 * HK * K + hv * V
    n = ROTATE
    return dict(x=torch.randn(1, c + hv * V + 2 * hv, **d).bfloat16(), cw=torch.randn(c, W, **d).bfloat16(),
                A_log=torch.rand(hv, **d).log(), dt_bias=torch.randn(hv, **d), nw=torch.ones(V, **d).bfloat16(),
                cs=[torch.randn(1, W - 1, c, **d).bfloat16() for _ in range(n)],
                s=[torch.randn(1, hv, K, V, **d) * 0.1 for _ in range(n)],
                w=[torch.randn(2048, hv * V, **d).bfloat16() * (hv * V) ** -0.5 for _ in range(n)],
                reset=torch.zeros(1, dtype=torch.bool, **d), count=torch.ones(1, dtype=torch.int64, **d), c=c, hv=hv)


def fused_step(x: dict, i: int, out_proj: bool):
    o = torch.ops.gdn.conv_recurrent_gated_delta_rule(x["x"], x["cs"][i], x["cw"], x["A_log"], x["dt_bias"], x["s"][i],
                                                      x["reset"], x["count"])
    if not out_proj:
        return o
    z = x["x"][:, x["c"] : x["c"] + x["hv"] * V]
    return torch.ops.gdn.gated_norm_gemv(o.view(1, -1), z, x["nw"], 1e-6, x["w"][i])


def unfused_step(x: dict, i: int, out_proj: bool, norm: Callable):
    c, hv = x["c"], x["hv"]
    qkv, z, b, a = x["x"].split([c, hv * V, hv, hv], dim=-1)
    y = torch.ops.gdn.causal_conv1d(qkv.unsqueeze(0), x["cs"][i], x["cw"], x["reset"], x["count"])
    q, k, v = y.split([HK * K, HK * K, hv * V], dim=-1)
    o = torch.ops.gdn.recurrent_gated_delta_rule(
        q.reshape(1, 1, HK, K), k.reshape(1, 1, HK, K), v.reshape(1, 1, hv, V), a.view(1, 1, hv), b.view(1, 1, hv),
        x["A_log"], x["dt_bias"], x["s"][i], x["reset"], x["count"])
    if not out_proj:
        return o
    return torch.ops.gdn.gemv(norm(o.view(hv, V), z.view(hv, V), x["nw"]).view(1, -1), x["w"][i], "none")


def bench_fused(t: Table) -> None:
    from gdn.kernels.gemv.reference import gated_rms_norm

    torch._dynamo.reset()
    norm = torch.compile(lambda o, z, g: gated_rms_norm(o, z, g, 1e-6), fullgraph=True, dynamic=False)
    for name, hv in (("2B", 16), ("35B-A3B", 32)):
        x = fused_inputs(hv)
        for out_proj in (False, True):
            tag = f"{name} Hv={hv}" + (", with out_proj" if out_proj else "")
            fused = rotated_us(lambda i: fused_step(x, i, out_proj), ROTATE)
            unfused = rotated_us(lambda i: unfused_step(x, i, out_proj, norm), ROTATE)
            t.row(f"fused step {tag}", f"{fused:.2f} us", f"unfused {unfused:.2f} us ({unfused - fused:+.2f} us)")
            t.put(f"fused {tag}", dict(fused_us=fused, unfused_us=unfused))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["decode", "prefill", "conv", "fused"], action="append")
    parser.add_argument("--fp32", action="store_true", help="also time the fp32 prefill at T = 8192")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gdn: needs a CUDA device", file=sys.stderr)
        return 2
    t = Table(44)
    t.row("device", torch.cuda.get_device_name(0), f"torch {torch.__version__}")
    copy_1g = copy_bandwidth()
    t.row("copy 1 GiB (SM copy kernel)", "", f"{copy_1g / 1e9:.0f} GB/s")
    t.put("device", torch.cuda.get_device_name(0))
    t.put("copy_1GiB_gbs", copy_1g / 1e9)
    sections = {"decode": lambda: bench_decode(t, copy_1g), "prefill": lambda: bench_prefill(t, args.fp32),
                "conv": lambda: bench_conv(t, copy_1g), "fused": lambda: bench_fused(t)}
    for name in args.only or list(sections):
        sections[name]()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(t.results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
