"""gdn-serve end to end on CPU: a real uvicorn server over the default model's artifact (conftest's
`cpu_artifacts`) on a free localhost port, driven by the official `openai` client (and raw HTTP where a client
cannot send the bad input). Replies are checked against a Runner on the same artifact in this process."""

import http.client
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import uvicorn
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from cpu_exports import DEFAULT_MAX_SEQ as MAX_SEQ
from gdn.runner import InputError, Runner
from gdn.runner.openai_request import RequestError, parse_request
from gdn.runner.serve_cli import bind, main
from gdn.runner.stops import StopStrings
from gdn.runner.server import create_app
from gdn.runner.worker import Worker

slow = pytest.mark.slow  # the tests that serve the default model's CPU artifact, which the session exports

KEY = "test-key"
GREEDY = {"temperature": 0}
CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
USER = [{"role": "user", "content": "Hi"}]  # greedy: no end-of-text token within 45 tokens
LONG = " ".join(["ownership"] * MAX_SEQ)


class LiveServer:
    """The app under uvicorn in a thread, on a free port of 127.0.0.1, its worker owning a Runner."""

    def __init__(self, artifact: Path, max_queue: int = 32, api_key: str | None = KEY):
        self.worker = Worker(lambda: Runner.load(artifact), max_queue)
        self.worker.start()
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(create_app(self.worker, "model", api_key), log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=kwargs.pop("api_key", KEY),
                             max_retries=0, timeout=kwargs.pop("timeout", 60), **kwargs)

    def raw(self, method: str, path: str, body: bytes | dict | None = None, key: str | None = KEY):
        """(status, decoded JSON body) of one plain HTTP request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        out = resp.status, json.loads(resp.read())
        conn.close()
        return out

    def health(self) -> dict:
        return self.raw("GET", "/health", key=None)[1]

    def wait_idle(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while (h := self.health())["running"] or h["queued"]:
            assert time.monotonic() < deadline, f"worker still busy: {h}"
            time.sleep(0.02)
        return h

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.worker.stop()


@pytest.fixture(scope="module")
def artifact(cpu_artifacts) -> Path:
    return cpu_artifacts["default"][1]


@pytest.fixture(scope="module")
def ref(artifact) -> Runner:
    """The same artifact in this process: what the server must answer."""
    runner = Runner.load(artifact)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def server(artifact):
    live = LiveServer(artifact)
    yield live
    live.close()


@pytest.fixture
def client(server) -> openai.OpenAI:
    server.wait_idle()
    return server.client()


def assert_error(status: int, body: dict, want_status: int, param: str | None, words: str) -> None:
    assert status == want_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["param"] == param and words in body["error"]["message"], body


# --- without a server: stop strings over pieces, request parsing ---------------------------------------------


def _first_stop(pieces: list[str], stops: list[str]) -> tuple[str, str | None]:
    """The text ends at the first piece that completes a stop string, before the earliest one complete then."""
    seen = ""
    for p in pieces:
        seen += p
        found = [(seen.find(s), s) for s in stops if s in seen]
        if found:
            return seen[: min(found)[0]], min(found)[1]
    return seen, None


def test_stop_strings_over_random_pieces_match_a_plain_search():
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice("abc") for _ in range(rng.randrange(0, 24)))
        stops = ["".join(rng.choice("abc") for _ in range(rng.randrange(1, 5))) for _ in range(rng.randrange(1, 5))]
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randrange(1, 8))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        s = StopStrings(stops)
        out, seen = [], 0
        for p in pieces:
            out.append(s.push(p))
            seen += len(p)
            held = seen - sum(map(len, out))  # less than the longest stop string, until one is found
            assert s.hit is not None or held < max(map(len, stops)), (text, stops, pieces)
        out.append(s.flush())
        want, hit = _first_stop(pieces, stops)
        assert ("".join(out), s.hit, s.text) == (want, hit, want), (text, stops, pieces)


def test_stop_strings_are_checked():
    assert StopStrings().push("abc") == "abc"
    with pytest.raises(InputError, match="at most 4 strings, got 5"):
        StopStrings(["a", "b", "c", "d", "e"])
    with pytest.raises(InputError, match="non-empty string, got ''"):
        StopStrings(["a", ""])


def test_a_request_body_is_parsed_with_defaults_and_normalized():
    chat = parse_request({"model": "m", "messages": [{"role": "system", "content": "S", "name": "x"},
                                                     {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                  {"type": "text", "text": "b"}]}],
                          "max_tokens": 9, "max_completion_tokens": 16.0, "stop": "\n", "stream": True,
                          "stream_options": {"include_usage": True}, "seed": -3, "user": "u", "logprobs": False},
                         chat=True)
    assert chat.messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "ab"}]
    assert (chat.max_tokens, chat.stop, chat.stream, chat.include_usage, chat.seed) == (16, ("\n",), True, True, -3)
    text = parse_request({"prompt": [[5, 6, 7]]}, chat=False)
    assert text.prompt == [5, 6, 7] and text.history_field == "prompt"
    assert text.runner_options() == dict(max_new_tokens=None, temperature=None, top_p=None, top_k=None, seed=None,
                                         stop=())
    with pytest.raises(RequestError) as e:
        parse_request({"prompt": "x", "top_k": 2.5}, chat=False)
    assert e.value.param == "top_k" and str(e.value) == "top_k must be an integer, got a number"


# --- replies, streaming and not, equal the runner's ------------------------------------------------------------


@slow
def test_chat_completion_whole_and_streamed_equal_the_runner(server, client, ref):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a trait?"}]
    want = ref.generate(ref.encode_chat(messages), max_new_tokens=8, **GREEDY)
    status, raw = server.raw("POST", "/v1/chat/completions", {"model": "model", "messages": messages,
                                                               "max_tokens": 8, **GREEDY})
    assert status == 200 and set(raw) == {"id", "object", "created", "model", "choices", "usage"}
    got = ChatCompletion.model_validate(raw)
    assert got.object == "chat.completion" and got.model == "model" and got.id.startswith("chatcmpl-")
    assert len(got.choices) == 1 and got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want.text and got.choices[0].finish_reason == "length"
    assert got.usage.prompt_tokens == len(want.prompt_ids) and got.usage.completion_tokens == 8
    assert got.usage.total_tokens == len(want.prompt_ids) + 8

    chunks = list(client.chat.completions.create(model="model", messages=messages, max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    for c in chunks:
        ChatCompletionChunk.model_validate(c.model_dump())
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])


@slow
def test_text_completion_whole_and_streamed_equal_the_runner(server, client, ref):
    prompt = "The borrow checker"
    want = ref.generate(prompt, max_new_tokens=10, **GREEDY)
    status, raw = server.raw("POST", "/v1/completions", {"model": "model", "prompt": prompt, "max_tokens": 10,
                                                          **GREEDY})
    assert status == 200 and set(raw) == {"id", "object", "created", "model", "choices", "usage"}
    got = Completion.model_validate(raw)
    assert got.object == "text_completion" and got.choices[0].text == want.text
    assert got.choices[0].finish_reason == "length"
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (len(want.prompt_ids), 10)

    chunks = list(client.completions.create(model="model", prompt=prompt, max_tokens=10, stream=True, **GREEDY))
    Completion.model_validate(chunks[-1].model_dump())  # the SDK's type wants a finish_reason: the last has it
    assert len({c.id for c in chunks}) == 1 and all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == "length" and all(c.usage is None for c in chunks)
    by_ids = client.completions.create(model="model", prompt=want.prompt_ids, max_tokens=10, **GREEDY)
    assert by_ids.choices[0].text == want.text


@slow
def test_a_stop_token_finishes_with_stop(client, ref):
    """Greedy from this prompt reaches the end-of-text token before 40 tokens (checked on the runner first)."""
    prompt = "Hello"
    want = ref.generate(ref.encode_chat([{"role": "user", "content": prompt}]), max_new_tokens=40, **GREEDY)
    assert want.stop_reason == "stop_token", "pick a prompt whose greedy reply ends within 40 tokens"
    got = client.chat.completions.create(model="model", messages=[{"role": "user", "content": prompt}],
                                         max_tokens=40, **GREEDY)
    assert got.choices[0].finish_reason == "stop" and got.choices[0].message.content == want.text
    assert got.usage.completion_tokens == len(want.generated_ids)


@slow
def test_models_and_health(server, client):
    models = client.models.list().data
    assert [m.id for m in models] == ["model"] and Model.model_validate(models[0].model_dump()).owned_by == "gdn"
    h = server.health()
    assert h["status"] == "ok" and h["model"] == "model" and h["max_seq_len"] == MAX_SEQ


# --- seeds, stop strings, prefix reuse ------------------------------------------------------------------------


@slow
def test_a_seed_reproduces_the_reply_and_matches_the_runner(client, ref):
    prompt = "Ownership means"
    ask = lambda seed: client.completions.create(model="model", prompt=prompt, max_tokens=12, temperature=1.0,
                                                 seed=seed).choices[0].text  # noqa: E731
    a, b, other = ask(7), ask(7), ask(8)
    assert a == b != other
    assert a == ref.generate(prompt, max_new_tokens=12, temperature=1.0, seed=7).text


def _stop_case(ref: Runner, prompt: str):
    """A greedy reply's pieces and a stop string that spans the boundary of two of its tokens."""
    stream = ref.stream(prompt, max_new_tokens=20, **GREEDY)
    pieces = [p for _, p in stream.tokens()]
    text = "".join(pieces)
    k = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[k][-2:] + pieces[k + 1][:2]
    cut = text.find(stop)
    ends = [len("".join(pieces[: i + 1])) for i in range(len(pieces))]  # where each token's text ends
    assert any(cut < end < cut + len(stop) for end in ends), "the stop string must span two tokens"
    needed = next(i + 1 for i, end in enumerate(ends) if end >= cut + len(stop))
    return text, stop, cut, needed


