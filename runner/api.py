"""The Python API: `Runner.load(path)`, `runner.generate(...)`, `runner.stream(...)`, `runner.session()`.

    runner = Runner.load("model.pte")
    print(runner.generate("The capital of France is", max_new_tokens=16).text)
    for piece in runner.stream("Tell me a story", chat=True):
        print(piece, end="", flush=True)
    chat = runner.session()
    chat.generate("Hi, I am Ana.", chat=True)
    chat.generate("What is my name?", chat=True)  # prefills only the new turn

A Runner owns one model state, the lock over it and the decode loop. It runs one generation at a time: a
second one started while another is unfinished (from any thread) raises RuntimeError instead of corrupting the
state. A service shares it behind a lock or a queue, or loads one Runner per worker. There is no global state:
any number of Runners can live in one process.
"""

from __future__ import annotations

import secrets
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Sequence

import torch

from .errors import ContextFullError, InputError
from .loop import DecodeLoop
from .prefill_graphs import PrefillGraphs
from .methods import Methods
from .sampling import SamplingParams
from .session import Prompt, Session, user_message
from .stops import StopStrings
from .stream import GenerationResult, TextStream
from .tokenizer import ChatTemplate, StreamDecoder, Tokenizer

DEFAULT_MAX_NEW_TOKENS = 256
DECODE_BLOCK = 4  # decode steps per CUDA-graph replay: one host read and one launch per block


