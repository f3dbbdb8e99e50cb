"""Offline sm_90 compile statistics of a Triton kernel, no GPU needed: registers, spill stack, shared memory,
programs per SM by registers and by shared memory (H100 limits), SASS instruction counts (the whole kernel and
the main loop's body: the instructions a backward branch repeats) and an opcode histogram.

    python scripts/tools/sass_stats.py KERNEL.cubin [--top 12]      # a cubin written by anything
    from tools import sass_stats; sass_stats.compile_sm90(...)       # from scripts/ (bench_qgemv --registers)
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

SM_REGS = 65536  # H100: registers per SM
SM_SHARED = 228 << 10  # shared memory per SM; each resident program also reserves 1 KiB
SM_WARPS, SM_PROGRAMS = 64, 32
LINE = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)([^;]*);", re.M)


@dataclass
class Stats:
    registers: int
    stack: int  # spill bytes per thread
    shared: int  # bytes per program (static + dynamic)
    warps: int
    instructions: int
    loop: int  # instructions of the main loop's body; 0 without a loop
    opcodes: collections.Counter = field(default_factory=collections.Counter)

    def programs_by_registers(self) -> int:
        per_warp = -(-self.registers * 32 // 256) * 256  # allocated per warp in 256-register units
        return min(SM_REGS // (per_warp * self.warps), SM_WARPS // self.warps, SM_PROGRAMS)

    def programs_by_shared(self) -> int:
        return min(SM_SHARED // (self.shared + 1024), SM_PROGRAMS)

    def programs(self) -> int:
        return min(self.programs_by_registers(), self.programs_by_shared())

    def top(self, n: int = 12) -> str:
        return " ".join(f"{op} {count}" for op, count in self.opcodes.most_common(n))


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def main_loop(sass: str) -> int:
    """Instructions from the target of the last backward branch to that branch (not the final self-loop)."""
    lines = [(int(a, 16), op, rest) for a, op, rest in LINE.findall(sass)]
    best = 0
    for addr, op, rest in lines:
        target = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if target and int(target[1], 16) < addr:
            best = max(best, sum(1 for a, _, _ in lines if int(target[1], 16) <= a <= addr))
    return best


def cubin_stats(cubin: bytes, warps: int, shared: int = 0) -> Stats:
    """Stats of a cubin; `shared`: dynamic shared bytes (Triton's metadata), added to the static ones."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", usage)
    if not found:
        raise RuntimeError(f"cuobjdump -res-usage gave no resource line: {usage[-200:]!r}")
    ops = [op for _, op, _ in LINE.findall(sass)]
    return Stats(int(found[1]), int(found[2]), max(int(found[3]), shared), warps, len(ops), main_loop(sass),
                 collections.Counter(op.split(".")[0] for op in ops))


def compile_sm90(kernel, types: dict[str, str], constexprs: dict[str, object], warps: int,
                 stages: int = 1) -> Stats:
    """Compile one specialisation of a @triton.jit kernel for sm_90, pointers and `s_*` strides 16-byte aligned
    as Triton specialises them at launch; `types`: Triton type strings of the runtime arguments."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    signature = {n: "constexpr" if n in constexprs else types[n] for n in names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
               if n not in constexprs and (types[n].startswith("*") or n.startswith("s_"))}
    src = ASTSource(kernel, signature, constexprs=constexprs, attrs=aligned)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})
    return cubin_stats(compiled.asm["cubin"], warps, compiled.metadata.shared)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cubin")
    ap.add_argument("--warps", type=int, default=4, help="the kernel's num_warps (for programs per SM)")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    with open(args.cubin, "rb") as f:
        s = cubin_stats(f.read(), args.warps)
    print(f"{s.registers} registers, {s.stack} B stack, {s.shared} B shared; programs per SM: "
          f"{s.programs_by_registers()} by registers, {s.programs_by_shared()} by shared; {s.instructions} SASS, "
          f"main loop {s.loop}; {s.top(args.top)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
