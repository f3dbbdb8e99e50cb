"""The two steps a generation drives: the prompt's prefill, in chunks, and the decode steps, graphed on CUDA.

Decode runs in blocks of k steps (one graph replay on CUDA). The steps read static device buffers: `token`
[1, 1] and `pos` [1] (the next token and its position), the turn's stop ids, how many ids it may still emit,
and whether it has ended. Each step runs the artifact's decode method, samples on the device, writes the id into
the block's `ids` [k] and advances: consecutive steps and blocks need nothing from the host. Once a step emits a
stop id or the turn's last allowed id, the turn has ended on the device and the block's remaining steps are pads
(input_pos -1: the artifact changes no state for them) that emit -1. The host reads each block back through
pinned memory while the next block already runs (on CUDA), so it never stalls the GPU; a block launched after
the turn ended is all pads.
"""

from __future__ import annotations

from typing import Collection, Iterator, Sequence

import torch

from .cuda_graph import GraphedStep, GraphState
from .methods import Methods
from .sampling import Sampler, SamplingParams

PAD_POS = -1  # input_pos of a pad (the artifact's contract: no state changes)
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
    """The static decode buffers, the sampler and the graphed block of `block` steps over them. Built once per
    Runner and kept, so the captured graph serves every turn and every position.

    A turn: `start` (the first id, from the prefill's logits), then `tokens()` (the rest, as the device emits
    them), then `emitted` holds every id the device emitted this turn, also those the host did not consume; the
    state holds all of them but the last."""

    def __init__(self, methods: Methods, vocab_size: int, *, cuda_graph: bool, warmup: int = 3, block: int = 1,
                 max_stops: int = 16):
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.methods, self.vocab_size, self.block = methods, vocab_size, block
        device = torch.device(methods.device)
        self.sampler = Sampler(SamplingParams(), vocab_size, device)
        self.token = torch.zeros(1, 1, dtype=torch.int64, device=device)
        self.pos = torch.zeros(1, dtype=torch.int64, device=device)
        self.stops = torch.full((max_stops,), -1, dtype=torch.int64, device=device)  # -1 matches no id
        self.left = torch.zeros(1, dtype=torch.int64, device=device)  # ids the turn may still emit
        self.ended = torch.ones(1, dtype=torch.bool, device=device)
        self.ids = torch.full((block + 1,), -1, dtype=torch.int64, device=device)  # [k] ids, then ended
        self.graph = GraphedStep(self._block, self._deps, enabled=cuda_graph and device.type == "cuda", warmup=warmup)
        self.asynchronous = pinned = device.type == "cuda"  # a launch returns before the GPU is done
        self._host = [torch.empty(block + 1, dtype=torch.int64, pin_memory=pinned) for _ in range(2)]
        self._events = [torch.cuda.Event() for _ in range(2)] if pinned else []
        self._inflight: list[int] = []  # host slots launched and not yet read, oldest first
        self._launches = 0
        self.emitted: list[int] = []

    def set_sampling(self, params: SamplingParams, reset_counter: bool) -> None:
        """New values go into the sampler's device tensors in place (the graph stays valid); a new structure
        (greedy or not, top-k size, top-p on or off) needs a new sampler, which the graph sees as a new
        dependency and captures again."""
        if self.sampler.compatible(params):
            self.sampler.update(params, reset_counter)
        else:
            self.sampler = Sampler(params, self.vocab_size, self.token.device)

    def start(self, logits: torch.Tensor, pos: int, limit: int, stop_ids: Collection[int] = ()) -> int:
        """Sample the turn's first id from the prefill's logits [1, V]; the next step feeds it at position `pos`.
        The turn ends on the device after `limit` ids or at the first of `stop_ids` (at most max_stops)."""
        if len(stop_ids) > self.stops.numel():
            raise ValueError(f"at most {self.stops.numel()} stop ids, got {len(stop_ids)}")
        stops = sorted(stop_ids) + [-1] * (self.stops.numel() - len(stop_ids))
        self.stops.copy_(torch.tensor(stops, dtype=torch.int64))
        self.token.copy_(self.sampler(logits).view(1, 1))
        self.pos.fill_(pos)
        self.left.fill_(limit - 1)
        torch.logical_or(self._is_stop(self.token[0]), self.left <= 0, out=self.ended)
        self._inflight = []
        self.emitted = [int(self.token.item())]
        return self.emitted[0]

    def tokens(self) -> Iterator[int]:
        """The turn's ids after the first, block by block as the device emits them, until it ends the turn. The
        caller may stop early: `finish` then collects what the device emitted beyond what was consumed."""
        budget = self._left_host()  # no block is launched beyond the last id the turn may emit
        depth = 2 if self.asynchronous else 1  # async: the next block runs while the host reads this one
        while True:
            while budget > 0 and len(self._inflight) < depth:
                self._launch()
                budget -= self.block
            if not self._inflight:
                return
            new, ended = self._read()
            yield from new
            if ended:
                return

    def finish(self) -> list[int]:
        """Wait for the blocks still in flight -> every id the device emitted this turn (the first included)."""
        while self._inflight:
            self._read()
        return self.emitted

    @property
    def path(self) -> str:
        """"cuda_graph" once captured, "warmup" before (eager calls so far), "eager" when off or fallen back."""
        return PATHS[self.graph.state]

    def _left_host(self) -> int:
        """The ids the turn may still emit as the host knows them (stops aside): blocks beyond are pads."""
        return int(self.left.item()) if not bool(self.ended.item()) else 0

    def _launch(self) -> None:
        slot = self._launches % 2  # at most two blocks in flight, read in launch order
        self._launches += 1
        self.graph()
        self._host[slot].copy_(self.ids, non_blocking=self.asynchronous)
        if self._events:
            self._events[slot].record()
        self._inflight.append(slot)

    def _read(self) -> tuple[list[int], bool]:
        slot = self._inflight.pop(0)
        if self._events:
            self._events[slot].synchronize()
        *ids, ended = self._host[slot].tolist()
        new = [t for t in ids if t >= 0]
        self.emitted += new
        return new, bool(ended)

    def _block(self) -> None:
        """k decode steps; once the turn has ended, a step is a pad (no state change) that emits -1."""
        for i in range(self.block):
            live = ~self.ended  # [1]
            logits = self.methods.decode(self.token, torch.where(live, self.pos, PAD_POS))  # [1, V]
            nxt = self.sampler(logits).view(1)  # [1]
            self.ids[i : i + 1].copy_(torch.where(live, nxt, -1))
            self.token.copy_(torch.where(live, nxt, self.token[0]).view(1, 1))
            self.pos.add_(live.long())
            self.left.sub_(live.long())
            self.ended.logical_or_(self._is_stop(nxt) | (self.left <= 0))
        self.ids[self.block :].copy_(self.ended)

    def _is_stop(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [1] -> [1] bool. A broadcast compare: torch.isin sorts on CUDA, reading a size back (no capture)."""
        return (ids[:, None] == self.stops).any(-1)

    def _deps(self) -> tuple:
        """What the graph reads that is decided outside it: buffer addresses and the sampler's structure."""
        s = self.sampler
        buffers = (self.token, self.pos, self.stops, self.left, self.ended, self.ids,
                   s.temperature, s.top_p, s.seed, s.counter)
        return (s.key, *(b.data_ptr() for b in buffers))
