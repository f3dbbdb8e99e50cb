"""Decode in blocks of k steps (gdn.runner.loop.DecodeLoop): the turn ends on the device at a stop id or its last
allowed id, the block's remaining steps are pads that change no state, and the host sees exactly the ids a
one-step loop gives. On the CPU, over the eager model (its pads are the artifact's contract, tests/test_pads.py);
the graphed blocks on the GPU are in tests/test_cuda_graph.py."""

from __future__ import annotations

import pytest
import torch

from gdn.runner import Runner, SamplingParams
from runner_eager import DEFAULT_MODEL, load_eager, metadata, random_ids, tokenizer_json

MAX_SEQ = 160
K = 4
GREEDY = SamplingParams(temperature=0.0)
SAMPLED = SamplingParams(temperature=0.9, top_k=40, seed=11)


@pytest.fixture(scope="module")
def eager():
    return load_eager(DEFAULT_MODEL, MAX_SEQ)


def runner(eager, block: int, stops=()) -> Runner:
    model, methods = eager
    m = metadata(model, MAX_SEQ, 16, DEFAULT_MODEL, stop_token_ids=list(stops), eos_token_ids=[])
    return Runner(methods, m, tokenizer_json(), decode_block=block)


def first_seen(ids: list[int], offset: int) -> int:
    """An index p >= 1 whose id appears there first, at `offset` within its block (id p is block step (p-1) % K)."""
    return next(p for p in range(1, len(ids)) if (p - 1) % K == offset and ids[p] not in ids[:p])


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("block", [2, 3, K, 7])
def test_blocks_give_the_one_step_ids_and_honour_max_new_tokens(eager, block, sampling):
    prompt = random_ids(13)
    want = runner(eager, 1).generate(prompt, max_new_tokens=37, sampling=sampling)
    got = runner(eager, block).generate(prompt, max_new_tokens=37, sampling=sampling)
    assert got.generated_ids == want.generated_ids and len(got.generated_ids) == 37
    assert got.stop_reason == "max_new_tokens"


@pytest.mark.parametrize("offset", range(K))
def test_a_stop_at_every_offset_of_a_block_ends_there_and_the_next_turn_continues(eager, offset):
    prompt, follow = random_ids(9), random_ids(5)
    free = runner(eager, 1).generate(prompt, max_new_tokens=40, sampling=GREEDY).generated_ids
    p = first_seen(free, offset)
    one, blocks = runner(eager, 1, stops=[free[p]]), runner(eager, K, stops=[free[p]])
    # the runners share one model state: each conversation runs whole, one after the other
    turns = {}
    for name, r in (("one", one), ("blocks", blocks)):
        s = r.session()
        turns[name] = (s.generate(prompt, max_new_tokens=40, sampling=GREEDY),
                       s.generate(follow, max_new_tokens=12, sampling=GREEDY))
    (a, a2), (b, b2) = turns["one"], turns["blocks"]
    assert b.generated_ids == free[: p + 1] == a.generated_ids and b.stop_reason == "stop_token"
    # the state held the prompt and every id but the stop: the next turn reused it and matches the one-step loop
    assert b2.reused_tokens == a2.reused_tokens == len(prompt) + p
    assert b2.generated_ids == a2.generated_ids


def test_pad_steps_after_the_end_leave_the_state_alone(eager):
    """A turn that ends at its block's first step runs K - 1 pads: the next decode logits are the one-step loop's."""
    model, methods = eager
    prompt = random_ids(7)
    r = runner(eager, K)
    r.generate(prompt, max_new_tokens=2, sampling=GREEDY)  # one block: 1 real step, 3 pads
    held = r._held
    assert len(held) == len(prompt) + 1
    after = methods.decode(torch.tensor([[5]]), torch.tensor([len(held)]))
    r1 = runner(eager, 1)
    r1.generate(prompt, max_new_tokens=2, sampling=GREEDY)
    want = methods.decode(torch.tensor([[5]]), torch.tensor([len(held)]))
    torch.testing.assert_close(after, want, rtol=0, atol=0)


def test_a_turn_closed_mid_block_keeps_what_the_device_fed(eager):
    """The host stops reading inside a block: the state holds every id the device fed (more than were read)."""
    prompt = random_ids(11)
    r = runner(eager, K)
    pairs = r.stream(prompt, max_new_tokens=30, sampling=GREEDY).tokens()
    next(pairs), next(pairs)  # the first id and the first id of block 1
    pairs.close()
    free = runner(eager, 1).generate(prompt, max_new_tokens=30, sampling=GREEDY).generated_ids
    assert r._held == prompt + free[:K]  # the first id and block 1's K ids were emitted; all but the last fed
