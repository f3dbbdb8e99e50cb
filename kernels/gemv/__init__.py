"""One-token projection (matrix-vector product) with an optional fused SiLU-gated input, and the same with the
decoder's residual add and RMS norm in front, and the GDN out_proj with its gated RMS norm in front."""

from .op import gated_norm_gemv, gemv, norm_gemv

__all__ = ["gated_norm_gemv", "gemv", "norm_gemv"]
