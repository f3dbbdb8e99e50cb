"""Bisect a wrong `prefill` in CUDA artifacts built with kernels=ops: compile a prefill that returns the
hidden states after every layer with AOTInductor (ExecuTorch's options, tests/aoti_util.py) in one variant
and compare them with the eager model's, layer by layer; the C++ goes to $OUT.

When to use: a CUDA artifact's prefill disagrees with the eager model (compare_methods.py says so) and you
need the first layer, and the op, where compiled and eager part. Run on a GPU machine from the repo root.

usage: python scripts/tools/bisect_prefill.py VARIANT [CHECKPOINT]
VARIANT: plain (all ops, no inlining), inline (all ops, lower.inline_triton_ops + split_to_slices),
static (inline, prefill exported for T = 21 only), conv | chunk | moe (inline, only that op from OPS;
conv and moe keep the reference chunk, whose export is bounded by its 64-token chunk).
"""

import dataclasses
import os
import sys
from pathlib import Path

import torch
from torch.export import Dim, export

sys.path.insert(0, "tests")
from aoti_util import compile_and_load  # noqa: E402
from gdn.export.checkpoint import load_model  # noqa: E402
from gdn.export.lower import inline_triton_ops, split_to_slices  # noqa: E402
from gdn.export.pipeline import DEFAULT_CHECKPOINT  # noqa: E402
from gdn.kernels import OPS, REFERENCE  # noqa: E402

variant = sys.argv[1]
ckpt = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_CHECKPOINT
ONLY = {"conv": ["causal_conv1d"], "chunk": ["chunk_gated_delta_rule"], "moe": ["moe_shared"]}


def build():
    model = load_model(ckpt, 128, torch.float32, torch.float32, "ops", "cuda")
    if variant in ONLY:
        mixed = dataclasses.replace(REFERENCE, name="mixed", **{f: getattr(OPS, f) for f in ONLY[variant]})
        for layer in model.layers:
            for part in ("linear_attn", "mlp"):
                if hasattr(getattr(layer, part, None), "kernels"):
                    getattr(layer, part).kernels = mixed
    return model


class Layers(torch.nn.Module):
    """Prefill that returns the hidden states after every layer ([L + 1, T, H]): where compiled and eager part."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens, input_pos):
        m = self.model
        x, delta = m.embed_tokens(tokens[0]), None
        reset = input_pos[:1] == 0
        cos, sin = m.rotary(input_pos, x.dtype)
        outs = [x]
        for layer in m.layers:
            x, delta = layer(x, delta, input_pos, reset, cos, sin, False)
            outs.append(x + delta)
        return torch.stack(outs)


model = build()
eager = build()
eager.load_state_dict(model.state_dict())
vocab = model.embed_tokens.weight.shape[0]
static = variant == "static"
MAX_T = 64 if variant in ("conv", "moe") else 128
T0 = 21 if static else 2
args = (torch.zeros(1, T0, dtype=torch.long, device="cuda"), torch.arange(T0, device="cuda"))
with torch.no_grad():
    if static:
        ep = export(Layers(model), args, strict=True)
    else:
        T = Dim("T", min=1, max=MAX_T)
        ep = export(Layers(model), args, dynamic_shapes=({1: T}, {0: T}), strict=True)
    if variant != "plain":
        ep = split_to_slices(inline_triton_ops({"prefill": ep}))["prefill"]
    compiled, src = compile_and_load(ep)
Path(os.environ.get("OUT", "/tmp"), f"prefill_{variant}.cpp").write_text(src)
print(f"{variant}: compiled; {src.count('launchKernel')} launchKernel in the C++", flush=True)
for T in [21] if static else [t for t in (21, 64, 65, 100, 128) if t <= MAX_T]:
    tokens = torch.randint(0, vocab, (1, T), device="cuda")
    pos = torch.arange(T, device="cuda")
    with torch.no_grad():
        want = Layers(eager)(tokens, pos)
    got = compiled(tokens, pos)
    got = got[0] if isinstance(got, (tuple, list)) else got
    per_layer = (got.float() - want.float()).abs().amax(dim=(1, 2)).tolist()
    err = max(per_layer)
    print(f"{variant}: T={T} per layer " + " ".join(f"{e:.1e}" for e in per_layer), flush=True)
    rows = (got[-1].float() - want[-1].float()).abs().amax(dim=1)
    print(f"{variant}: T={T} last layer, rows wrong: {(rows > 1e-3).nonzero().flatten().tolist()[:20]}", flush=True)
    print(f"{variant}: T={T} compiled vs eager max |diff| {err:.3e} ({'OK' if err < 1e-3 else 'WRONG'})", flush=True)
