"""The one-launch decode MoE layer (`decode_layer.moe_layer_decode`) on the GPU at Qwen3.5-35B-A3B shapes.

check: fresh inputs each trial against the float64 reference (max error over the largest output), the same
input twice bit for bit (a race would move it), `sync` back to zero after every call.
bench: graphed, L2 flushed, medians (scripts/bench_moe.py's timing): the layer as the model ran it (the
gdn::gemv projection, then the router, gate/up and down kernels), the one-launch layer over a block sweep,
and the router kernel alone by top-k method.

trace: per item group, when its programs start and end inside one call.
chained: per layer when CHAIN layers with their own weights run in one graph, against one layer per graph, and
the launch cost of an almost empty graph.
flush: the same calls after each way of flushing L2 (bench_moe.FLUSH_MODE).
variants: the model's layer under other decode kernel configs.
projection: the model's layer under other blocks of its gdn::gemv projection.
configs: the model's layer with the shared expert's down projection in kernel 2 or in the router's launch.
kernels: per-kernel durations (profiler) of the model's layer under those configs.
pdl: the model's layer with programmatic dependent launch (PDL_CONFIGS): error against float64, CHAIN-layer
graphs bit-equal to the same kernels launched in stream order over fresh inputs (a missing wait would move them),
one layer per graph and chained.

    python scripts/device/moe_layer_probe.py check|bench|trace|chained|flush|variants|projection|configs|kernels|pdl ...
"""

from __future__ import annotations

import sys
from dataclasses import replace

import torch

sys.path.insert(0, "scripts")
import bench_moe as bm  # noqa: E402
from gdn.kernels.gemv.triton_gemv import GemvConfig, gemv  # noqa: E402
from gdn.kernels.moe import op, reference  # noqa: E402
from gdn.kernels.moe.decode import DecodeConfig, decode_route  # noqa: E402
from gdn.kernels.moe.route import PICKS  # noqa: E402
from gdn.kernels.moe.decode_layer import LayerConfig, moe_layer_decode, sync_len, ticket_items  # noqa: E402

SWEEP = [LayerConfig()] + [
    replace(LayerConfig(), **kw)
    for kw in (dict(backoff=True), dict(lag=0), dict(lag=1), dict(lag=2), dict(block_out=8), dict(block_out=32),
               dict(block_i=8), dict(block_i=2), dict(warps=8), dict(block_r=4))
]
CHAIN = 4  # layers per graph in the chained timing, each with its own weights


def model_chain(sets, x, n: int, cfg: DecodeConfig = DecodeConfig(), proj: GemvConfig | None = None):
    """The model's layer (gdn::gemv projection, then the MoE op under cfg) over the first n weight sets, each
    fed the previous output."""
    for gate_up, down, w_rs, shared_down in sets[:n]:
        x = op.moe_shared_triton(x, gemv(x, w_rs, "none", proj), gate_up, down, shared_down, bm.K, True,
                                 decode_cfg=cfg)
    return x


def worst_error(w, cfg: DecodeConfig, proj: GemvConfig | None = None, trials: int = 10) -> float:
    """Max error over max |out| of one model layer under cfg against float64, over fresh inputs."""
    gate_up, down, w_rs, shared_down = w
    worst = 0.0
    for _ in range(trials):
        x = torch.randn(1, bm.H, device="cuda", dtype=bm.DT)
        want = reference.moe_shared_float64(x, gemv(x, w_rs, "none"), gate_up, down, shared_down, bm.K, True)
        worst = max(worst, ((model_chain([w], x, 1, cfg, proj).double() - want).abs().max() / want.abs().max()).item())
    return worst


def zeroed_sync(cfg: LayerConfig) -> torch.Tensor:
    return torch.zeros(sync_len(bm.H, bm.K, cfg), dtype=torch.int32, device="cuda")


