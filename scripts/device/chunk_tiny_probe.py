"""Prefill at the tiny test models' shapes (K 8..64, V 12..64, bf16) on the GPU, with 16-bit tiles at least
MIN_TILE_16 wide (the fix, 64) and at least 16 wide (Triton 3.6 faults or goes wrong in the prep kernel).
Each case runs in its own process with CUDA_LAUNCH_BLOCKING=1 so a failing launch is named.

    python scripts/device/chunk_tiny_probe.py
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
import sys
from pathlib import Path

CASE = """
import sys, torch
sys.path.insert(0, "tests")
import test_gated_delta_rule as t
from gdn.kernels.gated_delta_rule import triton_chunk
triton_chunk.MIN_TILE_16 = {floor}
c = t.Case({T}, {Hk}, {Hv}, {K}, {V}, torch.bfloat16, "rand")
x = t.make(c, "cuda"); o64, s64 = t.truth(x); s = x["state"].clone()
o = t.run_chunk(x, False, s, path={path!r}); torch.cuda.synchronize()
eo, es = t.rel_rms(o, o64), t.rel_rms(s, s64)
print("ok" if max(eo, es) < 1e-2 else "WRONG", f"o {{eo:.2e}} state {{es:.2e}}")
"""
SHAPES = [(37, 2, 4, 8, 12), (64, 2, 4, 8, 12), (37, 2, 4, 16, 16), (130, 2, 4, 32, 32), (130, 2, 4, 64, 64),
          (130, 2, 4, 32, 128), (130, 2, 4, 128, 32), (130, 2, 4, 128, 128)]


def run(case: tuple) -> str:
    floor, (T, Hk, Hv, K, V), path = case
    code = CASE.format(floor=floor, T=T, Hk=Hk, Hv=Hv, K=K, V=V, path=path)
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], env=env,
                       capture_output=True, text=True)
    tail = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()][-2:]
    return f"floor {floor} T{T} Hk{Hk} Hv{Hv} K{K} V{V} {path}: rc {r.returncode} | " + " | ".join(tail)[-300:]


def main() -> int:
    cases = [(64, s, "fused") for s in SHAPES] + [(64, s, "split") for s in SHAPES]
    cases += [(16, s, "fused") for s in SHAPES[:5]]
    with ThreadPoolExecutor(8) as pool:
        for line in pool.map(run, cases):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
