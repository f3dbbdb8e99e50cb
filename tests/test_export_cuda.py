"""CUDA artifacts: export the tiny checkpoints through ExecuTorch's CUDA backend (AOTInductor), load both
methods in-process, and check greedy tokens against our eager model, shared weights/state, GPU memory.

Eager runs our model (kernels="ops", the same Triton kernels) on the GPU; transformers is not run here.
"""

from __future__ import annotations

import time

import pytest
import torch

from gdn.export.checkpoint import load_model
from gdn.export.pipeline import ExportOptions, run_export
from gdn.runner.artifact import Artifact
from gdn.runner.methods import load_methods

PROMPT, DECODE, MAX_SEQ = 37, 48, 128

pytestmark = [pytest.mark.cuda, pytest.mark.slow]


def greedy(prefill, decode, prompt: torch.Tensor, n: int) -> tuple[list[int], torch.Tensor]:
    """Prefill `prompt` [1, T] in one call, then n greedy decode steps; -> tokens, first logits."""
    T = prompt.shape[1]
    first = prefill(prompt, torch.arange(T, device=prompt.device)).clone()
    logits, out = first, []
    for i in range(n):
        tok = int(logits.argmax(-1))
        out.append(tok)
        logits = decode(torch.tensor([[tok]], device=prompt.device), torch.tensor([T + i], device=prompt.device))
    return out, first


@pytest.fixture(scope="module")
def exported(hf_checkpoints, tmp_path_factory):
    cache = {}

    def get(name: str, dtype: str):
        if (name, dtype) not in cache:
            ckpt, _ = hf_checkpoints(name)
            out = tmp_path_factory.mktemp(f"cuda_{name}_{dtype}") / "model.pte"
            t0 = time.perf_counter()
            res = run_export(ExportOptions(output=out, checkpoint=ckpt, backend="cuda", dtype=dtype,
                                           max_seq_len=MAX_SEQ, autotune="none"))
            print(f"\nexport {name} {dtype}: {time.perf_counter() - t0:.1f}s kernels={res.kernels} sizes={res.sizes}")
            cache[name, dtype] = (ckpt, res)
        return cache[name, dtype]

    return get


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_next", "qwen3_5_moe"])
def test_fp32_greedy_matches_eager_and_shares(exported, name):
    ckpt, res = exported(name, "fp32")
    art = Artifact.open(res.path)
    assert art.meta.backend == "cuda" and art.data_path == res.data_path
    torch.cuda.synchronize()
    free_before = torch.cuda.mem_get_info()[0]
    methods = load_methods(art)
    torch.cuda.synchronize()
    used = free_before - torch.cuda.mem_get_info()[0]

    pre, dec = methods.constants("prefill"), methods.constants("decode")
    assert set(pre) == set(dec)
    assert all(pre[k].data_ptr() == dec[k].data_ptr() for k in pre), "methods do not share constants"
    state_names = {s["name"] for s in art.meta.state}
    in_program = {k.removeprefix("model.") for k in pre}  # the method wrappers hold the model as `.model`
    assert state_names <= in_program, sorted(state_names - in_program)[:3]
    weights = sum(t.numel() * t.element_size() for t in {t.data_ptr(): t for t in pre.values()}.values())
    print(f"{name}: constants {weights / 2**20:.2f} MiB, GPU memory used by loading {used / 2**20:.1f} MiB")

    eager = load_model(ckpt, MAX_SEQ, torch.float32, torch.float32, res.kernels, "cuda")
    prompt = torch.randint(0, art.meta.vocab_size, (1, PROMPT), device="cuda")
    with torch.no_grad():
        want, want_logits = greedy(eager.prefill, eager, prompt, DECODE)
    got, got_logits = greedy(methods.prefill, methods.decode, prompt, DECODE)
    err = (got_logits.float() - want_logits.float()).abs().max().item()
    print(f"{name} fp32: first-logits max |diff| {err:.2e}; tokens equal {got == want}")
    assert got == want
    # a second prompt starts from a clean state (input_pos[0] == 0 resets inside the program)
    again, _ = greedy(methods.prefill, methods.decode, prompt, 8)
    assert again == want[:8]
    methods.close()


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_next", "qwen3_5_moe"])
def test_bf16_agreement(exported, name):
    ckpt, res = exported(name, "bf16")
    art = Artifact.open(res.path)
    assert art.meta.dtype == "bfloat16"
    methods = load_methods(art)
    eager = load_model(ckpt, MAX_SEQ, torch.bfloat16, torch.float32, res.kernels, "cuda")
    prompt = torch.randint(0, art.meta.vocab_size, (1, PROMPT), device="cuda")
    with torch.no_grad():
        want, _ = greedy(eager.prefill, eager, prompt, DECODE)
    got, _ = greedy(methods.prefill, methods.decode, prompt, DECODE)
    same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
    print(f"{name} bf16: {same}/{len(want)} leading greedy tokens identical, "
          f"{sum(a == b for a, b in zip(got, want))}/{len(want)} positions equal")
    assert same >= 8
    methods.close()


def test_weights_stored_once(exported):
    _, res = exported("qwen3_5", "fp32")
    art = Artifact.open(res.path)
    pre, dec = art.data_named["prefill_weights_blob"], art.data_named["decode_weights_blob"]
    print(f"prefill blob {pre}, decode blob {dec}, .ptd {res.data_path.stat().st_size} bytes")
    assert pre == dec, "the two methods' weight blobs are stored twice"
