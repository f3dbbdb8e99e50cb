"""The default model's training code (scripts/lm_training.py): its batched training forward equals the
model's inference forward, and the checkpoint it writes loads back into the same parameters, in our
loader and in transformers."""

import json
import sys
from pathlib import Path

import pytest
import torch

from gdn.export.checkpoint import load_model
from gdn.export.config import parse_config
from gdn.export.model import GDNForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from lm_training import hf_state_dict, initialise, save_weights, train_logits  # noqa: E402

VOCAB = 96


def config(tied: bool) -> dict:
    return {
        "architectures": ["Qwen3_5MoeForCausalLM"], "model_type": "qwen3_5_moe_text", "vocab_size": VOCAB,
        "hidden_size": 32, "num_hidden_layers": 3,
        "layer_types": ["linear_attention", "full_attention", "linear_attention"],
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 8, "linear_value_head_dim": 12,
        "linear_conv_kernel_dim": 4, "num_experts": 6, "num_experts_per_tok": 2, "moe_intermediate_size": 20,
        "shared_expert_intermediate_size": 24, "hidden_act": "silu", "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256, "tie_word_embeddings": tied, "mamba_ssm_dtype": "float32",
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
    }


def random_model(tied: bool, seed: int = 0) -> GDNForCausalLM:
    model = GDNForCausalLM(parse_config(config(tied)), max_seq_len=160)
    gen = torch.Generator().manual_seed(seed)
    initialise(model, gen)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)  # away from init: every weight matters
    return model.eval()


@torch.no_grad()
def test_training_forward_equals_the_inference_forward_at_every_length():
    model = random_model(tied=False)
    tokens = torch.randint(0, VOCAB, (2, 150))  # three GDN chunks, the last one partial
    logits, balance = train_logits(model, tokens)
    assert logits.shape == (2, 150, VOCAB) and balance.item() >= 1.0 - 1e-5  # E * sum f p >= 1 at uniform
    for T in (1, 37, 64, 65, 150):
        for b in range(2):
            ref = model.prefill(tokens[b : b + 1, :T], torch.arange(T))[0]
            assert (logits[b, T - 1] - ref).abs().max().item() < 1e-4, (T, b)


def test_training_forward_has_gradients_for_every_parameter():
    model = random_model(tied=True).train()
    logits, balance = train_logits(model, torch.randint(0, VOCAB, (2, 70)))
    (logits.logsumexp(-1).mean() + balance).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_written_checkpoint_loads_back_exactly_and_transformers_agrees(tied, tmp_path):
    import transformers

    model = random_model(tied)
    (tmp_path / "config.json").write_text(json.dumps(config(tied)))
    save_weights(model, tmp_path / "model.safetensors", torch.float32)
    loaded = load_model(tmp_path, max_seq_len=160)
    written, again = hf_state_dict(model, torch.float32), hf_state_dict(loaded, torch.float32)
    assert written.keys() == again.keys() and all(torch.equal(written[k], again[k]) for k in written)
    ids = torch.randint(0, VOCAB, (1, 41))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(input_ids=ids).logits[0, -1]
        got = loaded(ids, torch.arange(41))[0]
        assert torch.equal(got, model(ids, torch.arange(41))[0])
    assert (got - ref).abs().max().item() < 1e-4