@slow
def test_stop_strings_end_the_text_before_them_also_across_tokens(client, ref):
    prompt = "A closure is"
    text, stop, cut, needed = _stop_case(ref, prompt)
    got = client.completions.create(model="model", prompt=prompt, max_tokens=20, stop=stop, **GREEDY)
    assert got.choices[0].text == text[:cut] and got.choices[0].finish_reason == "stop"
    assert got.usage.completion_tokens == needed  # generation ended at the token that completed the stop string
    chunks = list(client.completions.create(model="model", prompt=prompt, max_tokens=20, stream=True,
                                            stop=["zzzz", stop], **GREEDY))
    assert "".join(c.choices[0].text for c in chunks) == text[:cut]
    assert chunks[-1].choices[0].finish_reason == "stop"
    earlier = text[1:4]  # of two stop strings, the first in the text wins
    got = client.completions.create(model="model", prompt=prompt, max_tokens=20, stop=[stop, earlier], **GREEDY)
    assert got.choices[0].text == text[: text.find(earlier)]


@slow
def test_a_chat_turn_that_extends_the_last_one_prefills_only_the_new_tokens(client, ref):
    first = [{"role": "user", "content": "Tell me about lifetimes."}]
    r1 = client.chat.completions.create(model="model", messages=first, max_tokens=6, **GREEDY)
    assert r1.usage.prompt_tokens_details.cached_tokens == 0 and r1.choices[0].finish_reason == "length"
    second = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                      {"role": "user", "content": "And borrowing?"}]
    r2 = client.chat.completions.create(model="model", messages=second, max_tokens=6, **GREEDY)
    held = r1.usage.prompt_tokens + r1.usage.completion_tokens - 1  # the last reply token was not fed yet
    assert r2.usage.prompt_tokens_details.cached_tokens == held

    session = ref.session()  # the same two turns on the runner; then turn two without reuse, from position 0
    w1 = session.generate("Tell me about lifetimes.", chat=True, max_new_tokens=6, **GREEDY)
    w2 = session.generate("And borrowing?", chat=True, max_new_tokens=6, **GREEDY)
    assert w1.text == r1.choices[0].message.content and w2.reused_tokens == held
    fresh = ref.generate(w2.prompt_ids, max_new_tokens=6, **GREEDY)
    assert r2.usage.prompt_tokens == len(w2.prompt_ids)
    assert r2.choices[0].message.content == w2.text == fresh.text

    client.completions.create(model="model", prompt="Something else", max_tokens=2)  # takes the state
    r3 = client.chat.completions.create(model="model", messages=second, max_tokens=6, **GREEDY)
    assert r3.usage.prompt_tokens_details.cached_tokens == 0