def check(w, trials: int = 20) -> None:
    gate_up, down, w_rs, shared_down = w
    for cfg in (LayerConfig(), SWEEP[1], SWEEP[2], SWEEP[4], SWEEP[9]):
        sync = zeroed_sync(cfg)
        worst, worst_ref = 0.0, 0.0
        for _ in range(trials):
            x = torch.randn(1, bm.H, device="cuda", dtype=bm.DT)
            got = moe_layer_decode(x, w_rs, gate_up, down, shared_down, sync, bm.K, True, cfg)
            again = moe_layer_decode(x, w_rs, gate_up, down, shared_down, sync, bm.K, True, cfg)
            torch.cuda.synchronize()
            assert torch.equal(got, again), "same input, different output"
            assert sync.abs().sum().item() == 0, f"sync not reset: {sync.tolist()}"
            rs = gemv(x, w_rs, "none")
            want = reference.moe_shared_float64(x, rs, gate_up, down, shared_down, bm.K, True)
            ref = op.moe_shared_triton(x, rs, gate_up, down, shared_down, bm.K, True)
            scale = want.abs().max().item()
            worst = max(worst, (got.double() - want).abs().max().item() / scale)
            worst_ref = max(worst_ref, (ref.double() - want).abs().max().item() / scale)
        print(f"check {cfg}: max err / max |out| {worst:.2e} (the three-launch op {worst_ref:.2e}), "
              f"{trials} trials, repeat bit-equal, sync reset", flush=True)


def bench(w) -> None:
    gate_up, down, w_rs, shared_down = w
    d = bm.Decode(w)
    bw = bm.copy_bandwidth()
    nbytes = bm.layer_bytes()[0]
    print(f"copy {bw / 1e9:.0f} GB/s; layer bytes {nbytes / 1e6:.1f} MB", flush=True)

    def show(name, fn):
        us = bm.timed(fn, eager=False).graph_us
        print(f"{name}: {us:.2f} us, {nbytes / us / 1e3:.0f} GB/s, {100 * nbytes / us / 1e3 / (bw / 1e9):.1f}% of copy",
              flush=True)

    show("the model's layer: gdn::gemv projection + gdn::moe_shared (router, k1, k2; the op's config)",
         lambda: op.moe_shared_triton(d.x, gemv(d.x, w_rs, "none"), gate_up, down, shared_down, bm.K, True))
    show("bench_moe layer (cuBLAS projection) + router + k1 + k2", d.layer(DecodeConfig()))
    show("same, router pick argmax (the op's until session 12)", d.layer(DecodeConfig(pick="argmax")))
    for cfg in SWEEP:
        show(f"one launch {cfg}", lambda cfg=cfg, sync=zeroed_sync(cfg): moe_layer_decode(
            d.x, w_rs, gate_up, down, shared_down, sync, bm.K, True, cfg))
    ids = torch.empty(bm.K, dtype=torch.int32, device="cuda")
    wts = torch.empty(bm.K, dtype=torch.float32, device="cuda")
    for pick in PICKS:
        for warps in (1, 4):
            cfg = DecodeConfig(pick=pick, warps_router=warps)
            us = bm.timed(lambda cfg=cfg: decode_route(d.logits, ids, wts, bm.K, True, cfg), eager=False).graph_us
            print(f"router kernel alone, {pick} w{warps}: {us:.2f} us", flush=True)


def trace(w) -> None:
    """Where the time goes inside one call: per item group, when its programs start and end (global timer, ns
    from the first start), from the last of three calls, each after a flush."""
    gate_up, down, w_rs, shared_down = w
    x = torch.randn(1, bm.H, device="cuda", dtype=bm.DT)
    for cfg in (LayerConfig(), LayerConfig(lag=1)):
        sync = zeroed_sync(cfg)
        items = ticket_items(bm.E, bm.H, bm.I, bm.S, bm.K, cfg)
        buf = torch.zeros(2 * len(items), dtype=torch.int64, device="cuda")
        for _ in range(3):
            bm.flush_l2()
            moe_layer_decode(x, w_rs, gate_up, down, shared_down, sync, bm.K, True, cfg, trace=buf)
        torch.cuda.synchronize()
        t = buf.view(-1, 2).cpu()
        t = (t - t[:, 0].min()).double() / 1e3
        print(f"trace {cfg}: kernel span {t.max().item():.2f} us", flush=True)
        groups = {}
        for i, (role, slot) in enumerate(items):
            groups.setdefault(f"{role}{'' if slot is None else slot}", []).append(i)
        q = lambda v, f: torch.quantile(v, f).item()
        for name, idx in groups.items():
            r = t[idx]
            print(f"  {name} x{len(idx)}: start {r[:, 0].min():.2f}..{q(r[:, 0], .5):.2f}..{r[:, 0].max():.2f} us, "
                  f"end {r[:, 1].min():.2f}..{q(r[:, 1], .5):.2f}..{r[:, 1].max():.2f} us, "
                  f"median duration {q(r[:, 1] - r[:, 0], .5):.2f} us", flush=True)


