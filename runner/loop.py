"""The two steps a generation drives: the prompt's prefill, in chunks, and the decode step, graphed on CUDA.

The decode step reads two static device buffers, `token` [1, 1] and `pos` [1], runs the artifact's decode
method, samples on the device, writes the sampled id back into `token` and advances `pos` by one: consecutive
steps need nothing from the host, which only reads the new id (for streaming and the stop check).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .cuda_graph import GraphedStep, GraphState
from .methods import Methods
from .sampling import Sampler, SamplingParams

PATHS = {GraphState.READY: "cuda_graph", GraphState.WARMUP: "warmup", GraphState.EAGER: "eager"}


def prefill(methods: Methods, ids: Sequence[int], start: int, chunk: int) -> torch.Tensor:
    """Run `ids` at positions start.. through the prefill method in chunks of at most `chunk` -> logits [1, V]
    of the last one."""
    logits = None
    for i in range(0, len(ids), chunk):
        part = list(ids[i : i + chunk])
        tokens = torch.tensor([part], dtype=torch.int64, device=methods.device)  # [1, T]
        pos = torch.arange(start + i, start + i + len(part), dtype=torch.int64, device=methods.device)  # [T]
        logits = methods.prefill(tokens, pos)
    return logits


class DecodeLoop:
    """The static decode buffers, the sampler and the graphed step over them. Built once per Runner and kept,
    so the captured graph serves every turn and every position."""

    def __init__(self, methods: Methods, vocab_size: int, *, cuda_graph: bool, warmup: int = 3):
        self.methods, self.vocab_size = methods, vocab_size
        device = torch.device(methods.device)
        self.sampler = Sampler(SamplingParams(), vocab_size, device)
        self.token = torch.zeros(1, 1, dtype=torch.int64, device=device)
        self.pos = torch.zeros(1, dtype=torch.int64, device=device)
        self.graph = GraphedStep(self._step, self._deps, enabled=cuda_graph and device.type == "cuda", warmup=warmup)

    def set_sampling(self, params: SamplingParams, reset_counter: bool) -> None:
        """New values go into the sampler's device tensors in place (the graph stays valid); a new structure
        (greedy or not, top-k size, top-p on or off) needs a new sampler, which the graph sees as a new
        dependency and captures again."""
        if self.sampler.compatible(params):
            self.sampler.update(params, reset_counter)
        else:
            self.sampler = Sampler(params, self.vocab_size, self.token.device)

    def start(self, logits: torch.Tensor, pos: int) -> int:
        """Sample the first token from the prefill's logits [1, V]; the next step feeds it at position `pos`."""
        self.token.copy_(self.sampler(logits).view(1, 1))
        self.pos.fill_(pos)
        return int(self.token.item())

    def step(self) -> int:
        self.graph()
        return int(self.token.item())

    @property
    def path(self) -> str:
        """"cuda_graph" once captured, "warmup" before (eager calls so far), "eager" when off or fallen back."""
        return PATHS[self.graph.state]

    def _step(self) -> None:
        logits = self.methods.decode(self.token, self.pos)  # [1, V]
        self.token.copy_(self.sampler(logits).view(1, 1))
        self.pos.add_(1)

    def _deps(self) -> tuple:
        """What the graph reads that is decided outside it: buffer addresses and the sampler's structure."""
        s = self.sampler
        return (s.key, *(b.data_ptr() for b in (self.token, self.pos, s.temperature, s.top_p, s.seed, s.counter)))
