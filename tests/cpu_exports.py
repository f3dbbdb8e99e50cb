"""Settings and checkpoint dressing of the CPU artifacts that tests share (conftest's `cpu_artifacts`)."""

from __future__ import annotations

import json

CPU_MAX_SEQ = 96  # the tiny checkpoints' artifacts
DEFAULT_MAX_SEQ, DEFAULT_CHUNK = 64, 16  # the bundled default model's (a 16-token prefill bound, so prompts chunk)
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


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
