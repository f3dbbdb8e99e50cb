"""The GDN core (conv -> chunked prefill over buffers, tests/test_gdn_export.py's GDNCore) compiled by
AOTInductor against eager, per prefill path and precision, at the tiny test models' head shapes and at
Qwen3.5's: relative error of the compiled output in two calls, the second from the state the first left.

    python scripts/device/aoti_prefill_probe.py
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from gdn.kernels.gated_delta_rule import triton_chunk  # noqa: E402

CASES = [  # label, (Hk, Hv, K, V), dtype, keywords of chunk_gated_delta_rule
    ("tiny fused", (2, 4, 8, 12), torch.bfloat16, {}),
    ("tiny fused all1", (2, 4, 8, 12), torch.bfloat16, dict(precision=triton_chunk.Precision16(qkv_terms=1))),
    ("tiny split", (2, 4, 8, 12), torch.bfloat16, dict(path="split")),
    ("tiny fused fp32", (2, 4, 8, 12), torch.float32, {}),
    ("qwen3.5 fused", (16, 32, 128, 128), torch.bfloat16, {}),
    ("qwen3.5 fused all1", (16, 32, 128, 128), torch.bfloat16, dict(precision=triton_chunk.Precision16(qkv_terms=1))),
]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main() -> int:
    import test_gdn_export as t
    from aoti_util import compile_and_load

    original = triton_chunk.chunk_gated_delta_rule
    for label, (Hk, Hv, K, V), dtype, kw in CASES:
        triton_chunk.chunk_gated_delta_rule = functools.partial(original, **kw)
        m = t.GDNCore(Hk, Hv, K, V, 4, dtype).cuda()
        eager = t.GDNCore(Hk, Hv, K, V, 4, dtype).cuda()
        eager.load_state_dict(m.state_dict())
        compiled, _ = compile_and_load(t.export(m, 37, dtype, "cuda"))
        errs = []
        for i, n in enumerate((37, 65)):
            args = t.inputs(m, n, i == 0, dtype, "cuda")
            want = eager(*args)
            got = compiled(*args)
            errs.append(f"T={n} o {rel(got, want):.1e}")
        print(f"{label:18s} compiled vs eager: {', '.join(errs)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
