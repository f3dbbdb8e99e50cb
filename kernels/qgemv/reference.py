"""Weight-only quantized one-token projections, in plain PyTorch: the specification.

Quantization (`quantize`), symmetric, per row and group of `group` consecutive columns along K:

    s[n, j] = max |w[n, jG : (j + 1)G]| / qmax, rounded up to the scale dtype     qmax = 127 (int8), 7 (int4)
    q[n, k] = round(w[n, k] / s[n, k // G]) in [-qmax, qmax]                        so |w - q s| <= s / 2
    w'[n, k] = q[n, k] * s[n, k // G]                                               (`dequantize`)

Storage:
- int8: qweight int8 [N, K].
- int4: qweight uint8 [N, K // 2], two columns a byte as offset-binary nibbles q + 8 (1 ... 15): column 2j in
  the low nibble, 2j + 1 in the high nibble.
- scales [N, K // G] in the weight's dtype (the activation dtype).

`gemv` and `norm_gemv` dequantize to the scales' dtype, then run exactly `kernels/gemv/reference.py`'s op.
"""

from __future__ import annotations

import torch

from ..gemv import reference as dense

BITS = (8, 4)
QMAX = {8: 127, 4: 7}
INT4_OFFSET = 8  # a nibble holds q + 8


def check_group(group: int) -> None:
    if isinstance(group, bool) or not isinstance(group, int) or group <= 0:
        raise ValueError(f"group size must be a positive int, got {group!r}")


def check_scheme(K: int, bits: int, group: int) -> None:
    """One-line ValueError naming the value when `bits` / `group` cannot quantize rows of K columns."""
    if bits not in BITS:
        raise ValueError(f"quantization bits must be one of {BITS}, got {bits!r}")
    check_group(group)
    if K % group:
        raise ValueError(f"group size {group} does not divide the input dimension K = {K}")
    if bits == 4 and group % 2:
        raise ValueError(f"int4 packs two columns a byte, so the group size must be even, got {group} (K = {K})")


def weight_shape(qweight: torch.Tensor, scales: torch.Tensor, bits: int, group: int) -> tuple[int, int]:
    """(N, K) of the weights that qweight [N, K * bits / 8] and scales [N, K / group] hold; ValueError otherwise."""
    if qweight.dim() != 2 or scales.dim() != 2:
        raise ValueError(f"qweight and scales must be 2-d, got {tuple(qweight.shape)} and {tuple(scales.shape)}")
    check_group(group)
    N, K = scales.shape[0], scales.shape[1] * group
    check_scheme(K, bits, group)
    want = (torch.int8, K) if bits == 8 else (torch.uint8, K // 2)
    if tuple(qweight.shape) != (N, want[1]) or qweight.dtype != want[0]:
        raise ValueError(f"int{bits} qweight must be {want[0]} [{N}, {want[1]}] for scales {tuple(scales.shape)} "
                         f"and group {group}, got {qweight.dtype} {tuple(qweight.shape)}")
    return N, K


def round_up(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x >= 0 float32 -> the least value of `dtype` >= x (so a stored scale never clips a group's largest weight)."""
    y = x.to(dtype)
    return torch.where(y.float() < x, torch.nextafter(y, torch.full_like(y, float("inf"))), y)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q int8 [N, K] in [-8, 7], K even -> uint8 [N, K / 2]: column 2j + 8 in the low nibble, 2j + 1 + 8 high."""
    u = (q.to(torch.int16) + INT4_OFFSET).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K / 2] -> int8 [N, K], the inverse of `pack_int4`."""
    lo = (p & 15).to(torch.int8) - INT4_OFFSET
    hi = (p >> 4).to(torch.int8) - INT4_OFFSET
    return torch.stack((lo, hi), dim=-1).reshape(p.shape[0], 2 * p.shape[1])


def quantize(w: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (qweight: int8 [N, K] or uint8 [N, K / 2], scales [N, K / group] in w's dtype)."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"quantize wants a float [N, K] weight, got {w.dtype} {tuple(w.shape)}")
    N, K = w.shape
    check_scheme(K, bits, group)
    qmax = QMAX[bits]
    wg = w.float().reshape(N, K // group, group)  # [N, K/G, G]
    scales = round_up(wg.abs().amax(-1) / qmax, w.dtype)  # [N, K/G]
    s = torch.where(scales > 0, scales.float(), 1.0)[..., None]  # an all-zero group stores q = 0
    q = torch.round(wg / s).clamp(-qmax, qmax).to(torch.int8).reshape(N, K)
    return (q if bits == 8 else pack_int4(q)), scales


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """-> w' [N, K] = q * s in the scales' dtype (the product in float32, rounded once)."""
    N, K = weight_shape(qweight, scales, bits, group)
    q = qweight if bits == 8 else unpack_int4(qweight)  # [N, K] int8
    w = q.float().reshape(N, K // group, group) * scales.float()[..., None]
    return w.reshape(N, K).to(scales.dtype)


def gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int, group: int,
         act: str) -> torch.Tensor:
    """x [1, K] (or [1, 2K] for silu_mul) -> y [1, N]: `gemv.reference.gemv` on the dequantized weights."""
    return dense.gemv(x, dequantize(qweight, scales, bits, group), act)


def norm_gemv(
    x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor, eps: float, qweight: torch.Tensor,
    scales: torch.Tensor, bits: int, group: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (y [T, N], r [T, K], n [T, K]): `gemv.reference.norm_gemv` on the dequantized weights."""
    return dense.norm_gemv(x, delta, norm_weight, eps, dequantize(qweight, scales, bits, group))
