"""Kernel benchmark of the MoE op (gdn::moe_shared) on one CUDA GPU, Qwen3.5-35B-A3B shapes (H 2048, I 512, E 256,
top-8, shared expert 512, bf16), in the op's one shipped configuration.

Decode (T = 1), us per layer, eager and replayed from a CUDA graph; GB/s over the bytes the row reads, against
the copy bandwidth:
- naive: `reference.moe_shared`, the plain-PyTorch path that gathers the selected experts' weights;
- the op alone (router kernel, kernel 1, kernel 2 with the shared expert fused, launched with PDL), and at
  Qwen3-Next's E 512, top-10;
- layer: the router/shared projection (a torch matmul, cuBLAS) and the op, one layer per graph;
- chained: 4 layers (the gdn::gemv projection and the op, each layer its own weights, fed the last output) in one
  graph, per layer: every kernel boundary of the layer overlapped by PDL, as in a model;
- the op's kernels alone (profiler medians).
Prefill (T = 512, 2048, 8192), ms: the routed experts (`prefill.moe_prefill`, the op's kernels; FLOPs 6 T k H I)
and the whole op (plus the shared expert in PyTorch), against the bf16 matmul rate and the roofline
max(FLOPs / matmul rate, bytes / copy bandwidth), where the bytes are every expert's weights (each is read at
these T) plus x and the output; beside them the library peer, torch._grouped_mm (CUTLASS) on the same two GEMMs
with the pairs already sorted by expert and unpadded (no routing, gather, silu * up or slot sum in its time), and
at T = 512 the naive path. Every timed call follows an L2 flush; medians (scripts/timing.py).

    python scripts/bench_moe.py [--decode-only] > table.md
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

import torch
import torch.nn.functional as F

import gdn.kernels  # noqa: F401  (registers torch.ops.gdn.*)
from gdn.kernels.moe import reference
from gdn.kernels.moe.prefill import moe_prefill

import timing  # scripts/ is on sys.path when run as a script

H, I, E, K, S = 2048, 512, 256, 8, 512
DT = torch.bfloat16
CHAIN = 4  # layers per graph in the chained row


def weights(E: int = E) -> dict[str, torch.Tensor]:
    """One layer's weights: gate_up [E, 2I, H], down [E, H, I], w_rs [E + 2S + 1, H] (router | shared gate | shared
    up | shared gate logit), shared_down [H, S]."""
    return {"gate_up": torch.randn(E, 2 * I, H, device="cuda", dtype=DT) * H**-0.5,
            "down": torch.randn(E, H, I, device="cuda", dtype=DT) * I**-0.5,
            "w_rs": torch.randn(E + 2 * S + 1, H, device="cuda", dtype=DT) * H**-0.5,
            "shared_down": torch.randn(H, S, device="cuda", dtype=DT) * S**-0.5}


def op(x: torch.Tensor, rs: torch.Tensor, w: dict[str, torch.Tensor], top_k: int = K) -> torch.Tensor:
    return torch.ops.gdn.moe_shared(x, rs, w["gate_up"], w["down"], w["shared_down"], top_k, True)


def naive(x: torch.Tensor, rs: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    return reference.moe_shared(x, rs, w["gate_up"], w["down"], w["shared_down"], K, True)


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def decode_row(name: str, nbytes: int, t: timing.Timing, bw: float) -> str:
    gbs = nbytes / (t.graph_us * 1e-6)
    return row([name, f"{nbytes / 1e6:.1f}", fmt(t.eager_us, ".1f"), f"{t.graph_us:.1f}", f"{gbs / 1e9:.0f}",
                f"{100 * gbs / bw:.1f}%"])


def chained_us(layers: list[dict[str, torch.Tensor]]) -> float:
    """us per layer of len(layers) layers, gdn::gemv projection + the op each, in one CUDA graph."""
    x = torch.randn(1, H, device="cuda", dtype=DT)
    last = {}

    def layer(i: int) -> None:
        w, inp = layers[i], x if i == 0 else last["y"]
        last["y"] = op(inp, torch.ops.gdn.gemv(inp, w["w_rs"], "none"), w)

    replay = timing.graphed(layer, len(layers))
    return timing.median_us(replay, flush=True) / len(layers)


def decode_table(bw: float) -> list[str]:
    w = weights()
    x = torch.randn(1, H, device="cuda", dtype=DT)
    rs = x @ w["w_rs"].T
    routed, shared, proj = K * 3 * I * H * 2, S * H * 2, (E + 2 * S + 1) * H * 2  # bytes read
    op_bytes, layer_bytes = routed + shared, routed + shared + proj
    out = [f"Decode, T = 1, H {H}, I {I}, E {E}, top-{K}, shared expert {S}, bf16. Bytes: 8 experts {routed / 1e6:.1f} "
           f"MB, shared down {shared / 1e6:.1f} MB, router/shared projection {proj / 1e6:.2f} MB. "
           f"Copy bandwidth {bw / 1e9:.0f} GB/s.", "",
           row(["path", "MB read", "us eager", "us CUDA graph", "GB/s (graph)", "% of copy"]), row(["---"] * 6)]
    out.append(decode_row("naive: reference.moe_shared (gathered expert weights)", op_bytes,
                          timing.timed(lambda: naive(x, rs, w), flush=True), bw))
    out.append(decode_row("the op, gdn::moe_shared", op_bytes, timing.timed(lambda: op(x, rs, w), flush=True), bw))
    out.append(decode_row("layer: projection (torch matmul) + the op", layer_bytes,
                          timing.timed(lambda: op(x, x @ w["w_rs"].T, w), flush=True), bw))
    chained = chained_us([weights() for _ in range(CHAIN)])
    out.append(decode_row(f"chained, {CHAIN} layers in one graph (gdn::gemv + the op), per layer", layer_bytes,
                          timing.Timing(None, chained), bw))
    nxt = weights(512)
    rs_next = x @ nxt["w_rs"].T
    out.append(decode_row("the op at Qwen3-Next's E 512, top-10", 10 * 3 * I * H * 2 + shared,
                          timing.timed(lambda: op(x, rs_next, nxt, 10), flush=True), bw))
    kernels = timing.kernel_medians(lambda: op(x, rs, w))
    out += ["", "The op's kernels alone (us, profiler medians): "
            + ", ".join(f"{k} {v:.1f}" for k, v in kernels.items())]
    return out


def grouped_mm_ms(x: torch.Tensor, logits: torch.Tensor, w: dict[str, torch.Tensor]) -> float:
    """torch._grouped_mm (CUTLASS on sm_90) on the op's two GEMMs, gate/up and down, ms graphed: the pairs already
    sorted by expert and unpadded."""
    _, ids = reference.route(logits, K, True)
    order = ids.reshape(-1).argsort(stable=True)
    xs = x[order // K].contiguous()  # [T*k, H] the pairs' rows by expert
    offs = torch.bincount(ids.reshape(-1), minlength=E).cumsum(0).to(torch.int32)  # [E] segment ends
    wgu, wd = w["gate_up"].transpose(1, 2), w["down"].transpose(1, 2)  # [E, H, 2I], [E, I, H]
    gu = torch._grouped_mm(xs, wgu, offs=offs)
    h = (F.silu(gu[:, :I]) * gu[:, I:]).contiguous()  # [T*k, I]
    gate_up_us = timing.timed(lambda: torch._grouped_mm(xs, wgu, offs=offs), 10, flush=True, eager=False).graph_us
    down_us = timing.timed(lambda: torch._grouped_mm(h, wd, offs=offs), 10, flush=True, eager=False).graph_us
    return (gate_up_us + down_us) / 1e3


def prefill_rows(T: int, w: dict[str, torch.Tensor], bw: float, mm: float) -> list[str]:
    x = torch.randn(T, H, device="cuda", dtype=DT)
    rs = x @ w["w_rs"].T
    logits = rs[:, :E].contiguous()
    flops = 6 * T * K * H * I
    shared_flops = 2 * T * S * H  # the shared expert's down projection (its gate/up come in rs)
    weight_bytes, io_bytes = E * 3 * I * H * 2, 2 * T * H * 2  # every expert's weights; x and the output

    def line(name: str, flop: int, nbytes: int, eager_ms: float | None, graph_ms: float) -> str:
        rate = flop / (graph_ms * 1e-3)
        roof = flop / max(flop / mm, nbytes / bw)
        return row([str(T), name, fmt(eager_ms, ".3f"), f"{graph_ms:.3f}", f"{rate / 1e12:.0f}",
                    f"{100 * rate / mm:.0f}%", f"{100 * rate / roof:.0f}%"])

    def ms(fn: Callable[[], object], graph: bool = True) -> tuple[float | None, float | None]:
        t = timing.timed(fn, 10, flush=True, graph=graph)
        return t.eager_us / 1e3, None if t.graph_us is None else t.graph_us / 1e3

    out = [line("routed experts (moe_prefill: the op's kernels)", flops, weight_bytes + io_bytes,
                *ms(lambda: moe_prefill(x, logits, w["gate_up"], w["down"], K, True)))]
    shared_bytes = S * H * 2 + T * (E + 2 * S + 1) * 2  # shared_down and the op's input rs
    out.append(line("the op, gdn::moe_shared (routed + shared expert in PyTorch)", flops + shared_flops,
                    weight_bytes + io_bytes + shared_bytes, *ms(lambda: op(x, rs, w))))
    out.append(line("peer: torch._grouped_mm (CUTLASS), the two GEMMs alone, pairs pre-sorted", flops,
                    weight_bytes + io_bytes, None, grouped_mm_ms(x, logits, w)))
    if T == 512:  # the gathered copy is T * k * 6 MiB: 13 GB at T = 512
        eager_ms, _ = ms(lambda: naive(x, rs, w), graph=False)
        out.append(row([str(T), "naive: reference.moe_shared (gathered expert weights), eager", f"{eager_ms:.2f}"]
                       + ["—"] * 4))
    if T == 8192:
        kernels = timing.kernel_medians(lambda: moe_prefill(x, logits, w["gate_up"], w["down"], K, True))
        out.append("\nT = 8192, the routed experts' kernels alone (ms, profiler medians): "
                   + ", ".join(f"{k} {v / 1e3:.3f}" for k, v in kernels.items()))
    return out


def prefill_table(bw: float, mm: float) -> list[str]:
    w = weights()
    out = [f"Prefill, H {H}, I {I}, E {E}, top-{K}, shared expert {S}, bf16. Measured bf16 matmul {mm / 1e12:.0f} "
           f"TFLOP/s.", "", row(["T", "path", "ms eager", "ms CUDA graph", "TFLOP/s", "% of matmul", "% of roofline"]),
           row(["---"] * 7)]
    for T in (512, 2048, 8192):
        out += prefill_rows(T, w, bw, mm)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decode-only", action="store_true", help="skip the prefill table")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("bench_moe: needs a CUDA GPU, found none", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    bw, mm = timing.copy_bandwidth(), timing.matmul_rate()
    lines = [f"Device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", ""] + decode_table(bw)
    if not args.decode_only:
        lines += [""] + prefill_table(bw, mm)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
