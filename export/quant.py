"""Weight-only, group-wise int8 / int4 quantization of the exported model (`gdn-export --quant`).

The numerics are `kernels/qgemv/reference.py`'s: symmetric absmax per row and group of `group` input columns,
scales in the model dtype, int4 packed two columns a byte. `QuantLinear` holds one quantized weight in place
of an nn.Linear (or a stacked [E, rows, K] expert weight); its forward is the reference (dequantize, then
F.linear). The embedding table gets the same scheme (`QuantEmbedding`: the gathered rows are dequantized), so a
table tied to lm_head is stored once, quantized. Norms, conv weights, A_log and dt_bias stay in the model dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gdn.kernels.qgemv import reference as qref

SCHEMES = {"none": None, "int8": 8, "int4": 4}
# per bits; each divides every input dimension of the supported Qwen checkpoints and of the bundled model (192);
# chosen by the accuracy table in the README (Quantization)
DEFAULT_GROUP = {8: 64, 4: 32}
ROWS_PER_STEP = 4096  # quantize a weight this many rows at a time: the float32 temporaries stay small


class QuantError(ValueError):
    """A quantization option the checkpoint cannot take; the message names the value."""


@dataclass(frozen=True)
class QuantScheme:
    bits: int
    group: int

    @property
    def name(self) -> str:
        return f"int{self.bits}"

    def to_metadata(self, model: nn.Module) -> dict:
        """What the artifact records: the scheme, and which weights it covers."""
        names = sorted({_kind(n) for n, m in model.named_modules() if isinstance(m, QuantLinear)})
        return {"scheme": self.name, "bits": self.bits, "group_size": self.group, "symmetric": True,
                "scale_dtype": str(_scale_dtype(model)).removeprefix("torch."), "quantized": names}


def parse_scheme(name: str, group: int | None) -> QuantScheme | None:
    """--quant NAME [--group-size N] -> the scheme, None for `none`; QuantError on a bad value."""
    if name not in SCHEMES:
        raise QuantError(f"unknown --quant scheme {name!r}; expected one of {', '.join(SCHEMES)}")
    bits = SCHEMES[name]
    if bits is None:
        if group is not None:
            raise QuantError(f"--group-size {group} needs --quant int8 or int4")
        return None
    group = DEFAULT_GROUP[bits] if group is None else group
    if isinstance(group, bool) or not isinstance(group, int) or group <= 0:
        raise QuantError(f"--group-size must be a positive integer, got {group!r}")
    if bits == 4 and group % 2:
        raise QuantError(f"--group-size {group} is odd; int4 packs two columns a byte, so it must be even")
    return QuantScheme(bits, group)


def check_divides(model: nn.Module, scheme: QuantScheme) -> None:
    """Every quantized weight's input dimension must be a multiple of the group size."""
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear) and m.shape[-1] % scheme.group:
            raise QuantError(f"--group-size {scheme.group} does not divide the input dimension {m.shape[-1]} "
                             f"of weight {name!r} (shape {list(m.shape)})")


class QuantLinear(nn.Module):
    """A weight [*rows, K] as qweight [*rows, K * bits / 8] (int8, or uint8 packed int4) and scales
    [*rows, K / group]. As a module it is nn.Linear's reference: dequantize, then F.linear."""

    def __init__(self, shape: tuple[int, ...], scheme: QuantScheme):
        super().__init__()
        self.shape, self.bits, self.group = tuple(shape), scheme.bits, scheme.group
        *rows, K = self.shape
        qdtype, qcols = (torch.int8, K) if self.bits == 8 else (torch.uint8, K // 2)
        self.qweight = nn.Parameter(torch.zeros(*rows, qcols, dtype=qdtype), requires_grad=False)
        self.scales = nn.Parameter(torch.zeros(*rows, max(1, K // self.group)), requires_grad=False)

    def dequantize(self) -> torch.Tensor:
        """-> [*rows, K] in the scales' dtype."""
        q2 = self.qweight.reshape(-1, self.qweight.shape[-1])  # [R, K * bits / 8]
        w = qref.dequantize(q2, self.scales.reshape(-1, self.scales.shape[-1]), self.bits, self.group)
        return w.view(self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize())

    @torch.no_grad()
    def load(self, w: torch.Tensor) -> None:
        """Quantize the complete float weight w [*rows, K] into qweight and scales, a block of rows at a time."""
        K = self.shape[-1]
        flat = w.reshape(-1, K)  # [R, K]
        qcols = K if self.bits == 8 else K // 2
        q = torch.empty(flat.shape[0], qcols, dtype=self.qweight.dtype, device=w.device)
        s = torch.empty(flat.shape[0], K // self.group, dtype=w.dtype, device=w.device)
        for start in range(0, flat.shape[0], ROWS_PER_STEP):
            stop = start + ROWS_PER_STEP
            q[start:stop], s[start:stop] = qref.quantize(flat[start:stop], self.bits, self.group)
        *rows, _ = self.shape
        self.qweight = nn.Parameter(q.view(*rows, qcols), requires_grad=False)
        self.scales = nn.Parameter(s.view(*rows, K // self.group), requires_grad=False)


class QuantEmbedding(QuantLinear):
    """The token embedding [vocab, H], quantized like lm_head: gathers the rows, then dequantizes them."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] -> [T, H] in the scales' dtype."""
        return qref.dequantize(self.qweight[ids], self.scales[ids], self.bits, self.group)


def make_linear(in_features: int, out_features: int, scheme: QuantScheme | None) -> nn.Module:
    if scheme is None:
        return nn.Linear(in_features, out_features, bias=False)
    return QuantLinear((out_features, in_features), scheme)


def dense_weight(w: nn.Module | torch.Tensor) -> torch.Tensor:
    """The float weight of an nn.Linear, a QuantLinear (dequantized) or a plain parameter."""
    if isinstance(w, QuantLinear):
        return w.dequantize()
    return w.weight if isinstance(w, nn.Linear) else w


def quant_target(model: nn.Module, name: str) -> QuantLinear | None:
    """The QuantLinear a loader parameter name fills: `<linear>.weight` or a stacked expert weight `<path>`."""
    owner, _, leaf = name.rpartition(".")
    for path in (name, owner if leaf == "weight" else None):
        if path is None:
            continue
        try:
            m = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(m, QuantLinear):
            return m
    return None


def _kind(module_name: str) -> str:
    """layers.3.mlp.gate_up_proj -> mlp.gate_up_proj: the weight's role, without the layer index."""
    parts = module_name.split(".")
    return ".".join(parts[2:]) if parts[0] == "layers" else module_name


def _scale_dtype(model: nn.Module) -> torch.dtype:
    return next(m.scales.dtype for m in model.modules() if isinstance(m, QuantLinear))
