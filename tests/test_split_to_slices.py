"""export.lower.split_to_slices, the CUDA lowering's rewrite of splits into slices (views in AOTInductor instead of
a copy kernel per part): every split form goes, and the program computes the same values."""

from __future__ import annotations

import torch

from gdn.export.lower import split_to_slices


class Splits(torch.nn.Module):
    def forward(self, x):
        a, b, c = x.split([3, 5, 9], dim=-1)  # a fused projection's parts
        d, e = x.chunk(2, dim=-1)
        f, g, h = x.split(7, dim=-1)  # a short last part
        return a * 2, b + 1, c, d, e, f, g, h


def test_every_split_becomes_slices_with_the_same_values():
    x = torch.randn(5, 17)
    ep = torch.export.export(Splits(), (x,))
    want = ep.module()(x)
    split_to_slices({"m": ep})
    left = [str(n.target) for n in ep.graph.nodes if n.op == "call_function" and "slice" not in str(n.target)]
    assert not any("split" in t or "chunk" in t for t in left), left
    got = ep.module()(torch.clone(x))
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))
