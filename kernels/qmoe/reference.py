"""Quantized mixture of experts in plain PyTorch: the specification of `gdn::qmoe_shared`.

`moe_shared` dequantizes every quantized weight with `kernels/qgemv/reference.dequantize` (q * s rounded once to
the scales' dtype), then runs exactly `kernels/moe/reference.moe_shared`. Storage, as `export/quant.QuantLinear`
keeps a stacked expert weight:

    gate_up [E, 2I, H] -> gate_up_q [E, 2I, H * bits / 8], gate_up_s [E, 2I, H / group]
    down    [E, H, I]  -> down_q    [E, H, I * bits / 8],  down_s    [E, H, I / group]
    shared_down [H, S] -> shared_down_q [H, S * bits / 8], shared_down_s [H, S / group]

int8: qweight int8; int4: uint8, two columns a byte (offset-binary nibbles, column 2j low). Scales in the
activation dtype.
"""

from __future__ import annotations

import torch

from ..moe import reference as moe_ref
from ..qgemv import reference as qref


def check_inputs(x, router_shared, gate_up_q, gate_up_s, down_q, down_s, shared_down_q, shared_down_s,
                 top_k: int, bits: int, group: int) -> tuple[int, int, int, int]:
    """-> (E, H, I, S); a one-line ValueError naming the first value the op cannot take."""
    if bits not in qref.BITS:
        raise ValueError(f"qmoe_shared: bits must be one of {qref.BITS}, got {bits!r}")
    qref.check_group(group)
    if x.dim() != 2 or gate_up_s.dim() != 3 or down_s.dim() != 3 or shared_down_s.dim() != 2:
        raise ValueError(f"qmoe_shared wants x [T, H], gate_up_s [E, 2I, H / group], down_s [E, H, I / group], "
                         f"shared_down_s [H, S / group], got {tuple(x.shape)}, {tuple(gate_up_s.shape)}, "
                         f"{tuple(down_s.shape)}, {tuple(shared_down_s.shape)}")
    E, I2, H = gate_up_s.shape[0], gate_up_s.shape[1], gate_up_s.shape[2] * group
    I, S = I2 // 2, shared_down_s.shape[1] * group
    if I2 % 2:
        raise ValueError(f"qmoe_shared: gate_up_s must hold gate and up rows (2I), got {I2} rows")
    qref.check_scheme(I, bits, group)
    for name, s in (("gate_up_s", gate_up_s), ("down_s", down_s), ("shared_down_s", shared_down_s)):
        if s.dtype != x.dtype:
            raise ValueError(f"qmoe_shared: {name} must be in x's dtype {x.dtype}, got {s.dtype}")
    if x.shape[1] != H or tuple(down_s.shape) != (E, H, I // group) or shared_down_s.shape[0] != H:
        raise ValueError(f"qmoe_shared: inconsistent shapes for group {group}: x {tuple(x.shape)}, gate_up_s "
                         f"{tuple(gate_up_s.shape)}, down_s {tuple(down_s.shape)}, shared_down_s "
                         f"{tuple(shared_down_s.shape)}")
    for name, q, s, K in (("gate_up", gate_up_q, gate_up_s, H), ("down", down_q, down_s, I),
                          ("shared_down", shared_down_q, shared_down_s, S)):
        check_packed(name, q, s, K, bits, group)
    if router_shared.dim() != 2 or tuple(router_shared.shape) != (x.shape[0], E + 2 * S + 1):
        raise ValueError(f"qmoe_shared: router_shared must be [T, E + 2S + 1] = [{x.shape[0]}, {E + 2 * S + 1}], "
                         f"got {tuple(router_shared.shape)}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= E:
        raise ValueError(f"qmoe_shared: top_k must be an int in 1 .. {E} (the experts), got {top_k!r}")
    return E, H, I, S


def check_packed(name: str, q: torch.Tensor, s: torch.Tensor, K: int, bits: int, group: int) -> None:
    """q [*rows, K * bits / 8] of the right integer dtype beside s [*rows, K / group]."""
    qref.check_scheme(K, bits, group)
    want = (torch.int8, K) if bits == 8 else (torch.uint8, K // 2)
    if q.dtype != want[0] or tuple(q.shape) != (*s.shape[:-1], want[1]):
        raise ValueError(f"qmoe_shared: int{bits} {name}_q must be {want[0]} {[*s.shape[:-1], want[1]]} beside "
                         f"{name}_s {tuple(s.shape)}, got {q.dtype} {tuple(q.shape)}")


def dequantize(q: torch.Tensor, s: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Stacked q [*rows, K * bits / 8], s [*rows, K / group] -> w' [*rows, K] in the scales' dtype."""
    w = qref.dequantize(q.reshape(-1, q.shape[-1]), s.reshape(-1, s.shape[-1]), bits, group)
    return w.view(*s.shape[:-1], w.shape[-1])


def dequantize_exact(q: torch.Tensor, s: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """q * s in float64 with no rounding to the scales' dtype: what the decode kernels compute with (tests)."""
    q2 = q.reshape(-1, q.shape[-1])
    ints = q2 if bits == 8 else qref.unpack_int4(q2)  # [R, K] int8
    w = ints.double().reshape(ints.shape[0], -1, group) * s.reshape(-1, s.shape[-1]).double()[..., None]
    return w.reshape(*s.shape[:-1], -1)


def moe_shared(x, router_shared, gate_up_q, gate_up_s, down_q, down_s, shared_down_q, shared_down_s,
               top_k: int, renormalize: bool, bits: int, group: int) -> torch.Tensor:
    """x [T, H]; router_shared [T, E + 2S + 1] -> [T, H] in x's dtype: `moe.reference.moe_shared` on the
    dequantized weights."""
    check_inputs(x, router_shared, gate_up_q, gate_up_s, down_q, down_s, shared_down_q, shared_down_s,
                 top_k, bits, group)
    return moe_ref.moe_shared(x, router_shared, dequantize(gate_up_q, gate_up_s, bits, group),
                              dequantize(down_q, down_s, bits, group),
                              dequantize(shared_down_q, shared_down_s, bits, group), top_k, renormalize)
