"""One-token projection (matrix-vector product) with an optional fused SiLU-gated input, and the same with the
decoder's residual add and RMS norm in front."""

from .op import gemv, norm_gemv

__all__ = ["gemv", "norm_gemv"]
