"""torch.ops.gdn.moe_shared survives torch.export(strict=True) as a single node; on the GPU the exported programs
compile with AOTInductor (Triton kernels inside the library) and match eager; the tiny MoE checkpoints run
through the ops on CUDA like through the references."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from aoti_util import compile_and_load, pdl_launch_sites
from gdn.kernels import KERNEL_SETS
from gdn.kernels.moe import reference

E, H, I, S, K = 64, 256, 128, 96, 8


class Block(torch.nn.Module):
    """The fused router/shared projection, then the op."""

    def __init__(self, dtype):
        super().__init__()
        self.router_shared = torch.nn.Linear(H, E + 2 * S + 1, bias=False, dtype=dtype)
        self.gate_up = torch.nn.Parameter(torch.randn(E, 2 * I, H, dtype=dtype) * H**-0.5)
        self.down = torch.nn.Parameter(torch.randn(E, H, I, dtype=dtype) * I**-0.5)
        self.shared_down = torch.nn.Parameter(torch.randn(H, S, dtype=dtype) * S**-0.5)

    def forward(self, x):
        return torch.ops.gdn.moe_shared(x, self.router_shared(x), self.gate_up, self.down, self.shared_down, K, True)

    def float64(self, x):
        rs = self.router_shared(x)
        return reference.moe_shared_float64(x, rs, self.gate_up, self.down, self.shared_down, K, True)


def export(block, T: int, dynamic: bool, device):
    x = torch.randn(T, H, device=device, dtype=block.gate_up.dtype)
    shapes = ({0: torch.export.Dim("T", min=1, max=8192)},) if dynamic else None
    return torch.export.export(block, (x,), dynamic_shapes=shapes, strict=True)


def op_nodes(ep) -> list[str]:
    return [str(n.target) for n in ep.graph.nodes if n.op == "call_function" and "gdn" in str(n.target)]


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True], ids=["decode-T1", "prefill-dynamicT"])
def test_export_keeps_the_op(dynamic):
    block = Block(torch.float32).eval()
    with torch.no_grad():
        ep = export(block, 1 if not dynamic else 5, dynamic, "cpu")
        assert op_nodes(ep) == ["gdn.moe_shared.default"]
        for T in [1, 3] if dynamic else [1]:
            x = torch.randn(T, H)
            torch.testing.assert_close(ep.module()(x), block(x), rtol=0, atol=0)


def aoti_child(dynamic: bool) -> int:
    """Export, compile, load and compare in a fresh process (a crash in the loader cannot take pytest down)."""
    block = Block(torch.float32).cuda().eval()
    with torch.no_grad():
        ep = export(block, 17 if dynamic else 1, dynamic, "cuda")
        assert op_nodes(ep) == ["gdn.moe_shared.default"], op_nodes(ep)
        compiled, src = compile_and_load(ep)
        # the op's Triton kernels are compiled into the library, not called back through the op
        assert "aoti_torch_proxy_executor_call_function" not in src and "launchKernel" in src
        # one token: the router, kernel 1 and kernel 2 launch with PDL (gdn.export.aoti_pdl); prefill: none
        pdl_calls = pdl_launch_sites(src)
        assert pdl_calls == (0 if dynamic else 3), pdl_calls
        # the weights go to the kernels as they are: no kernel copies them first (gdn.kernels.pdl: the
        # mutation analysis must see through the grid-dependency steps)
        copies = re.findall(r"call_triton_\w+\((gate_up|down|shared_down),", src)
        assert not copies, copies
        assert re.search(r"call_\w*gate_up\w*\([^;]*\bgate_up\b", src), "gate_up is not a kernel argument"
        print("loaded", flush=True)
        ok = True
        for T in [1, 7, 333, 4096] if dynamic else [1]:
            x = torch.randn(T, H, device="cuda")
            got, eager, want = compiled(x), block(x), block.float64(x)
            scale = want.abs().max().item()
            eager_err = (eager.double() - want).abs().max().item() / scale
            diff = (got - eager).abs().max().item() / scale
            print(f"T={T}: eager vs float64 {eager_err:.2e}, compiled vs eager {diff:.2e} (relative to max |out|)")
            ok = ok and eager_err <= 1e-4 and diff <= 1e-5
    return 0 if ok else 1


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True], ids=["decode-T1", "prefill-dynamicT"])
def test_aoti_compiled_matches_eager(dynamic):
    """fp32: eager within 1e-4 of float64, compiled within 1e-5 of eager (relative to max |out|)."""
    args = [sys.executable, __file__, "dynamic" if dynamic else "static"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=400)
    print(r.stdout)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"


def moe_only(model, kernels):
    for layer in model.layers:
        if hasattr(layer.mlp, "gate_up"):
            layer.mlp.kernels = kernels
    return model


@pytest.mark.cuda
@pytest.mark.parametrize("swap", ["all-ops", "moe-ops-only"])
@pytest.mark.parametrize("name", ["qwen3_5_moe", "qwen3_next"])
def test_tiny_checkpoint_ops_match_reference(name, swap, hf_checkpoints):
    """Prefill 37 tokens, then 8 one-token decode steps, fp32, on CUDA: kernels="ops" against "reference"."""
    from gdn.export.checkpoint import load_model

    path, hf = hf_checkpoints(name)
    ref = load_model(path, max_seq_len=64, kernels="reference", device="cuda")
    if swap == "all-ops":
        ops = load_model(path, max_seq_len=64, kernels="ops", device="cuda")
    else:
        ops = moe_only(load_model(path, max_seq_len=64, kernels="reference", device="cuda"), KERNEL_SETS["ops"])
    ids = torch.randint(0, hf.config.get_text_config().vocab_size, (1, 37), device="cuda")
    with torch.no_grad():
        a, b = ref(ids, torch.arange(37, device="cuda")), ops(ids, torch.arange(37, device="cuda"))
        for step in range(8):
            torch.testing.assert_close(b, a, rtol=0, atol=2e-4, msg=f"step {step}")
            tok = a.argmax(-1, keepdim=True)  # [1, 1]
            pos = torch.tensor([37 + step], device="cuda")
            a, b = ref(tok, pos), ops(tok, pos)
        torch.testing.assert_close(b, a, rtol=0, atol=2e-4)


if __name__ == "__main__":
    sys.exit(aoti_child(sys.argv[1] == "dynamic"))
