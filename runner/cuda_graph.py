"""Warmup -> capture -> replay of one step function as a CUDA graph, with an eager fallback.

`GraphedStep(step, deps)` runs `step()` (a function of static device buffers only, returning nothing)
eagerly `warmup` times so lazy initialisation (allocator growth, library handles, AOTInductor's first
run) happens outside capture; the next call records `step` into a `torch.cuda.CUDAGraph` on a side
stream with a private memory pool (or `pool`, shared by graphs that never run at once) and then
replays it, which performs that call; every later call only replays. `deps()` returns a hashable
fingerprint of everything the graph reads that is decided outside it (buffer addresses, sampler
structure): it is checked before every replay, and a change sends the machine back to capture instead
of replaying a stale graph. Warmup happens once (what it initialises stays initialised): a re-capture
records directly. If capture fails the machine falls back to eager calls for good and records why.

States: EAGER (disabled or fallen back) | WARMUP | READY (captured, replaying).
Not thread-safe: one GraphedStep belongs to one loop (the decode step, or one prefill bucket).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Hashable

import torch


class GraphState(enum.Enum):
    EAGER = "eager"
    WARMUP = "warmup"
    READY = "ready"


@dataclass
class GraphCounters:
    eager_calls: int = 0
    captures: int = 0
    replays: int = 0


class GraphedStep:
    def __init__(
        self,
        step: Callable[[], None],
        deps: Callable[[], Hashable] = lambda: None,
        *,
        enabled: bool = True,
        warmup: int = 3,
        capture_error_mode: str = "relaxed",
        pool: tuple | None = None,
    ):
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup}")
        self.step, self.deps, self.warmup = step, deps, warmup
        self.capture_error_mode = capture_error_mode
        self.counters = GraphCounters()
        self.fallback_reason: str | None = None if enabled else "disabled"
        self.state = GraphState.WARMUP if enabled else GraphState.EAGER
        self._graph: torch.cuda.CUDAGraph | None = None
        self._pool = None
        self._stream: torch.cuda.Stream | None = None
        self._captured_deps: Hashable = None
        self._warm_calls = 0
        self._shared_pool = pool  # a pool handle shared with other graphs that never run at the same time

    def __call__(self) -> None:
        if self.state is GraphState.READY and self.deps() != self._captured_deps:
            self.invalidate()
        if self.state is GraphState.READY:
            self._graph.replay()
            self.counters.replays += 1
        elif self.state is GraphState.WARMUP and self._warm_calls >= self.warmup:
            self._capture()
        else:
            self._eager()

    def invalidate(self) -> None:
        """Drop the graph (its pool goes with it); the next call captures again (warmup was done once)."""
        if self.state is GraphState.READY:
            self.state = GraphState.WARMUP
        self._graph, self._pool, self._captured_deps = None, None, None

    def _eager(self) -> None:
        self.step()
        self.counters.eager_calls += 1
        if self.state is GraphState.WARMUP:
            self._warm_calls += 1

    def _capture(self) -> None:
        graph, pool = torch.cuda.CUDAGraph(), self._shared_pool or torch.cuda.graph_pool_handle()
        stream = self._stream = self._stream or torch.cuda.Stream()
        deps = self.deps()
        current = torch.cuda.current_stream()
        stream.wait_stream(current)
        try:
            # not torch.cuda.graph(): when capture_end raises, its __exit__ leaves the side stream current
            with torch.cuda.stream(stream):
                graph.capture_begin(pool, capture_error_mode=self.capture_error_mode)
                try:
                    self.step()
                finally:
                    graph.capture_end()
        except Exception as e:  # a failed capture ran nothing: fall back to eager for good
            current.wait_stream(stream)
            self.state, self.fallback_reason = GraphState.EAGER, f"capture failed: {type(e).__name__}: {e}"
            self._graph = self._pool = None
            self._eager()
            return
        current.wait_stream(stream)
        self._graph, self._pool, self._captured_deps = graph, pool, deps
        self.state = GraphState.READY
        self.counters.captures += 1
        graph.replay()  # capture only records: this replay performs the call that triggered it
        self.counters.replays += 1
