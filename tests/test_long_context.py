"""Long context end to end on the GPU: a bf16 artifact of the Qwen3.5-2B shape (random weights in the Hugging Face
layout) exported with the default cache, which spans the model's 262,144 positions, prefills a 131,072-token
prompt and goes on decoding through the CUDA graph. Its logits are spot-checked against the eager model with the
reference kernels (the chunked plain-PyTorch attention and gated delta rule), fed the same prompt in 8,192-token
chunks: the prefill's last logits and every decode step's, teacher-forced with the artifact's tokens.
Set GDN_LONG_ARTIFACT (and GDN_LONG_CHECKPOINT) to reuse an export."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from gdn.runner import Runner
from gdn.runner.loop import DecodeLoop, prefill

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import gdn_bench  # noqa: E402

pytestmark = [pytest.mark.cuda, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]

PROMPT, STEPS, REF_CHUNK = 131072, 8, 8192


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    if os.environ.get("GDN_LONG_ARTIFACT"):
        return Path(os.environ["GDN_LONG_ARTIFACT"]), Path(os.environ["GDN_LONG_CHECKPOINT"])
    from gdn.export.pipeline import ExportOptions, run_export

    folder = tmp_path_factory.mktemp("long")
    ckpt = gdn_bench.make_checkpoint("qwen3.5-2b", folder)
    out = run_export(ExportOptions(output=folder / "m.pte", checkpoint=ckpt, backend="cuda", dtype="bf16")).path
    return out, ckpt


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def test_2b_prefills_131k_into_a_262k_cache_and_decodes(exported):
    path, ckpt = exported
    runner = Runner.load(path)
    assert runner.max_seq_len == 262144
    ids = torch.randint(3, runner.vocab_size, (PROMPT,), generator=torch.Generator().manual_seed(0)).tolist()
    first = prefill(runner.methods, ids, 0, runner.prefill_chunk)  # [1, V]
    loop = DecodeLoop(runner.methods, runner.vocab_size, cuda_graph=True, warmup=1, block=4)
    tokens = [loop.start(first, PROMPT, STEPS + 1)]
    tokens += list(loop.tokens())
    assert len(tokens) == STEPS + 1
    assert loop.path == "cuda_graph"
    # one more step, eager, for its logits: the state the graph replays left behind
    last = runner.methods.decode(torch.tensor([[tokens[-1]]], device="cuda"),
                                 torch.tensor([PROMPT + STEPS], device="cuda")).float().cpu()
    first = first.float().cpu()
    runner.close()

    from gdn.export.checkpoint import load_model

    ref = load_model(ckpt, PROMPT + STEPS + 1, torch.bfloat16, torch.float32, "reference", "cuda")
    with torch.no_grad():
        for s in range(0, PROMPT, REF_CHUNK):
            chunk = torch.tensor([ids[s:s + REF_CHUNK]], device="cuda")
            want = ref.prefill(chunk, torch.arange(s, s + chunk.shape[1], device="cuda"))
        c_first = cosine(first, want.float().cpu())
        agree = 0  # teacher-forced: the reference decodes the artifact's tokens
        for i, t in enumerate(tokens):
            want = ref(torch.tensor([[t]], device="cuda"), torch.tensor([PROMPT + i], device="cuda"))
            agree += i < STEPS and int(want.argmax()) == tokens[i + 1]
        c_last = cosine(last, want.float().cpu())
    msg = f"cosine: prefill {c_first:.5f}, decode step {STEPS + 1} {c_last:.5f}; greedy agreement {agree}/{STEPS}"
    print(msg)
    assert c_first > 0.99 and c_last > 0.99, msg
    assert agree >= STEPS // 2, msg
