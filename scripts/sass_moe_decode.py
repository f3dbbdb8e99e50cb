"""The decode MoE kernels compiled for sm_90 without a GPU (Triton's bundled ptxas): registers, stack, and in
the SASS how many global loads a thread issues before its first floating-point FMA (loads that can be in
flight together) and how many block barriers it crosses. Static facts only, no timing; Qwen3.5-35B-A3B
shapes (H 2048, I 512, E 256, top-8, shared 512, bf16).

    python scripts/sass_moe_decode.py [--dump DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import replace

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from gdn.kernels.moe import decode as D
from gdn.kernels.moe.route import PICKS

H, I, E, K, S = 2048, 512, 256, 8, 512
TARGET = GPUTarget("cuda", 90, 32)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
GATE_UP_ARGS = {"x_ptr": "*bf16", "logits_ptr": "*bf16", "logits_col_stride": "i32", "w_ptr": "*bf16",
                "h_ptr": "*fp32", "ids_ptr": "*i32", "weights_ptr": "*fp32"}
DOWN_ARGS = {"h_ptr": "*fp32", "ids_ptr": "*i32", "weights_ptr": "*fp32", "down_ptr": "*bf16", "out_ptr": "*bf16",
             "shared_act_ptr": "*bf16", "shared_act_stride": "constexpr", "shared_gate_ptr": "*bf16",
             "shared_down_ptr": "*bf16", "shared_out_ptr": "*fp32"}
ROUTE_ARGS = {"logits_ptr": "*bf16", "col_stride": "constexpr", "ids_ptr": "*i32", "weights_ptr": "*fp32",
              "act_ptr": "*bf16", "act_stride": "i32", "gate_ptr": "*bf16", "sdown_ptr": "*bf16",
              "shared_out_ptr": "*fp32"}


def compile_kernel(fn, args: dict, consts: dict, warps: int, stages: int = 3):
    """-> Triton's compiled kernel for sm_90. Pointers 16-byte aligned and unit strides constant, as Triton
    specialises them."""
    sig = {**args, **{name: "constexpr" for name in consts}}
    attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(sig.values()) if t.startswith("*")}
    stride_consts = {name: 1 for name, t in args.items() if t == "constexpr"}
    src = ASTSource(fn, sig, constexprs={**stride_consts, **consts}, attrs=attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": warps, "num_stages": stages})


def cubin_tool(tool: str, cubin: bytes, *flags: str) -> str:
    """The output of one of Triton's bundled CUDA tools (nvdisasm, cuobjdump) on `cubin`."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([f"{BIN}/{tool}", *flags, f.name], capture_output=True, text=True, check=True).stdout


def compile_sm90(fn, args: dict, consts: dict, warps: int) -> tuple[str, str]:
    """-> resource usage, SASS."""
    cubin = compile_kernel(fn, args, consts, warps).asm["cubin"]
    return cubin_tool("cuobjdump", cubin, "--dump-resource-usage"), cubin_tool("nvdisasm", cubin, "-c")


def summary(usage: str, sass: str) -> str:
    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    ops = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9.]*)", sass, re.M)
    first_fma = next((i for i, op in enumerate(ops) if op.startswith("FFMA")), len(ops))
    wide = sum(op.startswith("LDG") and op.endswith(".128") for op in ops)
    early = sum(op.startswith("LDG") and op.endswith(".128") for op in ops[:first_fma])
    bars = sum(op.startswith("BAR") for op in ops)
    bars_before = sum(op.startswith("BAR") for op in ops[:first_fma])
    return (f"{regs:>3} regs, stack {stack}, 128-bit loads {early:>2} of {wide:>2} before the first FFMA, "
            f"barriers {bars_before:>2} before it / {bars:>2} in all")


def grid_args(cfg: D.DecodeConfig) -> dict:
    """PDL and GDC as the kernels get them on a GPU (this compile is for one, interpreter or not)."""
    return {"PDL": cfg.pdl != "off", "GDC": cfg.pdl != "off"}


def gate_up(cfg: D.DecodeConfig) -> tuple[str, str]:
    fn = D.decode_gate_up_kernel if cfg.gate_up == "tile" else D.gate_up_unrolled_kernel
    consts = dict(H=H, I=I, E=E, E_P2=E, TOP_K=K, K_P2=K, RENORM=True, ROUTE=cfg.router == "inline",
                  PICK=PICKS.index(cfg.pick), BLOCK_I=cfg.block_i, BLOCK_H=cfg.block_h, **grid_args(cfg))
    return compile_sm90(fn, GATE_UP_ARGS, consts, cfg.warps_gate_up)


def down(cfg: D.DecodeConfig, shared: bool) -> tuple[str, str]:
    consts = dict(H=H, I=I, S=S, TOP_K=K, BLOCK_OUT=cfg.block_out, K_P2=K, **grid_args(cfg))
    if cfg.down == "tile":
        inner = max(I, S) if cfg.pdl != "off" else max(16, min(I, cfg.tile_down // (K * cfg.block_out)))
        mode = 0 if not shared else 1 if cfg.shared == "down" else 2
        return compile_sm90(D.decode_down_kernel, DOWN_ARGS, {**consts, "SHARED": mode, "BLOCK_INNER": inner},
                            cfg.warps_down)
    args = {k: v for k, v in DOWN_ARGS.items() if k != "shared_out_ptr"}
    consts.pop("PDL"), consts.pop("GDC")
    return compile_sm90(D.down_unrolled_kernel, args, {**consts, "HAS_SHARED": shared, "BLOCK_INNER": cfg.block_inner},
                        cfg.warps_down)


def route(cfg: D.DecodeConfig) -> tuple[str, str]:
    block = cfg.block_shared if cfg.shared == "router" else 0
    consts = dict(E=E, E_P2=E, TOP_K=K, K_P2=K, RENORM=True, PICK=PICKS.index(cfg.pick), H=H, S=S, S_P2=S,
                  BLOCK_S=block, **grid_args(cfg))
    return compile_sm90(D.decode_route_kernel, ROUTE_ARGS, consts, cfg.warps_router)


def cases():
    base, new = D.BASELINE, D.UNROLLED
    yield "router kernel, argmax, 1 warp", route(replace(new, pick="argmax"))
    yield "router kernel, packed, 1 warp", route(new)
    yield "baseline kernel 1 (tile, inline argmax router)", gate_up(base)
    yield "unrolled kernel 1, inline packed router", gate_up(replace(new, router="inline"))
    yield "unrolled kernel 1 (id from the router kernel)", gate_up(new)
    yield "router kernel + shared expert programs, topk, 1 warp", route(D.DecodeConfig(shared="router", block_shared=4))
    yield "baseline kernel 2 (tile), routed", down(base, False)
    yield "baseline kernel 2 (tile), + shared", down(base, True)
    yield "tile kernel 2, + shared output from the router launch", down(D.DecodeConfig(shared="router"), True)
    yield "unrolled kernel 2, routed", down(new, False)
    yield "unrolled kernel 2, + shared", down(new, True)
    yield "tile kernel 2 under PDL, + shared (weights before the wait)", down(D.DecodeConfig(pdl="on"), True)
    yield "tile kernel 2 under PDL, + shared output from the router launch", \
        down(D.DecodeConfig(pdl="on", shared="router"), True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dump", help="also write each kernel's SASS into this directory")
    args = p.parse_args()
    for i, (name, (usage, sass)) in enumerate(cases()):
        print(f"{name:<55} {summary(usage, sass)}")
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            with open(os.path.join(args.dump, f"{i}.sass"), "w") as f:
                f.write(f"// {name}\n{sass}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
