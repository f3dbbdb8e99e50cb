"""The gdn ops survive torch.export(strict=True); on CUDA, AOTInductor compiles their Triton kernels into
the artifact, the compiled module matches eager over a sequence of calls (state carried in its buffers),
and the generated wrapper holds no extra copy of the recurrent state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.export import Dim

import gdn.kernels  # noqa: F401  (registers torch.ops.gdn.*)
from aoti_util import compile_and_load

pytestmark = pytest.mark.slow  # every test here runs torch.export, and the cuda ones AOTInductor too


class GDNCore(torch.nn.Module):
    """conv -> gated delta rule over buffers, as in the model; T == 1 (static) takes the decode op."""

    def __init__(self, Hk: int, Hv: int, K: int, V: int, W: int, dtype: torch.dtype):
        super().__init__()
        self.Hk, self.Hv, self.K, self.V = Hk, Hv, K, V
        C = 2 * Hk * K + Hv * V
        self.conv_weight = torch.nn.Parameter(torch.randn(C, W) * 0.5)
        self.A_log = torch.nn.Parameter(torch.empty(Hv).uniform_(0.5, 8).log())
        self.dt_bias = torch.nn.Parameter(torch.randn(Hv) * 0.5)
        self.register_buffer("conv_state", torch.zeros(1, W - 1, C, dtype=dtype))
        self.register_buffer("recurrent_state", torch.zeros(1, Hv, K, V))

    def forward(self, qkv: torch.Tensor, a: torch.Tensor, b: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
        T = qkv.shape[1]
        x = torch.ops.gdn.causal_conv1d(qkv, self.conv_state, self.conv_weight, reset)
        kd = self.Hk * self.K
        q, k, v = x.split([kd, kd, self.Hv * self.V], dim=-1)
        q, k = q.view(1, T, self.Hk, self.K), k.view(1, T, self.Hk, self.K)
        v = v.view(1, T, self.Hv, self.V)
        if T == 1:
            return torch.ops.gdn.recurrent_gated_delta_rule(
                q, k, v, a, b, self.A_log, self.dt_bias, self.recurrent_state, reset
            )
        g = -self.A_log.exp() * F.softplus(a.float() + self.dt_bias)
        return torch.ops.gdn.chunk_gated_delta_rule(q, k, v, g, b.float().sigmoid(), self.recurrent_state, reset)


def inputs(m: GDNCore, T: int, reset: bool, dtype, device):
    C = m.conv_weight.shape[0]
    return (
        torch.randn(1, T, C, device=device).to(dtype),
        torch.randn(1, T, m.Hv, device=device).to(dtype),
        torch.randn(1, T, m.Hv, device=device).to(dtype),
        torch.tensor([reset], device=device),
    )


def export(m: GDNCore, T: int, dtype, device) -> torch.export.ExportedProgram:
    args = inputs(m, T, True, dtype, device)
    if T == 1:
        return torch.export.export(m, args, strict=True)
    t = Dim("T", min=2, max=8192)
    return torch.export.export(m, args, dynamic_shapes=({1: t}, {1: t}, {1: t}, None), strict=True)


def op_targets(ep: torch.export.ExportedProgram) -> set[str]:
    return {str(n.target).rsplit(".", 1)[0] for n in ep.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("T", [1, 70], ids=["decode", "prefill"])
def test_export_keeps_ops_cpu(T):
    m = GDNCore(2, 4, 16, 16, 4, torch.float32)
    ep = export(m, T, torch.float32, "cpu")
    assert {"gdn.causal_conv1d", "gdn.recurrent_gated_delta_rule" if T == 1 else "gdn.chunk_gated_delta_rule"} <= op_targets(ep)
    args = inputs(m, T, True, torch.float32, "cpu")
    eager = GDNCore(2, 4, 16, 16, 4, torch.float32)
    eager.load_state_dict(m.state_dict())
    torch.testing.assert_close(ep.module()(*args), eager(*args), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("T,dt", [(1, "bf16"), (300, "bf16")], ids=["decode-bf16", "prefill-bf16"])
def test_aoti_matches_eager_cuda(T, dt):
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dt]
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    m = GDNCore(16, 32, 128, 128, 4, dtype).cuda()
    eager = GDNCore(16, 32, 128, 128, 4, dtype).cuda()
    eager.load_state_dict(m.state_dict())
    ep = export(m, T, dtype, "cuda")
    assert {"gdn.causal_conv1d"} <= op_targets(ep)
    compiled, src = compile_and_load(ep)
    dump = os.environ.get("GDN_AOTI_DUMP")
    if dump:
        Path(dump).mkdir(parents=True, exist_ok=True)
        Path(dump, f"wrapper_{'decode' if T == 1 else 'prefill'}_{dt}.cpp").write_text(src)
    assert src, "no generated C++ from the compile"
    # the Triton kernels are inside the artifact, not calls back into Python
    assert "triton" in src.lower() or "launchKernel" in src
    # no full copy of the recurrent state: no copy kernel/ATen copy and no [1, 32, 128, 128] temporary
    assert "aoti_torch_copy_" not in src, "compiled program copies a buffer"
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    # reset first, then continue from the state the compiled program left in its buffers
    for i, n in enumerate([1, 1, 1] if T == 1 else [T, 65]):
        args = inputs(m, n, i == 0, dtype, "cuda")
        want = eager(*args)
        got = compiled(*args)
        err = ((got.double() - want.double()).norm() / want.double().norm()).item()
        assert err < tol, f"call {i} (T={n}): compiled differs from eager, rel {err:.2e}"