def chained(w) -> None:
    """Per layer in a graph of CHAIN layers, each with its own weights and fed the previous layer's output, as
    in a model's decode step (one graph launch for all of them), against one layer per graph; and an
    almost empty graph's time, the launch cost inside every single-layer number."""
    bw = bm.copy_bandwidth()
    nbytes = bm.layer_bytes()[0]
    sets = [w] + [bm.weights() for _ in range(CHAIN - 1)]
    x0 = torch.randn(1, bm.H, device="cuda", dtype=bm.DT)
    tiny = torch.zeros(1, device="cuda")
    print(f"copy {bw / 1e9:.0f} GB/s; almost empty graph (one 1-element add): "
          f"{bm.timed(lambda: tiny.add_(1), eager=False).graph_us:.2f} us", flush=True)

    def model_layer(x, ws):
        gate_up, down, w_rs, shared_down = ws
        return op.moe_shared_triton(x, gemv(x, w_rs, "none"), gate_up, down, shared_down, bm.K, True)

    def one_launch(cfg):
        syncs = [zeroed_sync(cfg) for _ in sets]

        def layer(x, ws, sync):
            gate_up, down, w_rs, shared_down = ws
            return moe_layer_decode(x, w_rs, gate_up, down, shared_down, sync, bm.K, True, cfg)
        return layer, syncs

    runs = [("the model's layer (gdn::gemv + gdn::moe_shared)", model_layer, None)]
    for cfg in (LayerConfig(), LayerConfig(lag=1), LayerConfig(block_out=32)):
        layer, syncs = one_launch(cfg)
        runs.append((f"one launch {cfg}", layer, syncs))
    for name, layer, syncs in runs:
        def chain(n, layer=layer, syncs=syncs):
            x = x0
            for i in range(n):
                x = layer(x, sets[i]) if syncs is None else layer(x, sets[i], syncs[i])
            return x
        one = bm.timed(lambda: chain(1), eager=False).graph_us
        per = bm.timed(lambda: chain(CHAIN), eager=False).graph_us / CHAIN
        pct = lambda us: 100 * nbytes / us / 1e3 / (bw / 1e9)
        print(f"{name}: one per graph {one:.2f} us ({pct(one):.1f}% of copy); {CHAIN} chained {per:.2f} us per layer "
              f"({pct(per):.1f}%)", flush=True)


def flush(w) -> None:
    """The same calls timed after each way of flushing L2: zeroing 256 MB (dirty lines left), reading them
    (clean lines), and no flush (a warm-L2 control the read flush must stay well above)."""
    gate_up, down, w_rs, shared_down = w
    d = bm.Decode(w)
    nbytes = bm.layer_bytes()[0]
    calls = [("the model's layer", lambda: op.moe_shared_triton(d.x, gemv(d.x, w_rs, "none"), gate_up, down,
                                                                shared_down, bm.K, True)),
             ("kernel 1 alone (router + gate/up)", d.kernel1(DecodeConfig())),
             ("kernel 2 alone (down + shared)", d.kernel2(DecodeConfig(), True))]
    for cfg in (LayerConfig(), LayerConfig(lag=1)):
        calls.append((f"one launch {cfg}", lambda cfg=cfg, sync=zeroed_sync(cfg): moe_layer_decode(
            d.x, w_rs, gate_up, down, shared_down, sync, bm.K, True, cfg)))
    for name, fn in calls:
        cells = []
        for mode in ("write", "read", "none"):
            bm.FLUSH_MODE = mode
            cells.append(f"{mode} {bm.timed(fn, eager=False).graph_us:.2f}")
        print(f"{name}: us after flush by {', '.join(cells)} (layer bytes {nbytes / 1e6:.1f} MB)", flush=True)
    bm.FLUSH_MODE = "read"


