"""Collect what the runner needs besides the program: tokenizer, chat template, stop ids, generation defaults."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gdn.runner.artifact import FORMAT_VERSION, Metadata

from .config import ModelConfig
from .model import GDNForCausalLM
from .quant import QuantScheme

# tokens that end a turn in the chat templates of the supported families
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")
GENERATION_KEYS = ("temperature", "top_k", "top_p", "do_sample", "repetition_penalty", "max_new_tokens")


class TokenizerFilesError(ValueError):
    """A tokenizer file that is present but unreadable."""


@dataclass(frozen=True)
class TokenizerFiles:
    tokenizer_json: str | None
    chat_template: str | None
    generation: dict[str, Any]
    extra_eos: tuple[int, ...]


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerFilesError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise TokenizerFilesError(f"{path} is not a JSON object")
    return raw


def read_tokenizer_files(checkpoint: Path) -> TokenizerFiles:
    """tokenizer.json, the chat template (tokenizer_config.json or chat_template.jinja) and
    generation_config.json, each optional."""
    tok_path = checkpoint / "tokenizer.json"
    tokenizer_json = tok_path.read_text(encoding="utf-8") if tok_path.exists() else None
    if tokenizer_json is not None:
        _read_json(tok_path)
    tok_cfg = _read_json(checkpoint / "tokenizer_config.json") or {}
    template = tok_cfg.get("chat_template")
    jinja = checkpoint / "chat_template.jinja"
    if template is None and jinja.exists():
        template = jinja.read_text(encoding="utf-8")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    gen = _read_json(checkpoint / "generation_config.json") or {}
    eos = gen.get("eos_token_id")
    extra_eos = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    defaults = {k: gen[k] for k in GENERATION_KEYS if gen.get(k) is not None}
    return TokenizerFiles(tokenizer_json, template, defaults, extra_eos)


def _end_of_turn_ids(tokenizer_json: str | None) -> list[int]:
    if tokenizer_json is None:
        return []
    added = json.loads(tokenizer_json).get("added_tokens") or []
    return [t["id"] for t in added if t.get("content") in END_OF_TURN]


def build_metadata(
    cfg: ModelConfig,
    model: GDNForCausalLM,
    files: TokenizerFiles,
    backend: str,
    max_prefill_chunk: int,
    dtype: torch.dtype,
    state_dtype: torch.dtype,
    quant: QuantScheme | None = None,
) -> Metadata:
    eos = list(dict.fromkeys([*cfg.eos_token_ids, *files.extra_eos]))
    stop = list(dict.fromkeys([*eos, *_end_of_turn_ids(files.tokenizer_json)]))
    state = [{"name": n, "shape": list(b.shape), "dtype": str(b.dtype).removeprefix("torch.")}
             for n, b in model.state_buffers().items()]
    return Metadata(
        format_version=FORMAT_VERSION,
        backend=backend,
        family=cfg.family,
        config=json.loads(json.dumps(cfg.to_dict())),
        vocab_size=cfg.vocab_size,
        max_seq_len=model.max_seq_len,
        max_prefill_chunk=max_prefill_chunk,
        dtype=str(dtype).removeprefix("torch."),
        state_dtype=str(state_dtype).removeprefix("torch."),
        state=state,
        bos_token_id=cfg.bos_token_id,
        eos_token_ids=eos,
        stop_token_ids=stop,
        chat_template=files.chat_template,
        generation_defaults=files.generation,
        quant=None if quant is None else quant.to_metadata(model),
    )
