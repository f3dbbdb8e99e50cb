"""torch.export(strict=True) of the model: one-token decode and a dynamic prefill length.

With our triton_ops (kernels="ops") the model exports for any prefill length up to max_seq_len; those
cases run on the GPU, where the ops run their Triton kernels. On CPU the reference kernels export into
plain ATen ops, prefill bounded by the 64-token chunk: the ExecuTorch CPU path."""

import pytest
import torch
from torch.export import Dim, export

from gdn.export.checkpoint import load_model
from gdn.export.methods import PrefillMethod as Prefill

MAX_SEQ = 96
pytestmark = pytest.mark.slow


def _export(module, T: int, dim=None, device="cpu"):
    args = (torch.randint(0, 160, (1, T), device=device), torch.arange(T, device=device))
    shapes = None if dim is None else ({1: dim}, {0: dim})
    return export(module, args, dynamic_shapes=shapes, strict=True).module()


@pytest.mark.parametrize(
    "name, kernels, device",
    [("qwen3_next", "reference", "cpu"), ("qwen3_5_moe", "reference", "cpu"),
     pytest.param("qwen3_next", "ops", "cuda", marks=pytest.mark.cuda),
     pytest.param("qwen3_5_moe", "ops", "cuda", marks=pytest.mark.cuda)],
)
def test_decode_export_matches_eager(name, kernels, device, hf_checkpoints):
    path, _ = hf_checkpoints(name)
    exported = _export(load_model(path, max_seq_len=MAX_SEQ, kernels=kernels, device=device), 1, device=device)
    eager = load_model(path, max_seq_len=MAX_SEQ, kernels=kernels, device=device)
    for pos, tok in enumerate(torch.randint(0, 160, (9,)).tolist()):
        args = (torch.tensor([[tok]], device=device), torch.tensor([pos], device=device))
        torch.testing.assert_close(exported(*args), eager(*args), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "name, device",
    [("qwen3_5_tied", "cpu"),
     pytest.param("qwen3_next_mlp_only", "cuda", marks=pytest.mark.cuda),
     pytest.param("qwen3_5_tied", "cuda", marks=pytest.mark.cuda)],
)
def test_dynamic_prefill_export_matches_eager(name, device, hf_checkpoints):
    """One program for every T in [2, max_seq_len], run at several T and positions, state carried. On CPU
    the ops run their reference kernels."""
    path, _ = hf_checkpoints(name)
    model = load_model(path, max_seq_len=MAX_SEQ, kernels="ops", device=device)
    exported = _export(model, 5, Dim("T", min=2, max=MAX_SEQ), device=device)
    eager = load_model(path, max_seq_len=MAX_SEQ, kernels="ops", device=device)
    pos = 0
    for T in (2, 37, 65, 2):  # positions 0..105 would overflow: the last call restarts at 0
        start = 0 if pos + T > MAX_SEQ else pos
        args = (torch.randint(0, 160, (1, T), device=device), torch.arange(start, start + T, device=device))
        torch.testing.assert_close(exported(*args), eager(*args), atol=1e-5, rtol=1e-5)
        pos = start + T
    full = (torch.randint(0, 160, (1, MAX_SEQ), device=device), torch.arange(MAX_SEQ, device=device))
    torch.testing.assert_close(exported(*full), eager(*full), atol=1e-5, rtol=1e-5)


def test_reference_kernels_export_to_plain_aten(hf_checkpoints):
    """The ExecuTorch CPU path: prefill bounded by the 64-token chunk traces into ATen ops only."""
    path, _ = hf_checkpoints("qwen3_5_moe_vl")
    model = load_model(path, max_seq_len=MAX_SEQ, kernels="reference")
    ep = export(Prefill(model), (torch.randint(0, 160, (1, 7)), torch.arange(7)),
                dynamic_shapes=({1: Dim("T", min=1, max=64)}, {0: Dim("T", min=1, max=64)}), strict=True)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not [t for t in targets if "gdn" in t], targets
    exported, eager = ep.module(), load_model(path, max_seq_len=MAX_SEQ, kernels="reference")
    for T, start in ((1, 0), (64, 1), (13, 65)):
        args = (torch.randint(0, 160, (1, T)), torch.arange(start, start + T))
        torch.testing.assert_close(exported(*args), eager(*args), atol=1e-5, rtol=1e-5)
