"""Weight-only int8 / int4 quantized one-token projections (group-wise scales), dequantized in registers: the
quantized forms of `kernels/gemv`."""

from .op import norm_qgemv, qgemv

__all__ = ["norm_qgemv", "qgemv"]
