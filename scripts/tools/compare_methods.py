"""Diagnose a CUDA artifact built with kernels=ops: export a checkpoint (default: the bundled model), load
it, and compare each method with the eager model, separately: prefill alone, decode continuing a prefill,
and decode alone from position 0 (so a wrong method shows by itself).

When to use: CUDA artifacts give other tokens than the eager model (tests/test_export_cuda.py fails) and you
need to know which method is wrong before bisecting it (bisect_prefill.py). Run on a GPU machine.

usage: python scripts/tools/compare_methods.py [CHECKPOINT] [fp32|bf16]
"""

import faulthandler
import sys
import tempfile
import time
from pathlib import Path

import torch

faulthandler.enable()
from gdn.export.checkpoint import load_model  # noqa: E402
from gdn.export.pipeline import DEFAULT_CHECKPOINT, ExportOptions, run_export  # noqa: E402
from gdn.runner.artifact import Artifact  # noqa: E402
from gdn.runner.methods import load_methods  # noqa: E402

ckpt = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CHECKPOINT
dt = sys.argv[2] if len(sys.argv) > 2 else "fp32"
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dt]
out = Path(tempfile.mkdtemp()) / "ops.pte"
t0 = time.perf_counter()
res = run_export(ExportOptions(output=out, checkpoint=ckpt, backend="cuda", dtype=dt, max_seq_len=128,
                               kernels="ops"))
print(f"export ops {dt}: {time.perf_counter() - t0:.1f}s sizes {res.sizes}", flush=True)
methods = load_methods(Artifact.open(res.path))
eager = {k: load_model(ckpt, 128, dtype, torch.float32, k, "cuda") for k in ("ops", "reference")}


def diff(a, b) -> str:
    return f"{(a.float() - b.float()).abs().max().item():.3e}"


T = 21
vocab = eager["ops"].embed_tokens.weight.shape[0]
prompt = torch.randint(0, vocab, (1, T), device="cuda")
pos = torch.arange(T, device="cuda")
with torch.no_grad():
    want = {k: m.prefill(prompt, pos) for k, m in eager.items()}
got = methods.prefill(prompt, pos).clone()
for k, w in want.items():
    print(f"prefill: artifact vs eager {k}: max |diff| {diff(got, w)}")
print(f"prefill: eager ops vs reference {diff(want['ops'], want['reference'])}")
tok = int(want["reference"].argmax())
for i in range(6):
    t, p = torch.tensor([[tok]], device="cuda"), torch.tensor([T + i], device="cuda")
    with torch.no_grad():
        w = eager["reference"](t, p)
        eager["ops"](t, p)
    g = methods.decode(t, p)
    print(f"decode after prefill, step {i}: artifact vs eager reference {diff(g, w)}")
    tok = int(w.argmax())
for i in range(5):
    t, p = prompt[:, i:i + 1].contiguous(), torch.tensor([i], device="cuda")
    with torch.no_grad():
        w = eager["reference"](t, p)
        wo = eager["ops"](t, p)
    g = methods.decode(t, p)
    print(f"decode alone, pos {i}: artifact vs eager reference {diff(g, w)}; eager ops vs reference {diff(wo, w)}")
