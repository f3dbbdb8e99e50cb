"""Generation logic of the Runner on CPU, over an eager model behind the Methods interface (the bundled
default model: real checkpoint layout, real byte-level BPE tokenizer and chat template)."""

import json
import threading

import pytest

from gdn.runner import ContextFullError, InputError, Runner, SamplingParams
from runner_eager import (DEFAULT_MODEL, DEFAULT_VOCAB, greedy_reference, load_eager, metadata, random_ids,
                          tokenizer_json)

MAX_SEQ = 96


@pytest.fixture(scope="module")
def eager():
    return load_eager(DEFAULT_MODEL, MAX_SEQ)


def make_runner(eager, chunk=64, max_seq_len=MAX_SEQ, **meta):
    model, methods = eager
    return Runner(methods, metadata(model, max_seq_len, chunk, DEFAULT_MODEL, **meta), tokenizer_json())


GREEDY = SamplingParams(temperature=0.0)


@pytest.mark.parametrize("chunk", [1, 7, 64], ids=["chunk1", "chunk7", "chunk64"])
def test_greedy_ids_match_the_models_own_greedy_loop(eager, chunk):
    model, _ = eager
    ids = random_ids(23)
    runner = make_runner(eager, chunk=chunk, stop_token_ids=[], eos_token_ids=[])
    got = runner.generate(ids, max_new_tokens=16, sampling=GREEDY)
    assert got.generated_ids == greedy_reference(model, ids, 16)
    assert got.stop_reason == "max_new_tokens" and got.decode_path == "eager"
    assert got.graph == {"eager_calls": 15, "captures": 0, "replays": 0}


def test_stop_token_ends_the_turn_and_is_not_in_the_text(eager):
    model, _ = eager
    ids = random_ids(11)
    ref = greedy_reference(model, ids, 12)
    stop = ref[5]
    n = ref.index(stop) + 1
    runner = make_runner(eager, stop_token_ids=[stop], eos_token_ids=[])
    got = runner.generate(ids, max_new_tokens=12, sampling=GREEDY)
    assert got.generated_ids == ref[:n] and got.stop_reason == "stop_token"
    assert got.text == runner.tokenizer.decode(ref[: n - 1])


def test_context_fills_then_stops_and_a_prompt_that_cannot_fit_is_rejected_before_work(eager):
    model, methods = eager
    runner = make_runner(eager, max_seq_len=40, stop_token_ids=[], eos_token_ids=[])
    ids = random_ids(30)
    got = runner.generate(ids, max_new_tokens=100, sampling=GREEDY)
    assert got.stop_reason == "context_full" and len(got.generated_ids) == 10  # positions 30..39
    assert got.generated_ids == greedy_reference(model, ids, 10)
    before = dict(methods.calls)
    with pytest.raises(ContextFullError, match="40 tokens does not fit max_seq_len 40"):
        runner.generate(random_ids(40), max_new_tokens=5)
    assert methods.calls == before


def test_a_new_prompt_starts_clean(eager):
    runner = make_runner(eager, stop_token_ids=[], eos_token_ids=[])
    a, b = random_ids(17), random_ids(9)
    alone = runner.generate(b, max_new_tokens=12, sampling=GREEDY).generated_ids
    runner.generate(a, max_new_tokens=12, sampling=GREEDY)
    assert runner.generate(b, max_new_tokens=12, sampling=GREEDY).generated_ids == alone


def test_session_prefills_only_new_tokens_and_matches_one_long_prompt(eager):
    model, methods = eager
    runner = make_runner(eager, stop_token_ids=[], eos_token_ids=[])
    s = runner.session()
    first, follow = random_ids(13), random_ids(6)
    r1 = s.generate(first, max_new_tokens=8, sampling=GREEDY)
    r2 = s.generate(follow, max_new_tokens=8, sampling=GREEDY)
    assert (r2.reused_tokens, r2.prefilled_tokens) == (13 + 7, 1 + 6)  # the last reply token was not fed yet
    whole = first + r1.generated_ids + follow
    assert r2.generated_ids == greedy_reference(model, whole, 8)
    runner.generate(random_ids(5), max_new_tokens=3)  # another sequence takes the state
    r3 = s.generate(random_ids(4), max_new_tokens=3, sampling=GREEDY)
    assert r3.reused_tokens == 0 and r3.prefilled_tokens == len(whole) + 8 + 4


def test_chat_session_renders_the_template_and_keeps_the_generated_ids(eager):
    runner = make_runner(eager, max_seq_len=MAX_SEQ)
    s = runner.session()
    r1 = s.generate("Hello", chat=True, max_new_tokens=6, sampling=GREEDY)
    rendered = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert r1.prompt_ids == runner.tokenizer.encode(rendered)
    r2 = s.generate("Again", chat=True, max_new_tokens=6, sampling=GREEDY)
    held = r1.prompt_ids + r1.generated_ids
    assert r2.prompt_ids[: len(held)] == held and r2.reused_tokens == len(held) - 1
    tail = runner.tokenizer.decode(r2.prompt_ids[len(held):], skip_special_tokens=False)
    ended = r1.stop_reason == "stop_token"
    want = ("\n" if ended else "<|im_end|>\n") + "<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n"
    assert tail == want
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]


