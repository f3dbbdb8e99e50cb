"""Causal GQA attention over a static KV cache: flash-attention prefill and split-KV decode."""

from .op import decode_attention, prefill_attention

__all__ = ["decode_attention", "prefill_attention"]
