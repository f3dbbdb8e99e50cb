"""Prefill replayed through CUDA graphs captured per length bucket.

A chunk of n prompt tokens runs in the smallest bucket B >= n (the powers of two below the artifact's prefill
chunk, and the chunk itself), padded with pads: input_pos -1, which by the artifact's contract change no state
and leave the logits those of the last real token (export/model.py). Each bucket has static device buffers,
`tokens` [1, B] and `pos` [B], written before the call (the real length is in `pos`, on the device), and its own
GraphedStep: warmup -> capture -> replay, with the eager fallback. All buckets capture into one memory pool:
they never run at the same time. Off (CPU, or without --cuda-graph), chunks run unpadded, eagerly.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import torch

from .cuda_graph import GraphCounters, GraphedStep, GraphState
from .loop import PAD_POS, prefill
from .methods import Methods

PATHS = {GraphState.READY: "cuda_graph", GraphState.WARMUP: "warmup", GraphState.EAGER: "eager"}


def buckets(chunk: int) -> list[int]:
    """The graph sizes for prefill chunks of at most `chunk` tokens: 1, 2, 4, ... below it, and `chunk`."""
    sizes, b = [], 1
    while b < chunk:
        sizes.append(b)
        b *= 2
    return sizes + [chunk]


class PrefillGraphs:
    def __init__(self, methods: Methods, chunk: int, *, cuda_graph: bool, warmup: int = 3):
        self.methods, self.chunk = methods, chunk
        device = torch.device(methods.device)
        self.enabled = cuda_graph and device.type == "cuda"
        self.sizes = buckets(chunk) if self.enabled else []
        pool = torch.cuda.graph_pool_handle() if self.enabled else None
        self._tokens = {b: torch.zeros(1, b, dtype=torch.int64, device=device) for b in self.sizes}
        self._pos = {b: torch.full((b,), PAD_POS, dtype=torch.int64, device=device) for b in self.sizes}
        self._logits: dict[int, torch.Tensor] = {}
        self.steps = {b: GraphedStep(partial(self._call, b), enabled=True, warmup=warmup, pool=pool)
                      for b in self.sizes}
        self.path = "eager"  # of the last chunk

    def __call__(self, ids: Sequence[int], start: int) -> torch.Tensor:
        """Run `ids` at positions start.. in chunks of at most the artifact's chunk -> logits [1, V] of the last."""
        if not self.enabled:
            self.path = "eager"
            return prefill(self.methods, ids, start, self.chunk)
        logits = None
        for i in range(0, len(ids), self.chunk):
            logits = self._graphed(list(ids[i : i + self.chunk]), start + i)
        return logits

    @property
    def counters(self) -> dict:
        """The buckets' state machines, summed: eager calls, captures, replays."""
        total = GraphCounters()
        for step in self.steps.values():
            for k, v in vars(step.counters).items():
                setattr(total, k, getattr(total, k) + v)
        return vars(total)

    def _graphed(self, part: list[int], start: int) -> torch.Tensor:
        n = len(part)
        b = next(s for s in self.sizes if s >= n)
        pad = b - n
        self._tokens[b].copy_(torch.tensor([part + [0] * pad], dtype=torch.int64))
        self._pos[b].copy_(torch.tensor(list(range(start, start + n)) + [PAD_POS] * pad, dtype=torch.int64))
        step = self.steps[b]
        step()
        self.path = PATHS[step.state]
        return self._logits[b]

    def _call(self, b: int) -> None:
        """The step a bucket's graph records: its output stays at one address across replays."""
        self._logits[b] = self.methods.prefill(self._tokens[b], self._pos[b])
