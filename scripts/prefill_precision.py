"""Relative RMS error of both chunked-prefill paths against the float64 recurrence, on CPU through Triton's
interpreter, with TF32 dots emulated (the interpreter computes every dot in exact float32 whatever its
`input_precision`; here TF32 dots drop the low 13 mantissa bits of their float32 operands, as tensor cores
do). The numbers in kernels/gated_delta_rule/NOTES.md (Precision) come from this script.

    TRITON_INTERPRET=1 python scripts/prefill_precision.py [--seeds 3] [--T 500]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def emulate_tf32() -> None:
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_dot

    def truncate(h):
        if h.data.dtype != np.float32:
            return h
        bits = h.data.view(np.uint32) & np.uint32(0xFFFFE000)
        return interpreter.TensorHandle(bits.view(np.float32), h.dtype.scalar)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if str(input_precision).upper().endswith("TF32"):  # not TF32x3
            a, b = truncate(a), truncate(b)
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)

    interpreter.InterpreterBuilder.create_dot = create_dot


def variants(only: str | None) -> list[tuple[str, dict]]:
    """label, keywords of chunk_gated_delta_rule."""
    from gdn.kernels.gated_delta_rule.triton_chunk import PRECISE16, PRECISE_STATE16, Precision16

    out = [
        ("fused", {}),
        ("split", dict(path="split")),
        ("fused-state", dict(precision=PRECISE_STATE16)),
        ("split-s10", dict(path="split", precision=PRECISE_STATE16)),
        ("u16", dict(precision=Precision16(u_16=True))),
        ("session9", dict(path="split", precision=PRECISE16)),
    ]
    return [v for v in out if only is None or v[0] in only.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--T", type=int, default=500)
    parser.add_argument("--only", help="comma-separated variant labels")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("prefill_precision: run with TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    emulate_tf32()
    import test_gated_delta_rule as t

    from gdn.kernels.gated_delta_rule import triton_chunk

    for dtype in (torch.bfloat16,) if args.only else (torch.bfloat16, torch.float32):
        for keys in ("random", "aligned"):
            c = t.Case(args.T, 2, 4, 128, 128, dtype, "rand", keys)
            for path, kw in variants(args.only):
                errs = []
                for seed in range(args.seeds):
                    torch.manual_seed(seed)
                    x = t.make(c, "cpu")
                    o64, s64 = t.truth(x)
                    state = x["state"].clone()
                    o = triton_chunk.chunk_gated_delta_rule(
                        x["q"], x["k"], x["v"], x["g"], x["beta"], state, torch.tensor([False]), **kw
                    )
                    errs.append((t.rel_rms(o, o64), t.rel_rms(state, s64)))
                o_err, s_err = (sum(e[i] for e in errs) / len(errs) for i in (0, 1))
                print(f"{c.id:44s} {path:10s} o {o_err:.2e} state {s_err:.2e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
