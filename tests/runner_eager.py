"""An eager GDNForCausalLM behind the Methods interface, for runner tests before (and beside) artifacts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from gdn.export.checkpoint import load_model

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "export" / "default_model"
DEFAULT_VOCAB = json.loads((DEFAULT_MODEL / "config.json").read_text())["vocab_size"]
DEFAULT_STOP_IDS = tuple(json.loads((DEFAULT_MODEL / "generation_config.json").read_text())["eos_token_id"])


def random_ids(n: int, vocab: int = DEFAULT_VOCAB) -> list[int]:
    """n random ordinary token ids (ids 0-2 are the special tokens)."""
    return [random.randrange(3, vocab) for _ in range(n)]


class EagerMethods:
    """prefill -> model.prefill (chunked path), decode -> model forward at T == 1; counts calls."""

    def __init__(self, model, device: str | torch.device):
        self.model, self.device = model, torch.device(device)
        self.calls = {"prefill": 0, "decode": 0}

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        self.calls["prefill"] += 1
        return self.model.prefill(tokens, input_pos)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        self.calls["decode"] += 1
        return self.model(tokens, input_pos)

    def close(self) -> None:
        pass


def metadata(model, max_seq_len: int, chunk: int, checkpoint: Path | None = None, **overrides):
    """The artifact metadata the exporter would write for this model (the real Metadata record)."""
    from gdn.runner.artifact import Metadata

    cfg = model.cfg
    gen = json.loads((checkpoint / "generation_config.json").read_text()) if checkpoint and (
        checkpoint / "generation_config.json").exists() else {}
    tc = json.loads((checkpoint / "tokenizer_config.json").read_text()) if checkpoint and (
        checkpoint / "tokenizer_config.json").exists() else {}
    eos = gen.get("eos_token_id", [])
    eos = [eos] if isinstance(eos, int) else list(eos)
    fields = dict(
        format_version=1, backend=model_device(model).type, family="test", config={}, vocab_size=cfg.vocab_size,
        max_seq_len=max_seq_len, max_prefill_chunk=chunk, dtype="float32", state_dtype="float32", state=[],
        bos_token_id=None, eos_token_ids=eos, stop_token_ids=eos, chat_template=tc.get("chat_template"),
        generation_defaults={k: gen[k] for k in ("do_sample", "temperature", "top_k", "top_p") if k in gen},
    )
    fields.update(overrides)
    return Metadata(**fields)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def load_eager(checkpoint: Path, max_seq_len: int, device: str = "cpu", kernels: str = "reference",
               dtype=torch.float32):
    model = load_model(checkpoint, max_seq_len=max_seq_len, dtype=dtype, kernels=kernels, device=device)
    return model, EagerMethods(model, device)


def tokenizer_json(checkpoint: Path = DEFAULT_MODEL) -> str | None:
    path = checkpoint / "tokenizer.json"
    return path.read_text() if path.exists() else None


@torch.no_grad()
def greedy_reference(model, ids: list[int], n: int) -> list[int]:
    """The model's own greedy loop: full-prompt forward, then one T == 1 call per token."""
    dev = model_device(model)
    logits = model(torch.tensor([ids], device=dev), torch.arange(len(ids), device=dev))
    out = []
    for i in range(n):
        tok = int(logits.argmax(-1))
        out.append(tok)
        logits = model(torch.tensor([[tok]], device=dev), torch.tensor([len(ids) + i], device=dev))
    return out
