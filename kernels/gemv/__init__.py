"""One-token projection (matrix-vector product) with an optional fused SiLU-gated input."""

from .op import gemv

__all__ = ["gemv"]
