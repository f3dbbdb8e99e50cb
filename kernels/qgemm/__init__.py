"""Weight-only int8 / int4 prefill projections (group-wise scales), dequantized in registers in front of the
tensor-core dot: the quantized forms of `kernels/gemm`."""

from .op import norm_qgemm, qgemm

__all__ = ["norm_qgemm", "qgemm"]