@slow
def test_a_text_prompt_that_extends_the_last_one_prefills_only_the_new_tokens(client, ref):
    p1 = "Traits define"
    r1 = client.completions.create(model="model", prompt=p1, max_tokens=5, **GREEDY)
    assert r1.choices[0].finish_reason == "length"
    p2 = p1 + r1.choices[0].text + " Then"
    r2 = client.completions.create(model="model", prompt=p2, max_tokens=5, **GREEDY)
    assert r2.usage.prompt_tokens_details.cached_tokens == r1.usage.prompt_tokens + 4
    session = ref.session()
    session.generate(p1, max_new_tokens=5, **GREEDY)
    w2 = session.generate(" Then", max_new_tokens=5, **GREEDY)
    assert r2.choices[0].text == w2.text == ref.generate(w2.prompt_ids, max_new_tokens=5, **GREEDY).text
    # a seed draws the same with the state kept as from position 0
    r3 = client.completions.create(model="model", prompt=p2 + r2.choices[0].text + " So", max_tokens=6,
                                   temperature=1.0, seed=3)
    assert r3.usage.prompt_tokens_details.cached_tokens > r2.usage.prompt_tokens
    w3 = session.generate(" So", max_new_tokens=6, temperature=1.0, seed=3)
    assert r3.choices[0].text == w3.text == ref.generate(w3.prompt_ids, max_new_tokens=6, temperature=1.0,
                                                         seed=3).text


