"""The prefill MoE GEMMs compiled for sm_90 without a GPU (Triton's bundled ptxas): registers, spill stack,
shared memory, the programs one SM can hold by those two, and the cp.async widths. Static facts only, no
timing; Qwen3.5-35B-A3B shapes (H 2048, I 512, E 256, top-8, bf16) over block choices.

    python scripts/sass_moe_prefill.py
"""

from __future__ import annotations

import re
import sys
from collections import Counter

sys.path.insert(0, "scripts")
from sass_moe_decode import compile_kernel, cubin_tool  # noqa: E402

from gdn.kernels.moe import prefill as P  # noqa: E402

H, I, E, K = 2048, 512, 256, 8
SM_REGS, SM_SMEM = 65536, 232448  # per SM on sm_90: 64 K registers, 227 KB of shared memory per block
GROUPING = {"pairs_ptr": "*i32", "block_expert_ptr": "*i32", "block_start_ptr": "*i32", "block_half_ptr": "*i32"}
GATE_UP_ARGS = {"x_ptr": "*bf16", "w_ptr": "*bf16", **GROUPING, "h_ptr": "*bf16", "num_pairs": "i32"}
DOWN_ARGS = {"h_ptr": "*bf16", "down_ptr": "*bf16", **GROUPING, "weights_ptr": "*fp32", "y_ptr": "*bf16",
             "num_pairs": "i32"}
GATE_UP_BLOCKS = [(128, 64, 64, 8, 3), (128, 64, 64, 8, 4), (128, 64, 32, 8, 6), (128, 128, 64, 8, 3), (128, 128, 32, 8, 4),
                  (64, 128, 64, 4, 4)]  # BLOCK_M, BLOCK_N (of each of gate and up), BLOCK_K, warps, stages
DOWN_BLOCKS = [(128, 128, 64, 8, 3), (128, 128, 64, 4, 3), (128, 128, 64, 8, 4), (128, 128, 32, 8, 6), (128, 256, 64, 8, 3)]


def describe(fn, args: dict, consts: dict, warps: int, stages: int) -> str:
    k = compile_kernel(fn, args, consts, warps, stages)
    usage = cubin_tool("cuobjdump", k.asm["cubin"], "--dump-resource-usage")
    regs, stack = (int(v) for v in re.search(r"REG:(\d+) STACK:(\d+)", usage).groups())
    smem = k.metadata.shared
    per_sm = min(SM_REGS // (regs * 32 * warps), SM_SMEM // max(smem, 1))
    widths = Counter(re.findall(r"cp\.async\.c[ag]\.shared\.global(?:\.L2::\w+)? \[[^\]]*\], \[[^\]]*\], (0x\w+|\d+)",
                                k.asm["ptx"]))
    return (f"{regs:>3} regs, stack {stack}, smem {smem // 1024:>3} KB, {per_sm} program(s) per SM, "
            f"cp.async bytes {dict(widths)}")


def main() -> int:
    common = dict(H=H, I=I, E=E, PRECISION="tf32", UPCAST=False, N_FIRST=True, HALF_TAIL=False)
    for bm, bn, bk, warps, stages in GATE_UP_BLOCKS:
        consts = dict(common, TOP_K=K, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
        print(f"gate/up {bm}x2*{bn}x{bk}, {warps} warps, {stages} stages: "
              f"{describe(P.grouped_gate_up_kernel, GATE_UP_ARGS, consts, warps, stages)}", flush=True)
    for bm, bn, bk, warps, stages in DOWN_BLOCKS:
        consts = dict(common, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
        print(f"down {bm}x{bn}x{bk}, {warps} warps, {stages} stages: "
              f"{describe(P.grouped_down_kernel, DOWN_ARGS, consts, warps, stages)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
