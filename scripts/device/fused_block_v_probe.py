"""The fused prefill pass at the tiny test models' head sizes (bf16, T 37, Hk 2, Hv 4), by V tile and
pipeline depth, twice each on fresh inputs: relative RMS error of o and the final state against the float64
recurrence. Triton 3.6 on the H100 computes wrong values (errors ~1) with 32-wide V tiles at K 8 and 16;
64-wide tiles are right, which is why chunk_gated_delta_rule takes 64 wherever the K tile is 64.

    python scripts/device/fused_block_v_probe.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import test_gated_delta_rule as t  # noqa: E402

from gdn.kernels.gated_delta_rule import triton_chunk as tc  # noqa: E402


def main() -> int:
    for stages in (3, 1):
        tc.STATE_STAGES = stages
        for K, V in ((8, 12), (8, 16), (16, 12), (8, 32), (16, 16), (32, 32), (64, 64)):
            for bv in (32, 64):
                res = []
                for _ in range(2):
                    c = t.Case(37, 2, 4, K, V, torch.bfloat16, "rand")
                    x = t.make(c, "cuda")
                    o64, s64 = t.truth(x)
                    s = x["state"].clone()
                    o = t.run_chunk(x, False, s, block_v=bv)
                    res.append(f"o {t.rel_rms(o, o64):.1e} state {t.rel_rms(s, s64):.1e}")
                print(f"stages {stages} K{K} V{V} BV{bv}: " + "; ".join(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