# --- bad input ------------------------------------------------------------------------------------------------

BAD = [
    (CHAT, b'{"messages": [', None, "not valid JSON"),
    (CHAT, b"\xff\xfe", None, "not valid JSON"),
    (CHAT, b"[1, 2]", None, "must be a JSON object, got an array"),
    (CHAT, {"messages": "Hi"}, "messages", "messages must be an array of messages, got a string"),
    (CHAT, {"messages": []}, "messages", "messages must not be empty"),
    (CHAT, {"messages": ["Hi"]}, "messages[0]", "messages[0] must be an object"),
    (CHAT, {"messages": [{"role": "robot", "content": "Hi"}]}, "messages[0].role", "got 'robot'"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "got an integer"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]",
     "must be a text part"),
    (CHAT, {"messages": [{"role": "user", "content": LONG}]}, "messages", "does not fit max_seq_len 64"),
    (CHAT, {"messages": USER, "n": 2}, "n", "n must be 1"),
    (CHAT, {"messages": USER, "max_tokens": "8"}, "max_tokens", "max_tokens must be an integer, got a string"),
    (CHAT, {"messages": USER, "max_tokens": 0}, "max_tokens", "max_tokens must be >= 1, got 0"),
    (CHAT, {"messages": USER, "max_completion_tokens": True}, "max_completion_tokens", "got a boolean"),
    (CHAT, {"messages": USER, "temperature": "hot"}, "temperature", "temperature must be a number"),
    (CHAT, {"messages": USER, "temperature": -0.5}, "temperature", "temperature must be in [0, 2], got -0.5"),
    (CHAT, {"messages": USER, "temperature": 2.5}, "temperature", "temperature must be in [0, 2], got 2.5"),
    (CHAT, {"messages": USER, "top_p": 0}, "top_p", "top_p must be in (0, 1], got 0"),
    (CHAT, {"messages": USER, "top_p": 1.5}, "top_p", "top_p must be in (0, 1], got 1.5"),
    (CHAT, {"messages": USER, "top_k": -1}, "top_k", "top_k must be >= 0, got -1"),
    (CHAT, {"messages": USER, "seed": "x"}, "seed", "seed must be an integer"),
    (CHAT, {"messages": USER, "stream": "yes"}, "stream", "stream must be a boolean, got a string"),
    (CHAT, {"messages": USER, "stream_options": {"include_usage": True}}, "stream_options", "only allowed when"),
    (CHAT, {"messages": USER, "stream": True, "stream_options": {"include_usage": 1}},
     "stream_options.include_usage", "must be a boolean"),
    (CHAT, {"messages": USER, "stop": 5}, "stop", "stop must be a string or an array of strings"),
    (CHAT, {"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 strings, got 5"),
    (CHAT, {"messages": USER, "stop": [""]}, "stop", "must not be empty"),
    (CHAT, {"messages": USER, "user": 3}, "user", "user must be a string"),
    (CHAT, {"messages": USER, "model": 3}, "model", "model must be a string"),
    (CHAT, {"messages": USER, "logprobs": True}, "logprobs", "not supported"),
    (CHAT, {"messages": USER, "tools": [{"type": "function"}]}, "tools", "not supported"),
    (TEXT, {"prompt": ""}, "prompt", "prompt must not be empty"),
    (TEXT, {"prompt": {"text": "x"}}, "prompt", "prompt must be a string or an array of token ids"),
    (TEXT, {"prompt": ["a", "b"]}, "prompt", "one prompt per request, got a batch of 2"),
    (TEXT, {"prompt": [1, 99999]}, "prompt", "token id 99999 is outside the vocabulary"),
    (TEXT, {"prompt": LONG}, "prompt", "does not fit max_seq_len 64"),
    (TEXT, {"prompt": "x", "n": 0}, "n", "n must be >= 1, got 0"),
    (TEXT, {"prompt": "x", "echo": True}, "echo", "not supported"),
]


