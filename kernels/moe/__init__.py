"""Mixture of experts: router, routed experts and the gated shared expert."""

from .op import moe_shared

__all__ = ["moe_shared"]
