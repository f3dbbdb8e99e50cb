"""Write the stored greedy continuation of the bundled default model, produced by eager PyTorch.

    python scripts/default_model_expectation.py        (writes tests/data/default_model_greedy.json)

Our `GDNForCausalLM` in float32 with the reference kernels, loaded from export/default_model: the prompt
is prefilled in one call, then one decode call per token, argmax, up to NEW_TOKENS or a stop token (kept,
as the runner keeps it). CI exports the same checkpoint to a CPU artifact and checks that gdn-run's greedy
tokens equal these (tests/test_runner_cli.py); tests/test_default_model.py checks that the eager model
and transformers still produce them. Rerun it whenever the default model changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer

from gdn.export.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "export" / "default_model"
OUT = ROOT / "tests" / "data" / "default_model_greedy.json"
PROMPT = "The borrow checker"
NEW_TOKENS = 32


@torch.no_grad()
def greedy(checkpoint: Path, ids: list[int], n: int, stop: set[int]) -> list[int]:
    model = load_model(checkpoint, max_seq_len=len(ids) + n, dtype=torch.float32, kernels="reference")
    logits = model.prefill(torch.tensor([ids]), torch.arange(len(ids)))
    out: list[int] = []
    while len(out) < n:
        out.append(int(logits.argmax(-1)))
        if out[-1] in stop:
            break
        logits = model(torch.tensor([[out[-1]]]), torch.tensor([len(ids) + len(out) - 1]))
    return out


def main() -> None:
    tok = Tokenizer.from_file(str(CHECKPOINT / "tokenizer.json"))
    stop = set(json.loads((CHECKPOINT / "generation_config.json").read_text())["eos_token_id"])
    ids = tok.encode(PROMPT, add_special_tokens=False).ids
    out = greedy(CHECKPOINT, ids, NEW_TOKENS, stop)
    record = {"prompt": PROMPT, "prompt_ids": ids, "max_new_tokens": NEW_TOKENS, "generated_ids": out,
              "text": tok.decode(out, skip_special_tokens=True),
              "made_by": "python scripts/default_model_expectation.py (eager GDNForCausalLM, float32, reference kernels)"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()) + "\n}\n")
    print(f"wrote {OUT}: {PROMPT!r} -> {record['text']!r}")


if __name__ == "__main__":
    main()
