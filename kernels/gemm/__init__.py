"""Prefill projection (GEMM) with dynamic row count, and the same with the decoder's residual add and RMS norm in
front."""

from .op import gemm, norm_gemm

__all__ = ["gemm", "norm_gemm"]