@slow
@pytest.mark.parametrize("path, body, param, words", BAD, ids=[f"{i:02d}" for i in range(len(BAD))])
def test_bad_input_is_a_400_naming_the_field(server, path, body, param, words):
    status, got = server.raw("POST", path, body)
    assert_error(status, got, 400, param, words)


@slow
def test_bad_input_through_the_client_and_the_worker_survives(server, client, ref):
    before = server.health()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="model", messages=[], max_tokens=2)
    assert e.value.status_code == 400 and e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError, match="does not fit max_seq_len"):
        client.completions.create(model="model", prompt=LONG, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.chat.completions.create(model="model", messages=USER, n=3)
    after = server.health()
    assert after["failed"] == before["failed"] == 0
    got = client.completions.create(model="model", prompt="Memory safety", max_tokens=4, **GREEDY)
    assert got.choices[0].text == ref.generate("Memory safety", max_new_tokens=4, **GREEDY).text


@slow
def test_unknown_paths_and_methods_get_the_error_body(server):
    assert_error(*server.raw("GET", "/v1/nothing"), 404, None, "Not Found")
    assert_error(*server.raw("GET", CHAT), 405, None, "Method Not Allowed")


@slow
def test_a_missing_or_wrong_key_is_a_401(server):
    with pytest.raises(openai.AuthenticationError) as e:
        server.client(api_key="wrong").chat.completions.create(model="model", messages=USER, max_tokens=2)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    assert_error(*server.raw("POST", CHAT, {"messages": USER}, key=None), 401, None, "no API key given")
    assert_error(*server.raw("GET", "/v1/models", key="wrong"), 401, None, "incorrect API key")
    assert server.raw("GET", "/health", key=None)[0] == 200  # probes need no key


# --- the worker: queue, disconnects, concurrency --------------------------------------------------------------


@slow
def test_a_full_queue_answers_503_and_the_queued_request_still_runs(artifact, ref):
    live = LiveServer(artifact, max_queue=1)
    try:
        client = live.client()
        running = client.completions.create(model="model", prompt="The borrow checker", max_tokens=50, stream=True,
                                            **GREEDY)  # runs 50 tokens unless cancelled
        next(iter(running))  # the worker took it
        waiting = ThreadPoolExecutor(1).submit(
            client.completions.create, model="model", prompt="Queued", max_tokens=3, **GREEDY)
        deadline = time.monotonic() + 30
        while live.health()["queued"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(openai.APIStatusError) as e:
            client.completions.create(model="model", prompt="One too many", max_tokens=3)
        assert e.value.status_code == 503 and e.value.body["code"] == "queue_full"
        assert_error(*live.raw("POST", TEXT, {"prompt": "x"}), 503, None, "queue is full")
        running.close()
        assert waiting.result(60).choices[0].text == ref.generate("Queued", max_new_tokens=3, **GREEDY).text
        h = live.wait_idle()
        assert (h["rejected"], h["cancelled"], h["completed"]) == (2, 1, 1)
    finally:
        live.close()


@slow
def test_a_client_that_disconnects_mid_stream_stops_its_generation(server, client, ref):
    before = server.health()
    stream = client.chat.completions.create(model="model", messages=USER, max_tokens=50, stream=True, **GREEDY)
    pieces = iter(stream)
    next(pieces), next(pieces)  # the role chunk and the first text
    stream.close()
    after = server.wait_idle()
    ran = after["generated_tokens"] - before["generated_tokens"]
    assert after["cancelled"] == before["cancelled"] + 1 and after["completed"] == before["completed"]
    assert ran <= 6, f"generation went on for {ran} tokens after the client left at token 1"
    got = client.completions.create(model="model", prompt="Iterators", max_tokens=4, **GREEDY)
    assert got.choices[0].text == ref.generate("Iterators", max_new_tokens=4, **GREEDY).text


@slow
def test_a_client_that_gives_up_on_a_whole_response_stops_its_generation(server, ref):
    """A non-streaming client closes its connection once the worker runs its request (no timing assumption
    beyond the request's generation outlasting a few /health polls)."""
    before = server.health()
    body = json.dumps({"model": "model", "messages": USER, "max_tokens": 45, **GREEDY}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    deadline = time.monotonic() + 30
    while not server.health()["running"]:
        assert time.monotonic() < deadline, "the request never started"
    sock.close()
    after = server.wait_idle()
    assert after["cancelled"] == before["cancelled"] + 1 and after["completed"] == before["completed"]
    assert after["generated_tokens"] - before["generated_tokens"] < 45


@slow
def test_twenty_concurrent_clients_are_all_answered_correctly(server, client, ref):
    prompts = [f"Rust {word}" for word in ("enums", "structs", "macros", "tests", "crates", "modules", "errors",
                                           "slices", "strings", "vectors", "threads", "channels", "futures",
                                           "generics", "patterns", "loops", "traits", "boxes", "arrays", "maps")]

    def ask(i: int) -> str:
        c = server.client()
        if i % 3 == 0:
            chunks = c.completions.create(model="model", prompt=prompts[i], max_tokens=3, stream=True, **GREEDY)
            return "".join(ch.choices[0].text for ch in chunks)
        return c.completions.create(model="model", prompt=prompts[i], max_tokens=3, **GREEDY).choices[0].text

    with ThreadPoolExecutor(20) as pool:
        got = list(pool.map(ask, range(20)))
    assert server.wait_idle()["failed"] == 0
    assert got == [ref.generate(p, max_new_tokens=3, **GREEDY).text for p in prompts]


# --- the gdn-serve command ------------------------------------------------------------------------------------


def run_cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if not line.startswith("[cpuinfo")]
    return e.value.code, "\n".join(lines)


@slow
def test_cli_bad_input_is_one_line_and_exit_2(capsys, artifact, tmp_path):
    code, err = run_cli(capsys, "--model", str(tmp_path / "absent.pte"), "--port", "0")
    assert code == 2 and err.startswith("gdn-serve: error: no artifact at") and "\n" not in err
    code, err = run_cli(capsys, "--model", str(artifact), "--port", "70000")
    assert code == 2 and err.startswith("gdn-serve: error: ") and "70000" in err and "\n" not in err
    code, err = run_cli(capsys, "--model", str(artifact), "--max-queue", "0")
    assert code == 2 and "--max-queue" in err and "\n" not in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run_cli(capsys, "--model", str(artifact), "--port", str(port))
    assert code == 2 and err == f"gdn-serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"


@slow
def test_cli_serves_until_interrupted(artifact, ref):
    exe = Path(sys.executable).with_name("gdn-serve")
    proc = subprocess.Popen([str(exe), "--model", str(artifact), "--port", "0", "--model-name", "tiny"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "serving" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "gdn-serve exited"
        assert "on http://127.0.0.1:" in line and "with an API key" not in line
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        got = client.completions.create(model="tiny", prompt="Cargo", max_tokens=3, **GREEDY)
        assert got.model == "tiny" and got.choices[0].text == ref.generate("Cargo", max_new_tokens=3, **GREEDY).text
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    finally:
        proc.kill()
