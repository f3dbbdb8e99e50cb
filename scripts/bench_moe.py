"""MoE benchmark on one CUDA GPU: decode at Qwen3.5-35B-A3B shapes (µs per layer, GB/s over the bytes read,
against measured copy bandwidth) and prefill T = 512/2048/8192 (TFLOP/s against the measured bf16 matmul
rate), side by side with the naive gathered-weights path (reference.moe) and, for prefill, a library peer on
the GEMMs alone (torch._grouped_mm, CUTLASS). CUDA events, medians; L2 is
flushed before every timed call by reading 256 MB (a real model's 256 experts per layer never sit in L2).

Decode compares, in one run, the design of runs 1-3 (`BASELINE`), each new part alone (router kernel, packed
top-k, unrolled kernels) and the default config, then sweeps the unrolled kernels' blocks and warps (kernel 1
and kernel 2 alone, graph only) and times the fastest of each together, with either router.

    python scripts/bench_moe.py [--sweep] [--decode-only] > table.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, replace

import torch

from gdn.kernels.moe import op, reference
from gdn.kernels.moe.decode import BASELINE, RUN4, UNROLLED, DecodeConfig, decode_down, decode_gate_up, moe_decode
from gdn.kernels.moe.prefill import PrefillConfig, moe_prefill

H, I, E, K, S = 2048, 512, 256, 8, 512
DT = torch.bfloat16
FLUSH = None
FLUSH_MODE = "read"  # "write": the zeroing flush of runs 1-5 and session 12; "none": a warm-L2 control


@dataclass
class Timing:
    eager_us: float | None
    graph_us: float | None


def flush_l2() -> None:
    """Evict L2 before a timed call by reading 256 MB, which leaves clean lines, as a model's earlier kernels
    (weight reads) leave it. Zeroing the buffer instead left ~50 MB of dirty lines whose write-back the timed
    call paid (kernels/moe/NOTES.md, session 13)."""
    if FLUSH_MODE == "write":
        FLUSH.zero_()
    elif FLUSH_MODE == "read":
        FLUSH.sum()


def kernel_medians(fn, keep=lambda name: True, calls: int = 20) -> dict[str, float]:
    """Median device us per kernel name (profiler) over `calls` eager calls of fn, each after an L2 flush;
    kernels whose name `keep` refuses are left out."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            flush_l2()
            fn()
            torch.cuda.synchronize()
    times: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and keep(e.name):
            times.setdefault(e.name, []).append(e.device_time)
    return {k: torch.tensor(v).median().item() for k, v in times.items()}


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


