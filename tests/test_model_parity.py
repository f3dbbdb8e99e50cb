"""Our model against transformers (the reference) on tiny random checkpoints of every family, fp32."""

import pytest
import torch

from gdn.export.checkpoint import load_model
from hf_tiny import CASES

PROMPT_LEN, NEW_TOKENS = 37, 48


@pytest.mark.parametrize("name", list(CASES))
def test_last_logits_match_transformers(name, hf_checkpoints):
    path, hf = hf_checkpoints(name)
    model = load_model(path, max_seq_len=128)
    ids = torch.randint(0, hf.config.get_text_config().vocab_size, (1, PROMPT_LEN))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits[0, -1]
        got = model(ids, torch.arange(PROMPT_LEN))[0]
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-4


def greedy(model, ids: torch.Tensor, n: int, steps: list | None = None) -> list[int]:
    """Prefill the prompt, then one T=1 step per new token (the decode kernels)."""
    T = ids.shape[1]
    logits = model(ids, torch.arange(T))
    out = []
    for i in range(n):
        if steps is not None:
            steps.append(logits[0])
        tok = int(logits.argmax(-1))
        out.append(tok)
        logits = model(torch.tensor([[tok]]), torch.tensor([T + i]))
    return out


@pytest.mark.parametrize("name", ["qwen3_next", "qwen3_next_mlp_only", "qwen3_5_tied", "qwen3_5_moe_vl"])
@pytest.mark.parametrize("prompt_len", [1, 37])
def test_greedy_tokens_equal_transformers_generate(name, prompt_len, hf_checkpoints):
    path, hf = hf_checkpoints(name)
    model = load_model(path, max_seq_len=128)
    ids = torch.randint(0, hf.config.get_text_config().vocab_size, (1, prompt_len))
    with torch.no_grad():
        gen = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                          do_sample=False, eos_token_id=None, pad_token_id=0, output_logits=True,
                          return_dict_in_generate=True)
        steps = []
        got = greedy(model, ids, NEW_TOKENS, steps)
    assert got == gen.sequences[0, prompt_len:].tolist()
    # every step's logits, not only their argmax: |logit| < ~5 and the typical step differs by ~1e-5, but at
    # some steps a GDN head whose output is near zero before the gated RMSNorm amplifies fp32 rounding
    # (seen: x45 within one layer; there transformers itself is 1.2e-4 from a float64 run, we 6.8e-4), so 2e-3
    for step, (ours, ref) in enumerate(zip(steps, gen.logits)):
        torch.testing.assert_close(ours, ref[0], atol=2e-3, rtol=0, msg=f"step {step}")


def test_second_prompt_does_not_see_the_first(hf_checkpoints):
    path, _ = hf_checkpoints("qwen3_5_moe")
    used = load_model(path, max_seq_len=128)
    fresh = load_model(path, max_seq_len=128)
    first, second = torch.randint(0, 160, (1, 50)), torch.randint(0, 160, (1, 21))
    with torch.no_grad():
        greedy(used, first, 5)
        got = used(second, torch.arange(21))
        want = fresh(second, torch.arange(21))
        # and the decode path resets too: a one-token prompt at position 0
        got1 = used(second[:, :1], torch.tensor([0]))
        want1 = load_model(path, max_seq_len=128)(second[:, :1], torch.tensor([0]))
    assert torch.equal(got, want)
    assert torch.equal(got1, want1)


def test_prefill_in_pieces_equals_one_prefill(hf_checkpoints):
    """Prefill continued from a non-zero position keeps the state (the chunked-prompt path)."""
    path, _ = hf_checkpoints("qwen3_next")
    model = load_model(path, max_seq_len=256)
    ids = torch.randint(0, 160, (1, 150))
    with torch.no_grad():
        whole = model(ids, torch.arange(150))
        model.prefill(ids[:, :64], torch.arange(64))
        model.prefill(ids[:, 64:127], torch.arange(64, 127))
        pieces = model.prefill(ids[:, 127:], torch.arange(127, 150))
    assert (whole - pieces).abs().max().item() < 1e-4
