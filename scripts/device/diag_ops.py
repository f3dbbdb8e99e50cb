"""Diagnose the CUDA artifact with kernels=ops: export the bundled model, load it, compare with eager."""

import faulthandler
import sys
import tempfile
import time
from pathlib import Path

import torch

faulthandler.enable()
sys.path.insert(0, "tests")
from gdn.export.checkpoint import load_model  # noqa: E402
from gdn.export.pipeline import DEFAULT_CHECKPOINT, ExportOptions, run_export  # noqa: E402
from gdn.runner.artifact import Artifact  # noqa: E402
from gdn.runner.methods import load_methods  # noqa: E402

ckpt = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CHECKPOINT
out = Path(tempfile.mkdtemp()) / "ops.pte"
t0 = time.perf_counter()
res = run_export(ExportOptions(output=out, checkpoint=ckpt, backend="cuda", dtype="fp32", max_seq_len=128,
                               kernels="ops", autotune=False))
print(f"export ops: {time.perf_counter() - t0:.1f}s sizes {res.sizes}", flush=True)
methods = load_methods(Artifact.open(res.path))
eager = {k: load_model(ckpt, 128, torch.float32, torch.float32, k, "cuda") for k in ("ops", "reference")}
T = 21
prompt = torch.randint(3, 500, (1, T), device="cuda")
pos = torch.arange(T, device="cuda")
with torch.no_grad():
    want = {k: m.prefill(prompt, pos) for k, m in eager.items()}
got = methods.prefill(prompt, pos).clone()
for k, w in want.items():
    print(f"prefill: artifact vs eager {k}: max |diff| {(got - w).abs().max().item():.3e}")
print(f"prefill: eager ops vs reference {(want['ops'] - want['reference']).abs().max().item():.3e}")
tok = int(want["reference"].argmax())
for i in range(6):
    t, p = torch.tensor([[tok]], device="cuda"), torch.tensor([T + i], device="cuda")
    with torch.no_grad():
        w = eager["reference"](t, p)
        eager["ops"](t, p)
    g = methods.decode(t, p)
    print(f"decode step {i}: artifact vs eager reference max |diff| {(g - w).abs().max().item():.3e}")
    tok = int(w.argmax())
