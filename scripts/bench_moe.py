"""MoE benchmark on one CUDA GPU: decode at Qwen3.5-35B-A3B shapes (µs per layer, GB/s over the bytes read,
against measured copy bandwidth) and prefill T = 512/2048/8192 (TFLOP/s against the measured bf16 matmul
rate), side by side with the naive gathered-weights path (reference.moe). CUDA events, medians; L2 is
flushed before every timed call (a real model's 256 experts per layer never sit in L2).

    python scripts/bench_moe.py [--sweep] > table.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass

import torch

from gdn.kernels.moe import reference
from gdn.kernels.moe.decode import DecodeConfig, decode_down, decode_gate_up, moe_decode
from gdn.kernels.moe.prefill import PrefillConfig, moe_prefill

H, I, E, K, S = 2048, 512, 256, 8, 512
DT = torch.bfloat16
FLUSH = None


@dataclass
class Timing:
    eager_us: float
    graph_us: float | None


def flush_l2() -> None:
    FLUSH.zero_()


def median_us(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        flush_l2()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times)


def timed(fn, iters: int = 50, graph: bool = True) -> Timing:
    """Median µs of `fn` eagerly and replayed from a CUDA graph (capture also proves it is capture-safe)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    eager = median_us(fn, iters)
    if not graph:
        return Timing(eager, None)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        fn()
    return Timing(eager, median_us(g.replay, iters))


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / (timed(lambda: dst.copy_(src), 20, graph=False).eager_us * 1e-6)


def matmul_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=DT)
    b = torch.randn(8192, 8192, device="cuda", dtype=DT)
    return 2 * 8192**3 / (timed(lambda: a @ b, 20, graph=False).eager_us * 1e-6)


def weights():
    gate_up = torch.randn(E, 2 * I, H, device="cuda", dtype=DT) * H**-0.5
    down = torch.randn(E, H, I, device="cuda", dtype=DT) * I**-0.5
    router_shared = torch.randn(E + 2 * S + 1, H, device="cuda", dtype=DT) * H**-0.5  # [E+2S+1, H]
    shared_down = torch.randn(H, S, device="cuda", dtype=DT) * S**-0.5
    return gate_up, down, router_shared, shared_down


def layer_separate(x, w):
    gate_up, down, router_shared, shared_down = w
    logits, act, gate = (x @ router_shared.T).split([E, 2 * S, 1], dim=-1)
    return torch.ops.gdn.moe(x, logits, gate_up, down, K, True) + reference.shared_expert(act, gate, shared_down)


def layer_fused(x, w):
    gate_up, down, router_shared, shared_down = w
    return torch.ops.gdn.moe_shared(x, x @ router_shared.T, gate_up, down, shared_down, K, True)


def row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def fmt(v, spec=".1f") -> str:
    return "—" if v is None else format(v, spec)


def decode_table(w, bw: float, sweep: bool) -> list[str]:
    gate_up, down, router_shared, shared_down = w
    x = torch.randn(1, H, device="cuda", dtype=DT)
    logits = (x @ router_shared[:E].T).contiguous()
    expert_bytes = 3 * I * H * 2
    routed, shared, router = K * expert_bytes, 3 * S * H * 2, (E + 1) * H * 2
    cases = [
        ("naive gathered weights (reference.moe), routed", routed, lambda: reference.moe(x, logits, gate_up, down, K, True)),
        ("gdn::moe, routed", routed, lambda: torch.ops.gdn.moe(x, logits, gate_up, down, K, True)),
        ("layer: router+shared linear, gdn::moe, shared in torch", routed + shared + router, lambda: layer_separate(x, w)),
        ("layer: router+shared linear, gdn::moe_shared (fused)", routed + shared + router, lambda: layer_fused(x, w)),
    ]
    cfg0 = DecodeConfig()
    h, ids, wts = decode_gate_up(x, logits, gate_up, K, True, cfg0)
    out_buf = torch.empty_like(x)
    cases += [
        ("  of which kernel 1 (router + gate/up + silu*up)", 2 * I * H * 2 * K,
         lambda: decode_gate_up(x, logits, gate_up, K, True, cfg0)),
        ("  of which kernel 2 (down, weighted sum)", I * H * 2 * K,
         lambda: decode_down(h, ids, wts, down, out_buf, None, cfg0)),
    ]
    if sweep:
        for cfg in [DecodeConfig(block_i=bi, block_h=bh, block_out=bo, tile_down=td, warps_gate_up=wg, warps_down=wd)
                    for bi, bh, bo, td, wg, wd in [(8, 1024, 4, 16384, 8, 8), (2, 2048, 4, 16384, 4, 8),
                                                   (4, 2048, 8, 16384, 8, 8)]]:
            cases.append((f"moe_decode {cfg}", routed, lambda cfg=cfg: moe_decode(x, logits, gate_up, down, K, True, cfg=cfg)))
    out = [f"Decode, T=1, H {H}, I {I}, E {E}, top-{K}, shared {S}, bf16. Bytes: 8 experts {routed / 1e6:.1f} MB, "
           f"shared expert {shared / 1e6:.1f} MB, router {router / 1e6:.2f} MB. Copy bandwidth {bw / 1e9:.0f} GB/s.", "",
           row(["path", "MB read", "µs eager", "µs CUDA graph", "GB/s (graph)", "% of copy BW"]),
           row(["---"] * 6)]
    for name, nbytes, fn in cases:
        t = timed(fn)
        gbs = nbytes / (t.graph_us * 1e-6) / 1e9
        out.append(row([name, f"{nbytes / 1e6:.1f}", fmt(t.eager_us), fmt(t.graph_us), f"{gbs:.0f}",
                        f"{100 * gbs * 1e9 / bw:.0f}%"]))
    return out


