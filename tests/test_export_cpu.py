"""CPU artifacts of all three families, run through `executorch.runtime`: the tiny qwen3_5 and qwen3_next
checkpoints and, for qwen3_5_moe, the bundled default model (conftest's `cpu_artifacts`, one `gdn-export`
each, side by side, shared with the runner's tests; the qwen3_5 checkpoint gets a real tokenizer, chat template
and generation config). Greedy tokens after a prompt longer than the prefill bound (so the prompt is prefilled
in chunks) must equal our eager model's, which prefills the whole prompt in one call; logits are checked
against a float64 eager model.
"""

from __future__ import annotations

import json

import pytest
import torch

from gdn.export.checkpoint import load_model
from gdn.runner.artifact import Artifact, Metadata
from gdn.runner.methods import load_methods
from cpu_exports import CHAT_TEMPLATE, CPU_MAX_SEQ

DECODE = 12
ARTIFACTS = {"qwen3_5": "qwen3_5", "qwen3_next": "qwen3_next", "qwen3_5_moe": "default"}  # family -> cpu_artifacts key

pytestmark = pytest.mark.slow


def prefill_chunked(methods, prompt: torch.Tensor, chunk: int) -> torch.Tensor:
    T = prompt.shape[1]
    for start in range(0, T, chunk):
        stop = min(T, start + chunk)
        logits = methods.prefill(prompt[:, start:stop], torch.arange(start, stop))
    return logits


def greedy(prefill, decode, T: int, n: int) -> list[int]:
    logits, out = prefill(), []
    for i in range(n):
        tok = int(logits.argmax(-1))
        out.append(tok)
        logits = decode(torch.tensor([[tok]]), torch.tensor([T + i]))
    return out


@pytest.mark.parametrize("name", ARTIFACTS)
def test_greedy_matches_eager(cpu_artifacts, name):
    ckpt, pte = cpu_artifacts[ARTIFACTS[name]]
    art = Artifact.open(pte)
    assert art.meta.family == name
    methods = load_methods(art)
    chunk, max_seq = art.meta.max_prefill_chunk, art.meta.max_seq_len
    eager = load_model(ckpt, max_seq, torch.float32, torch.float32, "reference")
    exact = load_model(ckpt, max_seq, torch.float64, torch.float64, "reference")
    for T in (chunk + 9, 1, 5):  # longer than the bound (two chunks), the shortest, then a fresh short prompt
        prompt = torch.randint(0, art.meta.vocab_size, (1, T))
        with torch.no_grad():
            want = greedy(lambda: eager.prefill(prompt, torch.arange(T)), eager, T, DECODE)
            ref64 = exact.prefill(prompt, torch.arange(T))
            ref32 = eager.prefill(prompt, torch.arange(T))
        got_logits = prefill_chunked(methods, prompt, chunk)
        err, err32 = (got_logits.double() - ref64).abs().max().item(), (ref32.double() - ref64).abs().max().item()
        assert err <= 4 * err32 + 1e-5, f"T={T}: artifact logits off float64 by {err:.2e} (eager fp32: {err32:.2e})"
        got = greedy(lambda: prefill_chunked(methods, prompt, chunk), methods.decode, T, DECODE)
        assert got == want, f"T={T}"


def test_metadata_round_trips(cpu_artifacts):
    ckpt, pte = cpu_artifacts["qwen3_5"]
    art = Artifact.open(pte)
    meta = art.meta
    model = load_model(ckpt, CPU_MAX_SEQ)
    assert meta.backend == "cpu" and meta.family == "qwen3_5" and meta.format_version == 1
    assert meta.max_seq_len == CPU_MAX_SEQ and meta.max_prefill_chunk == 64 and meta.dtype == "float32"
    assert meta.vocab_size == model.cfg.vocab_size and meta.config == json.loads(json.dumps(model.cfg.to_dict()))
    assert [(s["name"], s["shape"]) for s in meta.state] == [(n, list(b.shape)) for n, b in model.state_buffers().items()]
    assert art.tokenizer_json == (ckpt / "tokenizer.json").read_text()
    assert meta.chat_template == CHAT_TEMPLATE
    assert meta.generation_defaults == {"temperature": 0.7, "top_k": 20, "top_p": 0.8}
    im_end = json.loads(art.tokenizer_json)["added_tokens"][1]
    assert im_end["content"] == "<|im_end|>" and im_end["id"] in meta.stop_token_ids
    assert set(meta.eos_token_ids) <= set(meta.stop_token_ids) and meta.vocab_size - 5 in meta.eos_token_ids
    assert Metadata.from_json(meta.to_json(), "x") == meta
    assert art.data_path is None


def test_no_tokenizer_artifact(cpu_artifacts):
    art = Artifact.open(cpu_artifacts["qwen3_next"][1])
    assert art.tokenizer_json is None and art.meta.chat_template is None and art.meta.family == "qwen3_next"


def test_weights_stored_once(cpu_artifacts):
    """XNNPACK's weights are named data keyed by content hash: each distinct tensor stored once for both methods."""
    import hashlib

    pte = cpu_artifacts["default"][1]
    art = Artifact.open(pte)
    data = pte.read_bytes()
    by_hash = {}
    for seg in art.layout.named_data.values():
        by_hash.setdefault(hashlib.sha256(data[seg.offset : seg.offset + seg.size]).hexdigest(), set()).add(seg.offset)
    assert all(len(offsets) == 1 for offsets in by_hash.values())
    assert len(by_hash) > 10
