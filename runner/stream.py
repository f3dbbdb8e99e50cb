"""What a generation gives back: a `TextStream` of text pieces while it runs, then its `GenerationResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generator, Iterator

from .sampling import SamplingParams


@dataclass
class Timings:
    prompt_tokens: int = 0  # tokens prefilled by this turn
    generated_tokens: int = 0
    prefill_s: float = 0.0  # prompt prefill, first sampling and its read-back: the time to first token
    decode_s: float = 0.0  # from the first token to the last

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        steps = self.generated_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "time_to_first_token_s": self.prefill_s,
            "decode_s": self.decode_s,
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
        }


@dataclass
class GenerationResult:
    """One turn, filled in while its tokens stream."""

    prompt_ids: list[int]  # the ids of this turn's input (the whole rendered conversation for chat)
    sampling: SamplingParams
    generated_ids: list[int] = field(default_factory=list)  # the stop token, when one ended the turn, is last
    text: str | None = None  # generated ids decoded without stop tokens, cut before a stop string; None: no tokenizer
    stop_reason: str | None = None  # "stop_token" | "stop_string" | "max_new_tokens" | "context_full"
    prefilled_tokens: int = 0  # tokens this turn ran through prefill
    reused_tokens: int = 0  # tokens whose state was kept from the previous turn
    decode_path: str = "eager"  # "cuda_graph" | "warmup" (not captured yet) | "eager"; `graph` has the counts
    graph: dict = field(default_factory=dict)  # counters of the decode step's state machine
    prefill_path: str = "eager"  # of the turn's last prefill chunk: "cuda_graph" | "warmup" | "eager"
    prefill_graph: dict = field(default_factory=dict)  # counters of the prefill buckets' state machines, summed
    timings: Timings = field(default_factory=Timings)

    def as_dict(self) -> dict:
        s = self.sampling
        return {
            "prompt_ids": self.prompt_ids,
            "generated_ids": self.generated_ids,
            "text": self.text,
            "stop_reason": self.stop_reason,
            "sampling": {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "seed": s.seed},
            "prefilled_tokens": self.prefilled_tokens,
            "reused_tokens": self.reused_tokens,
            "decode_path": self.decode_path,
            "graph": self.graph,
            "prefill_path": self.prefill_path,
            "prefill_graph": self.prefill_graph,
            "timings": self.timings.as_dict(),
        }


class TextStream(Iterator[str]):
    """Text pieces as tokens arrive (never a split UTF-8 character); `.result` once exhausted.

    `tokens()` iterates (token id, text piece) pairs instead; a final piece of text left in the
    detokenizer comes as id -1. Closing it early ends the turn (the state keeps what ran)."""

    def __init__(self, pairs: Generator[tuple[int, str], None, GenerationResult]):
        self._pairs = pairs
        self.result: GenerationResult | None = None

    def tokens(self) -> Iterator[tuple[int, str]]:
        while True:
            try:
                yield next(self._pairs)
            except StopIteration as stop:
                self.result = stop.value
                return

    def __next__(self) -> str:
        try:
            return next(self._pairs)[1]
        except StopIteration as stop:
            self.result = stop.value
            raise

    def close(self) -> None:
        self._pairs.close()

    def consume(self) -> GenerationResult:
        for _ in self.tokens():
            pass
        return self.result
