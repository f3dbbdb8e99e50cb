"""CPU artifacts of the tiny checkpoints of all three families, run through `executorch.runtime`.

One export per family (module scope, through the `gdn-export` command, the three side by side; the
qwen3_5 checkpoint gets a real tokenizer, chat template and generation config). Greedy tokens after a prompt
longer than the prefill bound (so the prompt is prefilled in chunks) must equal our eager model's, which
prefills the whole prompt in one call; logits are checked against a float64 eager model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from gdn.export.checkpoint import load_model
from gdn.runner.artifact import Artifact, Metadata
from gdn.runner.methods import load_methods

MAX_SEQ, DECODE = 96, 12
FAMILIES = ["qwen3_5", "qwen3_next", "qwen3_5_moe"]
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"

pytestmark = pytest.mark.slow


def add_tokenizer(folder, vocab_size: int) -> None:
    """A real `tokenizers` WordLevel tokenizer whose ids fit the tiny vocab, plus chat files."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"w{i}" for i in range(vocab_size - 3)]
    vocab = {w: i for i, w in enumerate(["<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    gen = json.loads((folder / "generation_config.json").read_text()) if (folder / "generation_config.json").exists() else {}
    gen.update({"temperature": 0.7, "top_k": 20, "top_p": 0.8, "eos_token_id": [vocab_size - 5]})
    (folder / "generation_config.json").write_text(json.dumps(gen))


@pytest.fixture(scope="module")
def artifacts(hf_checkpoints, tmp_path_factory):
    """The three exports run side by side (`gdn-export` processes): they are most of this file's time."""
    out, jobs = {}, {}
    for name in FAMILIES:
        ckpt, _ = hf_checkpoints(name)
        folder = tmp_path_factory.mktemp(f"cpu_{name}")
        pte = folder / "model.pte"
        if name == "qwen3_5":
            ckpt = shutil.copytree(ckpt, folder / "ckpt")
            add_tokenizer(ckpt, json.loads((ckpt / "config.json").read_text())["vocab_size"])
        cmd = [sys.executable, "-m", "gdn.export.cli", str(pte), "--checkpoint", str(ckpt), "--backend", "cpu",
               "--max-seq-len", str(MAX_SEQ)]
        jobs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out[name] = (ckpt, pte)
    try:
        for name, job in jobs.items():
            _, err = job.communicate(timeout=900)
            assert job.returncode == 0, f"{name}: {err[-2000:]}"
            for stage in ("load weights", "export prefill", "export decode", "lower and compile", "write"):
                assert stage in err, f"{name}: no {stage!r} in the progress lines"
    finally:
        for job in jobs.values():
            job.kill()
    return out


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


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_matches_eager(artifacts, name):
    ckpt, pte = artifacts[name]
    art = Artifact.open(pte)
    methods = load_methods(art)
    chunk = art.meta.max_prefill_chunk
    eager = load_model(ckpt, MAX_SEQ, torch.float32, torch.float32, "reference")
    exact = load_model(ckpt, MAX_SEQ, torch.float64, torch.float64, "reference")
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


def test_metadata_round_trips(artifacts):
    ckpt, pte = artifacts["qwen3_5"]
    art = Artifact.open(pte)
    meta = art.meta
    model = load_model(ckpt, MAX_SEQ)
    assert meta.backend == "cpu" and meta.family == "qwen3_5" and meta.format_version == 1
    assert meta.max_seq_len == MAX_SEQ and meta.max_prefill_chunk == 64 and meta.dtype == "float32"
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


def test_no_tokenizer_artifact(artifacts):
    art = Artifact.open(artifacts["qwen3_next"][1])
    assert art.tokenizer_json is None and art.meta.chat_template is None and art.meta.family == "qwen3_next"


def test_weights_stored_once(artifacts):
    """XNNPACK's weights are named data keyed by content hash: each distinct tensor stored once for both methods."""
    import hashlib

    pte = artifacts["qwen3_5_moe"][1]
    art = Artifact.open(pte)
    data = pte.read_bytes()
    by_hash = {}
    for seg in art.layout.named_data.values():
        by_hash.setdefault(hashlib.sha256(data[seg.offset : seg.offset + seg.size]).hexdigest(), set()).add(seg.offset)
    assert all(len(offsets) == 1 for offsets in by_hash.values())
    assert len(by_hash) > 10
