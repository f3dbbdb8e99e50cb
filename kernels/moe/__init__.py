"""Mixture of experts: router and routed experts."""

from .op import moe

__all__ = ["moe"]
