"""The chunked gated delta rule as CPU artifacts trace it: `reference.chunk_gated_delta_rule` on inputs padded
to whole chunks of CHUNK tokens.

Padded tokens have k = 0, v = 0, g = 0 (no decay) and beta = 0 (no write), so they leave the state and every
real token's output as they were: the result is the reference's. What changes is the trace: a prefill whose
length T is symbolic (at most CHUNK, the CPU export's bound) runs its chunk at the static length CHUNK, so the
triangular solve's row masks and the causal masks are constants that export folds, instead of ops on
arange(T) at every call, and no op sees a symbolic shape after the pad.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import CHUNK, chunk_gated_delta_rule as reference_chunk


def padded_length(T: int) -> int:
    """Whole chunks. Under torch.export (T symbolic, bounded by CHUNK there) one chunk: a static length, with no
    guard on T's value."""
    return CHUNK if torch.compiler.is_compiling() else -(-T // CHUNK) * CHUNK


def chunk_gated_delta_rule(q, k, v, g, beta, state, reset):
    """`reference.chunk_gated_delta_rule` (same arguments, same in-place state update) -> o [1, T, Hv, V]."""
    T = q.shape[1]
    pad = padded_length(T) - T
    tokens = (0, 0, 0, 0, 0, pad)  # dim 1 of [1, T, H, D]
    q, k, v = F.pad(q, tokens), F.pad(k, tokens), F.pad(v, tokens)
    g, beta = F.pad(g, (0, 0, 0, pad)), F.pad(beta, (0, 0, 0, pad))
    return reference_chunk(q, k, v, g, beta, state, reset)[:, :T]
