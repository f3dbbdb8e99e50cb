"""The one-launch decode MoE layer (`decode_layer.moe_layer_decode`) on the GPU at Qwen3.5-35B-A3B shapes.

check: fresh inputs each trial against the float64 reference (max error over the largest output), the same
input twice bit for bit (a race would move it), `sync` back to zero after every call.
bench: graphed, L2 flushed, medians (scripts/bench_moe.py's timing): the layer as the model ran it (the
gdn::gemv projection, then the router, gate/up and down kernels), the one-launch layer over a block sweep,
and the router kernel alone by top-k method.

trace: per role, when its programs start and end inside one call.

    python scripts/device/moe_layer_probe.py check|bench|trace
"""

from __future__ import annotations

import sys
from dataclasses import replace

import torch

sys.path.insert(0, "scripts")
import bench_moe as bm  # noqa: E402
from gdn.kernels.gemv.triton_gemv import gemv  # noqa: E402
from gdn.kernels.moe import op, reference  # noqa: E402
from gdn.kernels.moe.decode import DecodeConfig, decode_route  # noqa: E402
from gdn.kernels.moe.route import PICKS  # noqa: E402
from gdn.kernels.moe.decode_layer import SYNC_LEN, LayerConfig, moe_layer_decode  # noqa: E402

SWEEP = [LayerConfig()] + [
    replace(LayerConfig(), **kw)
    for kw in (dict(backoff=True), dict(block_i=2), dict(block_i=8), dict(block_out=8, tile_down=32768),
               dict(warps=8), dict(block_r=4), dict(block_i=8, block_out=8, tile_down=32768))
]


def check(w, trials: int = 20) -> None:
    gate_up, down, w_rs, shared_down = w
    sync = torch.zeros(SYNC_LEN, dtype=torch.int32, device="cuda")
    for cfg in (LayerConfig(), SWEEP[1], SWEEP[5]):
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
    sync = torch.zeros(SYNC_LEN, dtype=torch.int32, device="cuda")
    for cfg in SWEEP:
        show(f"one launch {cfg}", lambda cfg=cfg: moe_layer_decode(d.x, w_rs, gate_up, down, shared_down, sync,
                                                                    bm.K, True, cfg))
    ids = torch.empty(bm.K, dtype=torch.int32, device="cuda")
    wts = torch.empty(bm.K, dtype=torch.float32, device="cuda")
    for pick in PICKS:
        for warps in (1, 4):
            cfg = DecodeConfig(pick=pick, warps_router=warps)
            us = bm.timed(lambda cfg=cfg: decode_route(d.logits, ids, wts, bm.K, True, cfg), eager=False).graph_us
            print(f"router kernel alone, {pick} w{warps}: {us:.2f} us", flush=True)


def trace(w) -> None:
    """Where the time goes inside one call: per role, when its programs start and end (global timer, ns from
    the first start), from one replay of a graphed call after a flush."""
    gate_up, down, w_rs, shared_down = w
    x = torch.randn(1, bm.H, device="cuda", dtype=bm.DT)
    sync = torch.zeros(SYNC_LEN, dtype=torch.int32, device="cuda")
    for cfg in (LayerConfig(), LayerConfig(backoff=True)):
        n_r, n_s = -(-(bm.E + 1) // cfg.block_r), -(-bm.S // cfg.block_i)
        n_g, n_d = bm.K * -(-bm.I // cfg.block_i), -(-bm.H // cfg.block_out)
        buf = torch.zeros(2 * (n_r + n_s + n_g + n_d), dtype=torch.int64, device="cuda")
        for _ in range(3):
            bm.flush_l2()
            moe_layer_decode(x, w_rs, gate_up, down, shared_down, sync, bm.K, True, cfg, trace=buf)
        torch.cuda.synchronize()
        t = buf.view(-1, 2).cpu()
        t = t - t[:, 0].min()
        print(f"trace {cfg}: kernel span {t.max().item() / 1e3:.2f} us", flush=True)
        lo = 0
        for name, n in (("R", n_r), ("S", n_s), ("G", n_g), ("D", n_d)):
            r = t[lo:lo + n].double() / 1e3
            lo += n
            q = lambda v, f: torch.quantile(v, f).item()
            print(f"  {name} x{n}: start {r[:, 0].min():.2f}..{q(r[:, 0], .5):.2f}..{r[:, 0].max():.2f} us, "
                  f"end {r[:, 1].min():.2f}..{q(r[:, 1], .5):.2f}..{r[:, 1].max():.2f} us, "
                  f"median duration {q(r[:, 1] - r[:, 0], .5):.2f} us", flush=True)


def main() -> None:
    bm.FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    torch.manual_seed(0)
    w = bm.weights()
    print(torch.cuda.get_device_name(0), flush=True)
    {"check": check, "bench": bench, "trace": trace}[sys.argv[1]](w)


if __name__ == "__main__":
    main()
