"""Mixture of experts: router and routed experts."""

from .op import moe, moe_shared

__all__ = ["moe", "moe_shared"]