VARIANTS = [DecodeConfig()] + [replace(DecodeConfig(), **kw) for kw in (
    dict(router="inline"), dict(router="inline", block_i=4), dict(router="inline", block_i=4, warps_gate_up=4),
    dict(router="inline", warps_gate_up=4), dict(warps_down=4), dict(block_out=2, tile_down=8192),
    dict(block_out=8, tile_down=32768), dict(tile_down=8192))]


def variants(w) -> None:
    """The model's layer (gdn::gemv projection + the decode kernels) under other DecodeConfigs: routing inside
    every kernel-1 program with the bitonic top-k (no router launch), kernel 2's blocks and warps."""
    gate_up, down, w_rs, shared_down = w
    d = bm.Decode(w)
    bw = bm.copy_bandwidth()
    nbytes = bm.layer_bytes()[0]
    for cfg in VARIANTS:
        us = bm.timed(lambda cfg=cfg: op.moe_shared_triton(d.x, gemv(d.x, w_rs, "none"), gate_up, down, shared_down,
                                                           bm.K, True, decode_cfg=cfg), eager=False).graph_us
        print(f"model's layer with {cfg}: {us:.2f} us, {100 * nbytes / us / 1e3 / (bw / 1e9):.1f}% of copy",
              flush=True)


PROJECTIONS = [GemvConfig(4, 1024, 4), GemvConfig(2, 1024, 4), GemvConfig(2, 2048, 4), GemvConfig(1, 2048, 4),
               GemvConfig(2, 1024, 2), GemvConfig(1, 1024, 2), GemvConfig(4, 2048, 8), GemvConfig(2, 512, 4)]


def projection(w) -> None:
    """The model's layer with the router / shared projection (gdn::gemv, 1281 rows x 2048) in other blocks:
    its 4-row default gives 321 programs, under three per SM."""
    gate_up, down, w_rs, shared_down = w
    d = bm.Decode(w)
    bw = bm.copy_bandwidth()
    nbytes = bm.layer_bytes()[0]
    for cfg in PROJECTIONS:
        us = bm.timed(lambda cfg=cfg: op.moe_shared_triton(d.x, gemv(d.x, w_rs, "none", cfg), gate_up, down,
                                                           shared_down, bm.K, True), eager=False).graph_us
        alone = bm.timed(lambda cfg=cfg: gemv(d.x, w_rs, "none", cfg), eager=False).graph_us
        print(f"projection {cfg}: layer {us:.2f} us ({100 * nbytes / us / 1e3 / (bw / 1e9):.1f}% of copy), "
              f"projection alone {alone:.2f} us", flush=True)


CONFIGS = [DecodeConfig()] + [replace(DecodeConfig(), shared="router", **kw) for kw in (
    dict(block_shared=4), dict(block_shared=2), dict(block_shared=8, warps_router=4),
    dict(block_shared=16, warps_router=4), dict(block_shared=4, warps_router=2))]


def name(cfg: DecodeConfig) -> str:
    return f"shared {cfg.shared} (block {cfg.block_shared}, router warps {cfg.warps_router})"


def configs(w) -> None:
    """The model's layer under CONFIGS: the shared expert's down projection fused into kernel 2 (the op's
    default) or computed beside the routing program in the router's launch. Error against float64 over fresh
    inputs, one layer per graph and CHAIN layers per graph (the L2 prefetch configs of session 14 ran here too:
    commit b9887ec)."""
    bw = bm.copy_bandwidth()
    nbytes = bm.layer_bytes()[0]
    sets = [w] + [bm.weights() for _ in range(CHAIN - 1)]
    x0 = torch.randn(1, bm.H, device="cuda", dtype=bm.DT)
    pct = lambda us: 100 * nbytes / us / 1e3 / (bw / 1e9)

    for cfg in CONFIGS:
        worst = worst_error(w, cfg)
        one = bm.timed(lambda cfg=cfg: model_chain(sets, x0, 1, cfg), eager=False).graph_us
        per = bm.timed(lambda cfg=cfg: model_chain(sets, x0, CHAIN, cfg), eager=False).graph_us / CHAIN
        print(f"{name(cfg)}: one per graph {one:.2f} us ({pct(one):.1f}% of copy); {CHAIN} chained {per:.2f} us per layer ({pct(per):.1f}%); "
              f"max err / max |out| {worst:.2e}", flush=True)


