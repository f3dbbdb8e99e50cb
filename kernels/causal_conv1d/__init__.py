"""Causal depthwise conv1d with SiLU and a rolling state."""

from .op import causal_conv1d

__all__ = ["causal_conv1d"]