def test_seeded_sampling_is_reproducible_and_the_seed_matters(eager):
    runner = make_runner(eager, stop_token_ids=[], eos_token_ids=[])
    ids = random_ids(10)
    p = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=7)
    a = runner.generate(ids, max_new_tokens=16, sampling=p).generated_ids
    runner.generate(random_ids(5), max_new_tokens=4, sampling=SamplingParams(temperature=0.5, seed=1))
    b = runner.generate(ids, max_new_tokens=16, sampling=p).generated_ids
    c = runner.generate(ids, max_new_tokens=16, sampling=SamplingParams(temperature=1.0, top_k=50, top_p=0.9,
                                                                        seed=8)).generated_ids
    assert a == b and a != c


def test_sampling_keywords_equal_sampling_params(eager):
    runner = make_runner(eager, stop_token_ids=[], eos_token_ids=[])
    ids = random_ids(10)
    p = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=7)
    by_params = runner.generate(ids, max_new_tokens=12, sampling=p)
    by_keywords = runner.generate(ids, max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    assert by_keywords.generated_ids == by_params.generated_ids
    assert by_keywords.sampling == p
    greedy = runner.generate(ids, max_new_tokens=12, temperature=0)
    assert greedy.sampling.greedy


def test_generation_defaults_come_from_the_artifact(eager):
    runner = make_runner(eager)
    d = runner.sampling(seed=1)
    gen = json.loads((DEFAULT_MODEL / "generation_config.json").read_text())
    assert (d.temperature, d.top_k, d.top_p) == (gen["temperature"], gen["top_k"], gen["top_p"])
    runner = make_runner(eager, generation_defaults={"do_sample": False, "temperature": 0.8})
    assert runner.sampling().greedy


def test_streamed_pieces_join_to_the_text(eager):
    runner = make_runner(eager, stop_token_ids=[], eos_token_ids=[])
    stream = runner.stream("Python Software Foundation", max_new_tokens=40, sampling=SamplingParams(1.0, seed=3))
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text == runner.tokenizer.decode(stream.result.generated_ids)


@pytest.mark.parametrize(
    "prompt, kwargs, match",
    [("", {}, "prompt is empty"), ([], {}, "prompt is empty"),
     ([5, DEFAULT_VOCAB], {}, f"token id {DEFAULT_VOCAB} is outside"),
     ([-1], {}, "token id -1 is outside"), ([1, 2], {"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
     ([1, 2], {"chat": True}, "chat needs a text prompt")],
    ids=["empty_text", "empty_ids", "id_too_big", "id_negative", "zero_new_tokens", "chat_ids"],
)
def test_bad_input_is_an_input_error(eager, prompt, kwargs, match):
    with pytest.raises(InputError, match=match):
        make_runner(eager).generate(prompt, **kwargs)


def test_no_tokenizer_or_template_gives_clear_errors(eager):
    model, methods = eager
    bare = Runner(methods, metadata(model, MAX_SEQ, 64, chat_template=None), None)
    with pytest.raises(InputError, match="no tokenizer"):
        bare.generate("hello")
    assert bare.generate([1, 2, 3], max_new_tokens=2).text is None
    with pytest.raises(InputError, match="no chat template"):
        make_runner(eager, chat_template=None).generate("hi", chat=True)


def test_a_second_generation_while_one_streams_is_refused(eager):
    runner = make_runner(eager, stop_token_ids=[], eos_token_ids=[])
    first = runner.stream([1, 2, 3], max_new_tokens=10, sampling=GREEDY)
    next(first)
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, runner.generate, [4, 5])))
    t.start()
    t.join()
    assert errors and "already generating" in str(errors[0].value)
    first.close()
    assert len(runner.generate([4, 5], max_new_tokens=2).generated_ids) == 2


def test_a_turn_closed_early_keeps_what_ran_and_the_next_turn_continues_from_it(eager):
    model, _ = eager
    runner = make_runner(eager, stop_token_ids=[], eos_token_ids=[])
    s = runner.session()
    first, follow = random_ids(9), random_ids(5)
    stream = s.stream(first, max_new_tokens=20, sampling=GREEDY)
    pairs = stream.tokens()
    got = [next(pairs)[0] for _ in range(4)]
    stream.close()
    assert s.ids == first + got
    r2 = s.generate(follow, max_new_tokens=6, sampling=GREEDY)
    assert (r2.reused_tokens, r2.prefilled_tokens) == (9 + 3, 1 + 5)
    # the references run the shared model from position 0: only after the session is done with its state
    assert r2.generated_ids == greedy_reference(model, first + got + follow, 6)
    assert got == greedy_reference(model, first, 4)


def test_a_chat_turn_closed_early_stays_in_the_conversation(eager):
    runner = make_runner(eager, stop_token_ids=[], eos_token_ids=[])
    s = runner.session()
    stream = s.stream("Hello", chat=True, max_new_tokens=20, sampling=GREEDY)
    pairs = stream.tokens()
    got = [next(pairs)[0] for _ in range(3)]
    stream.close()
    assert s.messages[-1] == {"role": "assistant", "content": runner.tokenizer.decode(got)}
    first = runner.encode_chat([{"role": "user", "content": "Hello"}])
    r2 = s.generate("More", chat=True, max_new_tokens=4, sampling=GREEDY)
    assert r2.reused_tokens == len(first) + 2 and r2.prompt_ids[: len(first) + 3] == first + got
    tail = runner.tokenizer.decode(r2.prompt_ids[len(first) + 3 :], skip_special_tokens=False)
    assert tail == "<|im_end|>\n<|im_start|>user\nMore<|im_end|>\n<|im_start|>assistant\n"
