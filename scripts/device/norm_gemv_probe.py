"""gdn::norm_gemv on the H100, against gdn::gemv at the same shapes (bf16, L2 flushed by a read):
- kernels: per-kernel durations (profiler, median of 20 calls after a flush), gemv and norm_gemv, each in the
  loop form (1024-column steps) and the PDL form (one step, launched in stream order);
- aoti: the 4-layer norm_gemv + moe_shared chain of moe_aoti_probe, plain and with PDL, compiled by
  AOTInductor (the generated C++ saved under $OUT), every intermediate (y, r, n of each norm_gemv, each
  moe_shared output) against eager, bit for bit, over TRIALS inputs: the first one that differs names where
  compiled and eager part.

    python scripts/device/norm_gemv_probe.py [kernels] [aoti]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, "scripts")
sys.path.insert(0, "scripts/device")
sys.path.insert(0, "tests")
import bench_moe as bm  # noqa: E402
from moe_aoti_probe import CHAIN, Chain  # noqa: E402
from aoti_util import compile_and_load  # noqa: E402
from gdn.kernels.gemv import op as gemv_op  # noqa: E402
from gdn.kernels.gemv.triton_gemv import GemvConfig, gemv  # noqa: E402
from gdn.kernels.gemv.triton_norm_gemv import norm_gemv  # noqa: E402
from gdn.kernels.moe import op  # noqa: E402
from gdn.kernels.moe.decode import DecodeConfig  # noqa: E402

TRIALS = 20
SHAPES = {"moe router_shared": (1281, 2048), "GDN in_proj 35B-A3B": (12352, 2048)}


def kernel_us(fn) -> str:
    return "; ".join(f"{k} {us:.2f}" for k, us in bm.kernel_medians(fn, lambda name: "gemv" in name).items())


def kernels() -> None:
    for name, (N, K) in SHAPES.items():
        x, d = (torch.randn(1, K, device="cuda", dtype=bm.DT) for _ in range(2))
        g = 0.1 * torch.randn(K, device="cuda", dtype=bm.DT)
        w = torch.randn(N, K, device="cuda", dtype=bm.DT) * K**-0.5
        for form, cfg in (("loop", GemvConfig(4, 1024, 4)), ("PDL form", GemvConfig(4, 1024, 4, pdl="serial"))):
            print(f"{name} {N}x{K}, {form}: gemv {kernel_us(lambda: gemv(x, w, 'none', cfg))} | "
                  f"norm_gemv {kernel_us(lambda: norm_gemv(x, d, g, 1e-6, w, cfg))} us", flush=True)


class Steps(Chain):
    """The chain with every intermediate as an output."""

    def forward(self, x):
        delta, steps = None, []
        for (gate_up, down, w_rs, shared_down), g in zip(self.layers(), self.gains):
            y, x, n = torch.ops.gdn.norm_gemv(x, delta, g, 1e-6, w_rs)
            delta = torch.ops.gdn.moe_shared(n, y, gate_up, down, shared_down, bm.K, True)
            steps += [y, x, n, delta]
        return steps


def aoti() -> None:
    sets = [bm.weights() for _ in range(CHAIN)]
    gains = [0.1 * torch.randn(bm.H, device="cuda", dtype=bm.DT) for _ in range(CHAIN)]
    names = [f"layer {i} {t}" for i in range(CHAIN) for t in ("y", "r", "n", "moe")]
    x = torch.randn(1, bm.H, device="cuda", dtype=bm.DT)
    for pdl in ("off", "on"):  # eps a float argument until run 5 of session 17, a constant since
        op.ARTIFACT_DECODE, gemv_op.ARTIFACT_PDL = DecodeConfig(pdl=pdl), pdl
        chain = Steps(sets, gains, norm=True).eval()
        with torch.no_grad():
            compiled, src = compile_and_load(torch.export.export(chain, (x,), strict=True))
            if os.environ.get("OUT"):
                Path(os.environ["OUT"], f"norm_chain_pdl_{pdl}.cpp").write_text(src)
            equal = 0
            for trial in range(TRIALS):
                xi = torch.randn(1, bm.H, device="cuda", dtype=bm.DT)
                got, want = compiled(xi), chain(xi)
                first = next((i for i, (a, b) in enumerate(zip(got, want)) if not torch.equal(a, b)), None)
                if first is None:
                    equal += 1
                    continue
                a, b = got[first].float(), want[first].float()
                bad = (a != b).nonzero()[:, -1].tolist()
                print(f"pdl {pdl}, input {trial}: first difference at {names[first]}: {len(bad)} elements (columns "
                      f"{bad[:12]}), max |diff| {(a - b).abs().max().item():.3e} of max |x| {b.abs().max().item():.3e}",
                      flush=True)
        print(f"pdl {pdl}: every intermediate bit-equal for {equal} of {TRIALS} inputs", flush=True)


def main() -> None:
    bm.FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    modes = sys.argv[1:] or ["kernels", "aoti"]
    for mode in modes:
        {"kernels": kernels, "aoti": aoti}[mode]()


if __name__ == "__main__":
    main()
