"""The artifact's two methods over one model, traced by torch.export: `prefill` (any prompt chunk length up to the
bound, a dynamic dimension) and `decode` (one token, static shapes). They share the model's weights and state
buffers; the lowering keeps them shared in the artifact."""

from __future__ import annotations

import torch
from torch.export import Dim, ExportedProgram, export

from .model import GDNForCausalLM
from .progress import Progress


class PrefillMethod(torch.nn.Module):
    """`prefill` of the artifact: the chunked path for any T in [1, max chunk]."""

    def __init__(self, model: GDNForCausalLM):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.model.prefill(tokens, input_pos)


class DecodeMethod(torch.nn.Module):
    """`decode` of the artifact: one token, static shapes."""

    def __init__(self, model: GDNForCausalLM):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, input_pos)


def export_methods(model: GDNForCausalLM, chunk: int, progress: Progress) -> dict[str, ExportedProgram]:
    # example T = 2 (not 1): torch.export specialises a dimension whose example size is 1
    example_t = min(2, chunk)
    device = model.norm.weight.device
    tokens = torch.zeros(1, example_t, dtype=torch.long, device=device)
    pos = torch.arange(example_t, device=device)
    out = {}
    with torch.no_grad():
        with progress.stage("export prefill"):
            if chunk > 1:
                T = Dim("T", min=1, max=chunk)
                out["prefill"] = export(PrefillMethod(model), (tokens, pos), dynamic_shapes=({1: T}, {0: T}), strict=True)
            else:
                out["prefill"] = export(PrefillMethod(model), (tokens[:, :1], pos[:1]), strict=True)
        with progress.stage("export decode"):
            one = (torch.zeros(1, 1, dtype=torch.long, device=device), torch.zeros(1, dtype=torch.long, device=device))
            out["decode"] = export(DecodeMethod(model), one, strict=True)
    return out
