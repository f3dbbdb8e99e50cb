"""The Python API: `Runner.load(path)`, `runner.generate(...)`, `runner.stream(...)`, `runner.session()`.

    runner = Runner.load("model.pte")
    print(runner.generate("The capital of France is", max_new_tokens=16).text)
    for piece in runner.stream("Tell me a story", chat=True):
        print(piece, end="", flush=True)
    chat = runner.session()
    chat.generate("Hi, I am Ana.", chat=True)
    chat.generate("What is my name?", chat=True)  # prefills only the new turn

A Runner holds one model state and is not thread-safe: it runs one generation at a time, and a second
one started while another is unfinished (from any thread) raises RuntimeError instead of corrupting
the state. A service shares it behind a lock or a queue, or loads one Runner per worker. There is no
global state: any number of Runners can live in one process.
"""

from __future__ import annotations

import secrets
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .generate import DecodeLoop, DecodeMethods, InputError
from .sampling import Sampler, SamplingParams
from .session import GenerationResult, Prompt, Session, TextStream
from .tokenizer import ChatTemplate, Tokenizer

DEFAULT_MAX_NEW_TOKENS = 256


class Runner:
    def __init__(
        self,
        methods: DecodeMethods,
        meta: Any,
        tokenizer_json: str | None = None,
        *,
        cuda_graph: bool | None = None,
        warmup: int = 3,
        load_s: float = 0.0,
    ):
        """`meta` is the artifact's Metadata; `cuda_graph` None means on for a CUDA device. On a CPU
        device the decode step always runs eagerly (cuda_graph=True is ignored there)."""
        self.methods, self.meta, self.load_s = methods, meta, load_s
        self.device = torch.device(methods.device)
        self.cuda_graph = self.device.type == "cuda" and cuda_graph is not False
        self.warmup = warmup
        self.tokenizer = Tokenizer(tokenizer_json) if tokenizer_json else None
        self.chat_template = None
        if meta.chat_template and self.tokenizer:
            name = self.tokenizer.id_to_token
            bos = name(meta.bos_token_id) if meta.bos_token_id is not None else None
            eos = name(meta.eos_token_ids[0]) if meta.eos_token_ids else None
            self.chat_template = ChatTemplate(meta.chat_template, bos, eos)
        self.stop_ids = frozenset(meta.stop_token_ids) | frozenset(meta.eos_token_ids)
        self.owner: Session | None = None  # the session whose tokens the model state holds
        self._loop: DecodeLoop | None = None
        self._busy = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, *, cuda_graph: bool | None = None, warmup: int = 3) -> Runner:
        """Open the artifact (ArtifactError on a bad one) and load its methods onto its backend's device."""
        from .artifact import Artifact
        from .methods import load_methods

        t0 = time.perf_counter()
        artifact = Artifact.open(path)
        methods = load_methods(artifact)
        return cls(methods, artifact.meta, artifact.tokenizer_json, cuda_graph=cuda_graph, warmup=warmup,
                   load_s=time.perf_counter() - t0)

    @property
    def max_seq_len(self) -> int:
        return self.meta.max_seq_len

    @property
    def prefill_chunk(self) -> int:
        return self.meta.max_prefill_chunk

    @property
    def vocab_size(self) -> int:
        return self.meta.vocab_size

    def sampling(
        self, temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
        seed: int | None = None,
    ) -> SamplingParams:
        """Sampling settings: the ones given, else the artifact's generation defaults; no seed means a
        fresh random one (recorded in the result)."""
        d = self.meta.generation_defaults or {}
        default_t = 0.0 if d.get("do_sample") is False else float(d.get("temperature", 0.0))
        return SamplingParams(
            temperature=default_t if temperature is None else temperature,
            top_k=int(d.get("top_k", 0)) if top_k is None else top_k,
            top_p=float(d.get("top_p", 1.0)) if top_p is None else top_p,
            seed=secrets.randbits(31) if seed is None else seed,
        )

    def default_sampling(self) -> SamplingParams:
        return self.sampling()

    def default_max_new_tokens(self) -> int:
        return int((self.meta.generation_defaults or {}).get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))

    def encode(self, prompt: Prompt, first: bool = True) -> list[int]:
        """Text (needs the tokenizer) or ids (checked against the vocabulary) -> ids."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InputError("this artifact has no tokenizer: give the prompt as token ids")
            if not prompt:
                raise InputError("the prompt is empty")
            ids = self.tokenizer.encode(prompt, add_special_tokens=first)
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

    def decode_loop(self, params: SamplingParams, reset_counter: bool = True) -> DecodeLoop:
        """The decode loop, its sampler set to `params`; built once and kept, so the graph survives turns."""
        if self._loop is None:
            sampler = Sampler(params, self.vocab_size, self.device)
            self._loop = DecodeLoop(self.methods, sampler, cuda_graph=self.cuda_graph, warmup=self.warmup)
        elif self._loop.sampler.compatible(params):
            self._loop.sampler.update(params, reset_counter)
        else:
            self._loop.sampler = Sampler(params, self.vocab_size, self.device)  # the graph sees new deps
        return self._loop

    @property
    def graph_counters(self) -> dict:
        return vars(self._loop.graph.counters).copy() if self._loop else {}

    @contextmanager
    def acquire(self) -> Iterator[None]:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this Runner is already generating; it runs one generation at a time")
        try:
            yield
        finally:
            self._busy.release()

    def session(self) -> Session:
        return Session(self)

    def stream(self, prompt: Prompt, **kwargs) -> TextStream:
        """A new sequence from a clean state; see Session.stream for the arguments."""
        return Session(self).stream(prompt, **kwargs)

    def generate(self, prompt: Prompt, **kwargs) -> GenerationResult:
        return self.stream(prompt, **kwargs).consume()

    def close(self) -> None:
        self._loop = None
        self.methods.close()