def timed(fn, iters: int = 50, graph: bool = True, eager: bool = True) -> Timing:
    """Median µs of `fn` eagerly and replayed from a CUDA graph (capture also proves it is capture-safe)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    eager_us = median_us(fn, iters) if eager else None
    if not graph:
        return Timing(eager_us, None)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        fn()
    return Timing(eager_us, median_us(g.replay, iters))


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


DESIGNS = [  # (name, config): the measured design, the new kernels, and each new part alone
    ("baseline (runs 1-3)", BASELINE),
    ("baseline + router kernel (run 4 default)", RUN4),
    ("router kernel + unrolled kernel 1 + tile kernel 2 (default)", DecodeConfig()),
    ("baseline + packed top-k", replace(BASELINE, pick="packed")),
    ("unrolled, inline packed router", replace(UNROLLED, router="inline")),
    ("unrolled + router kernel", UNROLLED),
]
GATE_UP_SWEEP = [(4, 512, 4), (2, 512, 4), (2, 1024, 4), (4, 1024, 8), (1, 2048, 4), (2, 2048, 8)]  # rows, cols, warps
DOWN_SWEEP = [(4, 512, 8), (2, 512, 8), (2, 512, 4), (1, 512, 4), (8, 256, 8)]  # rows, cols per step, warps


def describe(cfg: DecodeConfig) -> str:
    k1 = f"{cfg.gate_up} {cfg.block_i}x{cfg.block_h} w{cfg.warps_gate_up}"
    inner = f" rows, {cfg.tile_down} elements per step," if cfg.down == "tile" else f"x{cfg.block_inner}"
    return f"router {cfg.router}/{cfg.pick}; k1 {k1}; k2 {cfg.down} {cfg.block_out}{inner} w{cfg.warps_down}"


class Decode:
    """The decode inputs at Qwen3.5-35B-A3B shapes and one callable per measured piece."""

    def __init__(self, w):
        self.gate_up, self.down, self.router_shared, self.shared_down = w
        self.x = torch.randn(1, H, device="cuda", dtype=DT)
        self.logits = (self.x @ self.router_shared[:E].T).contiguous()
        self.act = torch.randn(1, 2 * S, device="cuda", dtype=DT)
        self.gate = torch.randn(1, 1, device="cuda", dtype=DT)
        self.out = torch.empty_like(self.x)

    def routed(self, cfg):
        return lambda: moe_decode(self.x, self.logits, self.gate_up, self.down, K, True, cfg=cfg)

    def layer(self, cfg):
        """The router + shared gate/up linear, then the routed experts with the shared expert fused into kernel 2."""
        def fn():
            rs = self.x @ self.router_shared.T
            return op.moe_shared_triton(self.x, rs, self.gate_up, self.down, self.shared_down, K, True, decode_cfg=cfg)
        return fn

    def kernel1(self, cfg):
        return lambda: decode_gate_up(self.x, self.logits, self.gate_up, K, True, cfg)

    def kernel2(self, cfg, shared: bool):
        h, ids, wts = decode_gate_up(self.x, self.logits, self.gate_up, K, True, cfg)
        sh = (self.act, self.gate, self.shared_down) if shared else None
        return lambda: decode_down(h, ids, wts, self.down, self.out, sh, cfg)


def layer_bytes() -> tuple[int, int, int, int]:
    """Bytes a decode layer reads: (all, the K experts, the shared expert, the router and shared gate rows)."""
    routed, shared, router = K * 3 * I * H * 2, 3 * S * H * 2, (E + 1) * H * 2
    return routed + shared + router, routed, shared, router


def decode_table(w, bw: float) -> list[str]:
    d = Decode(w)
    layer, routed, shared, router = layer_bytes()
    k1_bytes, k2_bytes, k2s_bytes = 2 * I * H * 2 * K, I * H * 2 * K, I * H * 2 * K + S * H * 2
    out = [f"Decode, T=1, H {H}, I {I}, E {E}, top-{K}, shared {S}, bf16. Bytes: 8 experts {routed / 1e6:.1f} MB, "
           f"shared expert {shared / 1e6:.1f} MB, router {router / 1e6:.2f} MB. Copy bandwidth {bw / 1e9:.0f} GB/s.", "",
           row(["path", "MB read", "µs eager", "µs CUDA graph", "GB/s (graph)", "% of copy BW"]), row(["---"] * 6)]

    def add(name, nbytes, fn, eager=True):
        t = timed(fn, eager=eager)
        gbs = nbytes / (t.graph_us * 1e-6) / 1e9
        out.append(row([name, f"{nbytes / 1e6:.1f}", fmt(t.eager_us), fmt(t.graph_us), f"{gbs:.0f}",
                        f"{100 * gbs * 1e9 / bw:.0f}%"]))
        return t.graph_us

    add("naive gathered weights (reference.moe), routed", routed,
        lambda: reference.moe(d.x, d.logits, d.gate_up, d.down, K, True))
    add("gdn::moe (the op: ARTIFACT_DECODE), routed", routed,
        lambda: torch.ops.gdn.moe(d.x, d.logits, d.gate_up, d.down, K, True))
    add("layer: router+shared linear, gdn::moe, shared in torch", layer, lambda: layer_separate(d.x, w))
    add("layer: router+shared linear, gdn::moe_shared (fused, the op: ARTIFACT_DECODE)", layer,
        lambda: layer_fused(d.x, w))
    for name, cfg in DESIGNS:
        add(f"{name}: routed", routed, d.routed(cfg))
        add(f"{name}: layer, shared fused", layer, d.layer(cfg))
        add(f"{name}:   kernel 1 (+ router kernel if any)", k1_bytes, d.kernel1(cfg))
        add(f"{name}:   kernel 2, routed only", k2_bytes, d.kernel2(cfg, False))
    base = UNROLLED
    k1_us = {}
    for bi, bh, wg in GATE_UP_SWEEP:
        cfg = replace(base, block_i=bi, block_h=bh, warps_gate_up=wg)
        name = f"sweep kernel 1 {bi}x{bh} w{wg} (+ router kernel)"
        k1_us[(bi, bh, wg)] = add(name, k1_bytes, d.kernel1(cfg), eager=False)
    k2_us = {}
    for bo, bn, wd in DOWN_SWEEP:
        cfg = replace(base, block_out=bo, block_inner=bn, warps_down=wd)
        add(f"sweep kernel 2 {bo}x{bn} w{wd}, routed only", k2_bytes, d.kernel2(cfg, False), eager=False)
        name = f"sweep kernel 2 {bo}x{bn} w{wd}, + shared"
        k2_us[(bo, bn, wd)] = add(name, k2s_bytes, d.kernel2(cfg, True), eager=False)
    (bi, bh, wg), (bo, bn, wd) = min(k1_us, key=k1_us.get), min(k2_us, key=k2_us.get)
    best = replace(base, block_i=bi, block_h=bh, warps_gate_up=wg, block_out=bo, block_inner=bn, warps_down=wd)
    for router in ("inline", "kernel"):
        cfg = replace(best, router=router)
        add(f"sweep's best blocks, router {router}: routed", routed, d.routed(cfg))
        add(f"sweep's best blocks, router {router}: layer, shared fused", layer, d.layer(cfg))
    out += decode_next_rows(bw)
    out += ["", "Configs:"] + [f"- {name}: {describe(cfg)}" for name, cfg in DESIGNS]
    out += [f"- sweep's best blocks: {describe(best)}",
            "- sweeps: the unrolled config with only the named blocks changed"]
    return out


def decode_next_rows(bw: float) -> list[str]:
    """Qwen3-Next-80B routed experts: E 512, top-10, same H and I; the baseline against the default config."""
    gate_up = torch.randn(512, 2 * I, H, device="cuda", dtype=DT) * H**-0.5
    down = torch.randn(512, H, I, device="cuda", dtype=DT) * I**-0.5
    x = torch.randn(1, H, device="cuda", dtype=DT)
    logits = torch.randn(1, 512, device="cuda", dtype=DT)
    nbytes = 10 * 3 * I * H * 2
    out = []
    for name, cfg in [("baseline", BASELINE), ("default", DecodeConfig())]:
        t = timed(lambda cfg=cfg: moe_decode(x, logits, gate_up, down, 10, True, cfg=cfg))
        gbs = nbytes / (t.graph_us * 1e-6) / 1e9
        out.append(row([f"Qwen3-Next E 512 top-10, {name}, routed", f"{nbytes / 1e6:.1f}", fmt(t.eager_us),
                        fmt(t.graph_us), f"{gbs:.0f}", f"{100 * gbs * 1e9 / bw:.0f}%"]))
    return out


def grouped_mm_ms(x, logits, gate_up, down, iters: int = 10) -> tuple[float, float]:
    """torch._grouped_mm (CUTLASS on sm_90) on the op's two GEMMs, gate/up and down, in ms graphed: the pairs
    already sorted by expert and unpadded, so no routing, gather, silu * up or slot sum in its time."""
    _, ids = reference.route(logits, K, True)
    order = ids.reshape(-1).argsort(stable=True)
    xs = x[order // K].contiguous()  # [T*k, H] the pairs' rows by expert
    offs = torch.bincount(ids.reshape(-1), minlength=E).cumsum(0).to(torch.int32)  # [E] segment ends
    wgu, wd = gate_up.transpose(1, 2), down.transpose(1, 2)  # [E, H, 2I], [E, I, H]
    gu = torch._grouped_mm(xs, wgu, offs=offs)
    h = (torch.nn.functional.silu(gu[:, :I]) * gu[:, I:]).contiguous()  # [T*k, I]
    t1 = timed(lambda: torch._grouped_mm(xs, wgu, offs=offs), iters, eager=False).graph_us / 1e3
    t2 = timed(lambda: torch._grouped_mm(h, wd, offs=offs), iters, eager=False).graph_us / 1e3
    return t1, t2


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
        ms = sum(grouped_mm_ms(x, logits, gate_up, down))
        tf = flops / (ms * 1e-3)
        out.append(row([str(T), "peer: torch._grouped_mm (CUTLASS), the two GEMMs alone, pairs pre-sorted", "—", "—",
                        f"{ms:.3f}", f"{tf / 1e12:.0f}", f"{100 * tf / mm:.0f}%", f"{roof / 1e12:.0f}",
                        f"{100 * tf / roof:.0f}%"]))
    return out


def main() -> int:
    global FLUSH
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", action="store_true", help="also time a second prefill block configuration")
    p.add_argument("--decode-only", action="store_true", help="skip the prefill table")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("bench_moe: needs a CUDA GPU, found none", file=sys.stderr)
        return 2
    FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    torch.manual_seed(0)
    bw, mm = copy_bandwidth(), matmul_rate()
    w = weights()
    lines = [f"Device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", ""]
    lines += decode_table(w, bw)
    if not args.decode_only:
        lines += [""] + prefill_table(w, bw, mm, args.sweep)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
