"""The bundled default model: a Qwen3.5-MoE checkpoint in Hugging Face layout that transformers reads too,
under the size limit, and whose stored greedy continuation (tests/data, made by
scripts/default_model_expectation.py) the eager model and transformers both still produce."""

import json
import sys
from pathlib import Path

import torch

from gdn.export.config import FULL, LINEAR, load_config
from runner_eager import DEFAULT_MODEL

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from default_model_expectation import greedy  # noqa: E402

EXPECTED = json.loads((Path(__file__).parent / "data" / "default_model_greedy.json").read_text())


def stop_ids() -> set[int]:
    return set(json.loads((DEFAULT_MODEL / "generation_config.json").read_text())["eos_token_id"])


def test_is_a_small_qwen3_5_moe_hybrid_with_chat_files():
    cfg = load_config(DEFAULT_MODEL)
    assert cfg.family == "qwen3_5_moe" and {LINEAR, FULL} <= set(cfg.layer_types)
    assert all(cfg.moe_layers) and cfg.shared_expert_intermediate_size > 0
    assert (DEFAULT_MODEL / "model.safetensors").stat().st_size < 20e6
    tc = json.loads((DEFAULT_MODEL / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tc["chat_template"] and tc["eos_token"] == "<|im_end|>"
    tok = json.loads((DEFAULT_MODEL / "tokenizer.json").read_text())
    specials = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert {specials["<|im_end|>"], specials["<|endoftext|>"]} == stop_ids() == set(cfg.eos_token_ids)


def test_eager_model_reproduces_the_stored_greedy_continuation():
    got = greedy(DEFAULT_MODEL, EXPECTED["prompt_ids"], EXPECTED["max_new_tokens"], stop_ids())
    assert got == EXPECTED["generated_ids"]


def test_transformers_reads_the_checkpoint_and_generates_the_same_tokens():
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32).eval()
    ids = torch.tensor([EXPECTED["prompt_ids"]])
    out = hf.generate(ids, max_new_tokens=EXPECTED["max_new_tokens"], do_sample=False,
                      eos_token_id=sorted(stop_ids()), pad_token_id=0)
    assert out[0, ids.shape[1]:].tolist() == EXPECTED["generated_ids"]
