"""Gated delta rule: chunked prefill, fused one-token decode, and the decode step fused with the causal conv."""

from .op import chunk_gated_delta_rule, conv_recurrent_gated_delta_rule, recurrent_gated_delta_rule

__all__ = ["chunk_gated_delta_rule", "conv_recurrent_gated_delta_rule", "recurrent_gated_delta_rule"]
