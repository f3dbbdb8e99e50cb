"""Target for Nsight Compute (ncu) on the H100: after warm-up, one call each of the MoE decode (router, gate/up,
down with the shared expert), the MoE prefill at T = 8192, our chunked prefill at T = 8192 (bf16, Hv 32,
K = V = 128) and FLA's if importable, inside an NVTX range "prof" that ncu filters on.

    ncu --clock-control none --nvtx --nvtx-include "prof/" --section SpeedOfLight ... python3 scripts/device/ncu_probe.py
"""

from __future__ import annotations

import sys

import torch

sys.path.insert(0, "scripts")
import bench_gdn  # noqa: E402
import bench_moe  # noqa: E402
from gdn.kernels.gated_delta_rule import triton_chunk  # noqa: E402
from gdn.kernels.moe import op  # noqa: E402


def calls() -> list:
    torch.manual_seed(0)
    w = bench_moe.weights()
    d = bench_moe.Decode(w)
    gate_up, down, router_shared, shared_down = w
    out = [lambda: op.moe_shared_triton(d.x, d.x @ router_shared.T, gate_up, down, shared_down, bench_moe.K, True)]
    T = 8192
    x = torch.randn(T, bench_moe.H, device="cuda", dtype=torch.bfloat16)
    logits = torch.randn(T, bench_moe.E, device="cuda", dtype=torch.bfloat16)
    out.append(lambda: torch.ops.gdn.moe(x, logits, gate_up, down, bench_moe.K, True))
    p = bench_gdn.prefill_inputs(T)
    reset = torch.zeros(1, dtype=torch.bool, device="cuda")
    out.append(lambda: triton_chunk.chunk_gated_delta_rule(p["q"], p["k"], p["v"], p["g"], p["beta"],
                                                           p["state"].clone(), reset))
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
        out.append(lambda: fla_chunk(p["q"], p["k"], p["v"], p["g"], p["beta"], initial_state=p["state"].clone(),
                                     output_final_state=True, use_qk_l2norm_in_kernel=True))
    except Exception as e:  # noqa: BLE001  (FLA is optional: say why it is missing)
        print("ncu_probe: FLA not importable:", repr(e)[:120])
    return out


def main() -> None:
    fns = calls()
    for fn in fns:
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push("prof")
    for fn in fns:
        fn()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_pop()
    print("ncu_probe: done")


if __name__ == "__main__":
    main()
