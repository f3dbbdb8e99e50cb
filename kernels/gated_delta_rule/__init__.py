"""Gated delta rule: chunked prefill and fused one-token decode."""

from .op import chunk_gated_delta_rule, recurrent_gated_delta_rule

__all__ = ["chunk_gated_delta_rule", "recurrent_gated_delta_rule"]
