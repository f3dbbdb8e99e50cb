"""Mixture of experts on weight-only int8 / int4 group-quantized experts: the quantized form of `kernels/moe`."""

from .op import qmoe_shared

__all__ = ["qmoe_shared"]