def kernels(w) -> None:
    """Per-kernel durations (profiler, median of 20 eager calls, each after a flush) of the model's layer under
    CONFIGS."""
    gate_up, down, w_rs, shared_down = w
    x = torch.randn(1, bm.H, device="cuda", dtype=bm.DT)
    for cfg in CONFIGS:
        fn = lambda: op.moe_shared_triton(x, gemv(x, w_rs, "none"), gate_up, down, shared_down, bm.K, True,
                                          decode_cfg=cfg)
        medians = bm.kernel_medians(fn, lambda name: "reduce" not in name and "elem" not in name)
        parts = [f"{k[:30]} {us:.2f}" for k, us in medians.items()]
        print(f"{name(cfg)}: us per kernel (median) {'; '.join(parts)}", flush=True)


# (name, decode config, projection config): the model's layer, then the PDL forms launched in stream order
# ("serial") and with the attribute ("on")
PDL_CONFIGS = [
    ("off (the model's layer)", DecodeConfig(), GemvConfig(4, 1024, 4)),
    ("serial", DecodeConfig(pdl="serial"), GemvConfig(4, 2048, 4, pdl="serial")),
    ("on", DecodeConfig(pdl="on"), GemvConfig(4, 2048, 4, pdl="on")),
    ("on, projection off", DecodeConfig(pdl="on"), GemvConfig(4, 1024, 4)),
    ("shared router, serial", DecodeConfig(shared="router", warps_router=4, pdl="serial"),
     GemvConfig(4, 2048, 4, pdl="serial")),
    ("shared router, on", DecodeConfig(shared="router", warps_router=4, pdl="on"), GemvConfig(4, 2048, 4, pdl="on")),
]


def twin(cfg, proj):
    """What a config's CHAIN-layer graph must equal bit for bit: "on" against "serial" (a race would move it),
    anything else against "off" (whether the PDL form computes the same bits)."""
    to = lambda c: replace(c, pdl="serial" if c.pdl == "on" else "off")
    return to(cfg), to(proj)


def pdl(w, trials: int = 30) -> None:
    bw = bm.copy_bandwidth()
    nbytes = bm.layer_bytes()[0]
    sets = [w] + [bm.weights() for _ in range(CHAIN - 1)]
    pct = lambda us: 100 * nbytes / us / 1e3 / (bw / 1e9)
    print(f"copy {bw / 1e9:.0f} GB/s", flush=True)

    def graphed(n, cfg, proj):
        x = torch.randn(1, bm.H, device="cuda", dtype=bm.DT)
        model_chain(sets, x, n, cfg, proj)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = model_chain(sets, x, n, cfg, proj)
        return g, x, y

    for name, cfg, proj in PDL_CONFIGS:
        worst = worst_error(w, cfg, proj)
        g, gx, gy = graphed(CHAIN, cfg, proj)
        t_cfg, t_proj = twin(cfg, proj)
        t, tx, ty = graphed(CHAIN, t_cfg, t_proj)
        same = 0
        for _ in range(trials):
            gx.copy_(torch.randn(1, bm.H, device="cuda", dtype=bm.DT))
            tx.copy_(gx)
            gy.fill_(float("nan"))
            bm.flush_l2()
            g.replay()
            bm.flush_l2()
            t.replay()
            same += bool(torch.equal(gy, ty))
        one = bm.timed(lambda: model_chain(sets, gx, 1, cfg, proj), eager=False).graph_us
        per = bm.timed(lambda: model_chain(sets, gx, CHAIN, cfg, proj), eager=False).graph_us / CHAIN
        print(f"{name}: one per graph {one:.2f} us ({pct(one):.1f}% of copy); {CHAIN} chained {per:.2f} us per layer "
              f"({pct(per):.1f}%); max err / max |out| {worst:.2e}; {CHAIN}-layer graph bit-equal to pdl "
              f"{t_cfg.pdl!r} {same}/{trials}", flush=True)


def main() -> None:
    bm.FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    torch.manual_seed(0)
    w = bm.weights()
    print(torch.cuda.get_device_name(0), flush=True)
    for mode in sys.argv[1:]:
        {"check": check, "bench": bench, "trace": trace, "chained": chained, "flush": flush,
         "variants": variants, "projection": projection, "configs": configs, "kernels": kernels, "pdl": pdl}[mode](w)


if __name__ == "__main__":
    main()