class Runner:
    def __init__(
        self,
        methods: Methods,
        meta: Any,
        tokenizer_json: str | None = None,
        *,
        cuda_graph: bool | None = None,
        warmup: int = 3,
        decode_block: int | None = None,
        load_s: float = 0.0,
    ):
        """`meta` is the artifact's Metadata; `cuda_graph` None means on for a CUDA device. On a CPU device the
        decode step always runs eagerly (cuda_graph=True is ignored there). decode_block: decode steps per graph
        replay (default DECODE_BLOCK with graphs, else 1)."""
        self.methods, self.meta, self.load_s = methods, meta, load_s
        self.device = torch.device(methods.device)
        self.cuda_graph = self.device.type == "cuda" and cuda_graph is not False
        self.tokenizer = Tokenizer(tokenizer_json) if tokenizer_json else None
        self.chat_template = _chat_template(meta, self.tokenizer)
        self.stop_ids = frozenset(meta.stop_token_ids) | frozenset(meta.eos_token_ids)
        block = decode_block or (DECODE_BLOCK if self.cuda_graph else 1)
        self._loop = DecodeLoop(methods, meta.vocab_size, cuda_graph=self.cuda_graph, warmup=warmup, block=block,
                                max_stops=max(16, len(self.stop_ids)))
        self._prefill = PrefillGraphs(methods, meta.max_prefill_chunk, cuda_graph=self.cuda_graph, warmup=warmup)
        self._held: list[int] = []  # the ids whose effect the model state holds, from position 0
        self._busy = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, *, cuda_graph: bool | None = None, warmup: int = 3,
             decode_block: int | None = None) -> Runner:
        """Open the artifact (ArtifactError on a bad one) and load its methods onto its backend's device."""
        from .artifact import Artifact
        from .methods import load_methods

        t0 = time.perf_counter()
        artifact = Artifact.open(path)
        methods = load_methods(artifact)
        return cls(methods, artifact.meta, artifact.tokenizer_json, cuda_graph=cuda_graph, warmup=warmup,
                   decode_block=decode_block, load_s=time.perf_counter() - t0)

    @property
    def max_seq_len(self) -> int:
        return self.meta.max_seq_len

    @property
    def prefill_chunk(self) -> int:
        return self.meta.max_prefill_chunk

    @property
    def vocab_size(self) -> int:
        return self.meta.vocab_size

    @property
    def graph_counters(self) -> dict:
        return vars(self._loop.graph.counters).copy()

    def sampling(
        self, temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
        seed: int | None = None,
    ) -> SamplingParams:
        """Sampling settings: the ones given, else the artifact's generation defaults; no seed means a fresh
        random one (recorded in the result)."""
        d = self.meta.generation_defaults or {}
        default_t = 0.0 if d.get("do_sample") is False else float(d.get("temperature", 0.0))
        return SamplingParams(
            temperature=default_t if temperature is None else temperature,
            top_k=int(d.get("top_k", 0)) if top_k is None else top_k,
            top_p=float(d.get("top_p", 1.0)) if top_p is None else top_p,
            seed=secrets.randbits(31) if seed is None else seed,
        )

    def default_max_new_tokens(self) -> int:
        return int((self.meta.generation_defaults or {}).get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))

    def encode(self, prompt: Prompt, first: bool = True) -> list[int]:
        """Text (needs the tokenizer) or ids (checked against the vocabulary) -> ids."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InputError("this artifact has no tokenizer: give the prompt as token ids")
            ids = self.tokenizer.encode(prompt, add_special_tokens=first) if prompt else []
        else:
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise InputError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        if not ids:
            raise InputError("the prompt is empty")
        return ids

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        if self.chat_template is None:
            raise InputError("this artifact has no chat template (and tokenizer) to apply")
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt)

    def encode_chat(self, messages: Sequence[dict]) -> list[int]:
        return self.tokenizer.encode(self.render_chat(messages, add_generation_prompt=True))

    def text(self, ids: Sequence[int]) -> str | None:
        """Generated ids as text, stop tokens left out; None without a tokenizer."""
        return self.tokenizer.decode([t for t in ids if t not in self.stop_ids]) if self.tokenizer else None

    def session(self) -> Session:
        return Session(self)

    def stream(self, prompt: Prompt, *, chat: bool = False, **options) -> TextStream:
        """A new sequence from position 0: `prompt` (text or ids), or with chat=True a user message rendered
        through the chat template. Options: max_new_tokens; `sampling` or temperature / top_k / top_p / seed
        over the artifact's generation defaults; stop: up to four strings that end the text before them."""
        ids = self.encode_chat([user_message(prompt)]) if chat else self.encode(prompt)
        return self._turn(ids, reuse=False, **options)

    def generate(self, prompt: Prompt, **kwargs) -> GenerationResult:
        return self.stream(prompt, **kwargs).consume()

    def close(self) -> None:
        self.methods.close()

    def _turn(
        self,
        ids: list[int],
        *,
        reuse: bool,
        on_end: Callable[[GenerationResult], None] | None = None,
        max_new_tokens: int | None = None,
        sampling: SamplingParams | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> TextStream:
        """Check the settings and the fit now, before any work; the turn itself runs as the stream is read.
        reuse: keep the state's prefix of `ids` (a session's next turn); on_end(result): called when the turn
        ends, also when its stream is closed early."""
        steps = self.default_max_new_tokens() if max_new_tokens is None else max_new_tokens
        if steps < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {steps}")
        params = sampling or self.sampling(temperature, top_k, top_p, seed)
        stops = StopStrings(stop)
        if stops.stops and self.tokenizer is None:
            raise InputError("stop strings need the artifact's tokenizer, and this artifact has none")
        if len(ids) >= self.max_seq_len:
            raise ContextFullError(f"prompt of {len(ids)} tokens does not fit max_seq_len {self.max_seq_len} "
                                   "(room is needed for one new token)")
        result = GenerationResult(prompt_ids=ids, sampling=params)
        return TextStream(self._generate(result, steps, reuse, on_end, stops))

    def _generate(
        self, result: GenerationResult, max_new_tokens: int, reuse: bool,
        on_end: Callable[[GenerationResult], None] | None, stops: StopStrings,
    ) -> Generator[tuple[int, str], None, GenerationResult]:
        """The generation path: claim the state, prefill what it lacks, run the decode loop, detokenize."""
        ids, out, t = result.prompt_ids, result.generated_ids, result.timings
        with self._exclusive():
            start = self._reusable(ids) if reuse else 0
            self._held = []  # unknown until the turn ends
            self._loop.set_sampling(result.sampling, reset_counter=True)  # a seed draws alike with or without reuse
            decoder = StreamDecoder(self.tokenizer) if self.tokenizer else None
            limit = min(max_new_tokens, self.max_seq_len - len(ids))  # every fed token needs a cache slot
            result.reused_tokens, result.prefilled_tokens = start, len(ids) - start
            t.prompt_tokens = len(ids) - start
            t0 = time.perf_counter()
            try:
                token = self._loop.start(self._prefill(ids[start:], start), len(ids), limit, self.stop_ids)
                t.prefill_s = time.perf_counter() - t0
                tokens = self._loop.tokens()
                while True:
                    out.append(token)
                    t.generated_tokens = len(out)
                    yield token, stops.push(decoder.push(token)) if decoder and token not in self.stop_ids else ""
                    if token in self.stop_ids or stops.hit is not None or len(out) >= limit:
                        break
                    token = next(tokens)
                    t.decode_s = time.perf_counter() - t0 - t.prefill_s
                tail = stops.push(decoder.flush()) + stops.flush() if decoder else ""
                if tail:
                    yield -1, tail
            finally:  # also when the stream is closed early: the state holds every id fed, all emitted but the last
                emitted = self._loop.finish()
                self._held = ids + emitted[:-1] if out else []  # no id: the prefill failed, the state is unknown
                if on_end is not None:
                    on_end(result)
        result.stop_reason = ("stop_token" if out[-1] in self.stop_ids else "stop_string" if stops.hit is not None
                              else "max_new_tokens" if len(out) == max_new_tokens else "context_full")
        result.text = stops.text if stops.hit is not None else self.text(out)
        result.decode_path, result.graph = self._loop.path, self.graph_counters
        result.prefill_path, result.prefill_graph = self._prefill.path, self._prefill.counters
        return result

    def _reusable(self, ids: list[int]) -> int:
        """How many leading ids of `ids` the state already holds: all it holds if that is a proper prefix."""
        n = len(self._held)
        return n if 0 < n < len(ids) and ids[:n] == self._held else 0

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this Runner is already generating; it runs one generation at a time")
        try:
            yield
        finally:
            self._busy.release()


def _chat_template(meta: Any, tokenizer: Tokenizer | None) -> ChatTemplate | None:
    if not (meta.chat_template and tokenizer):
        return None
    bos = tokenizer.id_to_token(meta.bos_token_id) if meta.bos_token_id is not None else None
    eos = tokenizer.id_to_token(meta.eos_token_ids[0]) if meta.eos_token_ids else None
    return ChatTemplate(meta.chat_template, bos, eos)
