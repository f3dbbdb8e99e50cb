"""Prefill in chunks, then decode one token per step with the step graphed on CUDA.

The decode step reads two static device buffers, `token` [1, 1] and `pos` [1], runs the artifact's
decode method, samples on the device, writes the sampled id back into `token` and advances `pos` by
one: consecutive steps need nothing from the host, which only reads the new id (streaming and the stop
check). Positions stay below max_seq_len: a sequence of P prompt tokens may grow by at most
max_seq_len - P generated tokens, so every token it holds has a cache slot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import torch

from .cuda_graph import GraphedStep, GraphState
from .sampling import Sampler


class DecodeMethods(Protocol):
    device: torch.device

    def prefill(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor: ...

    def decode(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor: ...


class InputError(ValueError):
    """Bad user input (prompt, ids, settings); the message is one line naming the value."""


class ContextFullError(InputError):
    """A prompt that does not fit into the artifact's max_seq_len; rejected before any work."""


@dataclass
class Timings:
    prompt_tokens: int = 0
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
class Generation:
    """What one call produced; filled in while its tokens stream."""

    prompt_ids: list[int]
    start_pos: int
    generated_ids: list[int] = field(default_factory=list)
    stop_reason: str | None = None  # "stop_token" | "max_new_tokens" | "context_full"
    timings: Timings = field(default_factory=Timings)


class DecodeLoop:
    """The static decode buffers, the sampler and the graphed step over them."""

    def __init__(
        self, methods: DecodeMethods, sampler: Sampler, *, cuda_graph: bool, warmup: int = 3
    ):
        self.methods, self.sampler = methods, sampler
        device = torch.device(methods.device)
        self.token = torch.zeros(1, 1, dtype=torch.int64, device=device)
        self.pos = torch.zeros(1, dtype=torch.int64, device=device)
        self.graph = GraphedStep(
            self._step, self._deps, enabled=cuda_graph and device.type == "cuda", warmup=warmup
        )

    def _step(self) -> None:
        logits = self.methods.decode(self.token, self.pos)  # [1, V]
        self.token.copy_(self.sampler(logits).view(1, 1))
        self.pos.add_(1)

    def _deps(self) -> tuple:
        """What the graph reads that is decided outside it: buffer addresses and the sampler structure."""
        s = self.sampler
        buffers = (self.token, self.pos, s.temperature, s.top_p, s.seed, s.counter)
        state = getattr(self.methods, "state_version", None)  # bumped by methods that reallocate state
        return (s.key, state, *(b.data_ptr() for b in buffers))

    @property
    def path(self) -> str:
        """"cuda_graph" once captured, "warmup" before (eager calls so far), "eager" when off or fallen back."""
        return {GraphState.READY: "cuda_graph", GraphState.WARMUP: "warmup", GraphState.EAGER: "eager"}[self.graph.state]

    def start(self, first: torch.Tensor, pos: int) -> None:
        """first [1] int64 on the device: the token that the next step feeds, at position `pos`."""
        self.token.copy_(first.view(1, 1))
        self.pos.fill_(pos)

    def step(self) -> int:
        self.graph()
        return int(self.token.item())


def prefill(methods: DecodeMethods, ids: Sequence[int], start: int, chunk: int) -> torch.Tensor:
    """Run `ids` at positions start.. through the prefill method in chunks of at most `chunk`; -> logits [1, V]."""
    device = torch.device(methods.device)
    logits = None
    for i in range(0, len(ids), chunk):
        part = ids[i : i + chunk]
        tokens = torch.tensor([list(part)], dtype=torch.int64, device=device)
        pos = torch.arange(start + i, start + i + len(part), dtype=torch.int64, device=device)
        logits = methods.prefill(tokens, pos)
    return logits


def check_fits(n_ids: int, start: int, max_seq_len: int) -> None:
    if n_ids == 0:
        raise InputError("the prompt is empty (no tokens to prefill)")
    if start + n_ids >= max_seq_len:
        held = f" after {start} tokens already held" if start else ""
        raise ContextFullError(
            f"prompt of {n_ids} tokens{held} does not fit max_seq_len {max_seq_len} (room is needed for one new token)"
        )


def generate_ids(
    loop: DecodeLoop,
    gen: Generation,
    *,
    max_new_tokens: int,
    stop_ids: frozenset[int],
    max_seq_len: int,
    prefill_chunk: int,
) -> Iterator[int]:
    """Prefill `gen.prompt_ids` at gen.start_pos and yield new ids; `gen` holds the ids, timings and why it stopped."""
    ids, start = gen.prompt_ids, gen.start_pos
    check_fits(len(ids), start, max_seq_len)
    room = max_seq_len - (start + len(ids))
    limit = min(max_new_tokens, room)
    if limit <= 0:
        gen.stop_reason = "max_new_tokens"
        return
    t0 = time.perf_counter()
    logits = prefill(loop.methods, ids, start, prefill_chunk)
    first = loop.sampler(logits)  # [1]
    loop.start(first, start + len(ids))
    token = int(first.item())
    t1 = time.perf_counter()
    gen.timings.prompt_tokens, gen.timings.prefill_s = len(ids), t1 - t0
    gen.generated_ids.append(token)
    gen.timings.generated_tokens = 1
    yield token
    while token not in stop_ids and len(gen.generated_ids) < limit:
        token = loop.step()
        gen.generated_ids.append(token)
        gen.timings.decode_s = time.perf_counter() - t1
        gen.timings.generated_tokens = len(gen.generated_ids)
        yield token
    gen.timings.generated_tokens = len(gen.generated_ids)
    if token in stop_ids:
        gen.stop_reason = "stop_token"
    elif len(gen.generated_ids) < max_new_tokens:
        gen.stop_reason = "context_full"
    else:
        gen.stop_reason = "max_new_tokens"