def decode_next_row(bw: float) -> list[str]:
    """Qwen3-Next-80B routed experts: E 512, top-10, same H and I."""
    gate_up = torch.randn(512, 2 * I, H, device="cuda", dtype=DT) * H**-0.5
    down = torch.randn(512, H, I, device="cuda", dtype=DT) * I**-0.5
    x = torch.randn(1, H, device="cuda", dtype=DT)
    logits = torch.randn(1, 512, device="cuda", dtype=DT)
    nbytes = 10 * 3 * I * H * 2
    t = timed(lambda: torch.ops.gdn.moe(x, logits, gate_up, down, 10, True))
    gbs = nbytes / (t.graph_us * 1e-6) / 1e9
    return [row(["gdn::moe, routed, Qwen3-Next E 512 top-10", f"{nbytes / 1e6:.1f}", fmt(t.eager_us), fmt(t.graph_us),
                 f"{gbs:.0f}", f"{100 * gbs * 1e9 / bw:.0f}%"])]


def prefill_table(w, bw: float, mm: float, sweep: bool) -> list[str]:
    gate_up, down, _, _ = w
    out = [f"Prefill, routed experts (gdn::moe), H {H}, I {I}, E {E}, top-{K}, bf16. FLOPs = 6 T k H I. "
           f"Measured bf16 matmul {mm / 1e12:.0f} TFLOP/s. Roofline = max(FLOPs / matmul rate, "
           f"(all E experts' weights + x + out) / copy BW).", "",
           row(["T", "config", "naive ms", "ms eager", "ms CUDA graph", "TFLOP/s", "% of matmul", "roofline TFLOP/s",
                "% of roofline"]), row(["---"] * 9)]
    for T in (512, 2048, 8192):
        x = torch.randn(T, H, device="cuda", dtype=DT)
        logits = torch.randn(T, E, device="cuda", dtype=DT)
        flops = 6 * T * K * H * I
        roof = flops / max(flops / mm, (E * 3 * I * H * 2 + 2 * T * H * 2) / bw)
        naive = None
        if T == 512:  # the gathered copy is T * k * 6 MiB: 13 GB at T = 512
            naive = timed(lambda: reference.moe(x, logits, gate_up, down, K, True), 5, graph=False).eager_us / 1e3
        cases = [("gdn::moe", lambda: torch.ops.gdn.moe(x, logits, gate_up, down, K, True))]
        if sweep:
            for cfg in [PrefillConfig(block_m=128, block_n=64, stages=4)]:
                cases.append((str(cfg), lambda cfg=cfg: moe_prefill(x, logits, gate_up, down, K, True, cfg=cfg)))
        for name, fn in cases:
            t = timed(fn, 10)
            tf = flops / (t.graph_us * 1e-6)
            out.append(row([str(T), name, fmt(naive, ".2f"), fmt(t.eager_us / 1e3, ".3f"), fmt(t.graph_us / 1e3, ".3f"),
                            f"{tf / 1e12:.0f}", f"{100 * tf / mm:.0f}%", f"{roof / 1e12:.0f}", f"{100 * tf / roof:.0f}%"]))
            naive = None
    return out


def main() -> int:
    global FLUSH
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", action="store_true", help="also time a few kernel block configurations")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("bench_moe: needs a CUDA GPU, found none", file=sys.stderr)
        return 2
    FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    torch.manual_seed(0)
    bw, mm = copy_bandwidth(), matmul_rate()
    w = weights()
    lines = [f"Device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", ""]
    lines += decode_table(w, bw, args.sweep) + decode_next_row(bw) + [""] + prefill_table(w, bw, mm, args.sweep)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
