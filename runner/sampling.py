"""Token sampling on the device, made to be recorded into a CUDA graph.

The structure of the computation (greedy or not, top-k size, whether top-p applies) is fixed when a
`Sampler` is built and is its `key`; the values a graph may read (temperature, top-p, seed, step
counter) live in device tensors that are updated in place, so changing them never needs a new graph.

Randomness comes from a counter-based hash of (seed, step, slot), not from a torch generator: the same
seed gives the same tokens on CPU and CUDA, eagerly and under graph replay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import SamplingError

_M32 = 0xFFFFFFFF
# odd multipliers below 2**31, so products of 32-bit values stay inside int64
_MULTIPLIERS = (0x7FEB352D, 0x5E2D58D7, 0x2C1B3C6D)


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 is greedy; top_k 0 means no top-k cut; top_p 1.0 means no nucleus cut."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise SamplingError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise SamplingError(f"top_k must be >= 0 (0 turns it off), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash on int64 tensors (values kept in [0, 2**32))."""
    x = x & _M32
    for m in _MULTIPLIERS:
        x = x ^ (x >> 16)
        x = (x * m) & _M32
    return x ^ (x >> 15)


def uniform_noise(seed: torch.Tensor, counter: torch.Tensor, n: int) -> torch.Tensor:
    """seed, counter [1] int64 -> [n] float32, uniform in the open interval (0, 1)."""
    slot = torch.arange(n, device=seed.device, dtype=torch.int64)
    h = _mix32(slot + _mix32(seed ^ _mix32(counter + 0x9E3779B9)))
    return ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))


class Sampler:
    """`sampler(logits [1, V]) -> token [1] int64`, on the logits' device, no host synchronisation.

    Each call advances a device-side step counter, so consecutive calls draw fresh noise."""

    def __init__(self, params: SamplingParams, vocab_size: int, device: torch.device):
        self.vocab_size = vocab_size
        self.top_k = min(params.top_k, vocab_size)
        self.key = (params.greedy, self.top_k, params.top_p < 1.0)
        self.temperature = torch.empty(1, dtype=torch.float32, device=device)
        self.top_p = torch.empty(1, dtype=torch.float32, device=device)
        self.seed = torch.empty(1, dtype=torch.int64, device=device)
        self.counter = torch.zeros(1, dtype=torch.int64, device=device)
        self.params = params
        self.update(params)

    def compatible(self, params: SamplingParams) -> bool:
        """Whether `update(params)` keeps this sampler's structure (and so any graph that holds it)."""
        return (params.greedy, min(params.top_k, self.vocab_size), params.top_p < 1.0) == self.key

    def update(self, params: SamplingParams, reset_counter: bool = True) -> None:
        """Write new values in place; the structure must stay the same (see `compatible`). A fresh
        counter makes the same seed draw the same noise again."""
        if not self.compatible(params):
            raise ValueError("sampling structure changed; build a new Sampler")
        self.params = params
        self.temperature.fill_(max(params.temperature, 1e-6))
        self.top_p.fill_(params.top_p)
        self.seed.fill_(params.seed & _M32)
        if reset_counter:
            self.counter.zero_()

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        greedy, top_k, use_top_p = self.key
        if greedy:
            return logits.argmax(-1)
        x = logits[0].float() / self.temperature  # [V]
        idx = None
        if top_k:
            x, idx = torch.topk(x, top_k)  # [k], sorted descending
        elif use_top_p:
            x, idx = torch.sort(x, descending=True)
        if use_top_p:
            probs = torch.softmax(x, dim=-1)
            mass_before = probs.cumsum(-1) - probs
            x = x.masked_fill(mass_before >= self.top_p, float("-inf"))
        u = uniform_noise(self.seed, self.counter, x.shape[0])
        self.counter.add_(1)
        choice = (x - torch.log(-torch.log(u))).argmax(-1, keepdim=True)  # Gumbel-max: [1]
        return choice if idx is None else idx.gather(0, choice)
