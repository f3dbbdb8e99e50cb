"""gdn-bench's random weights for shapes whose files would not fit the disk: a gdn.export.checkpoint.WeightSource
in the Hugging Face layout of a config.json, each tensor made when the export's loader asks for it (benchmarks
only; scripts/gdn_bench.py passes it as ExportOptions.weights). transformers gives the names and shapes (a
meta-device model), never the values."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype
    init: str  # normal | zeros | ones | a_log: what transformers' _init_weights gives this parameter
    std: float  # of `normal`: the config's initializer_range


def _init_of(owner: torch.nn.Module, leaf: str) -> str:
    """The Qwen3-Next / Qwen3.5 _init_weights rules: norms are zero-centred (1 + w), the GDN's gated norm is
    not; dt_bias ones, A_log log(uniform(0.01, 16)); every other weight normal(0, initializer_range)."""
    kind = type(owner).__name__
    if leaf in ("A_log", "dt_bias"):
        return "a_log" if leaf == "A_log" else "ones"
    if kind.endswith("RMSNormGated"):
        return "ones"
    return "zeros" if kind.endswith("RMSNorm") else "normal"


def hf_class(folder: Path) -> type:
    """The transformers model class that config.json's `architectures` names; ValueError (one line) if none."""
    import transformers

    arch = json.loads((folder / "config.json").read_text()).get("architectures") or [""]
    cls = getattr(transformers, str(arch[0]), None)
    if not isinstance(cls, type):
        raise ValueError(f"{folder / 'config.json'}: architectures {arch!r} names no transformers model class")
    return cls


def hf_layout(folder: Path) -> dict[str, TensorSpec]:
    """name -> spec of every tensor transformers saves for the config.json in `folder`: its `architectures[0]`
    class built on the meta device (no memory), tied parameters once, in the config's dtype (default bf16)."""
    cls = hf_class(folder)
    cfg = cls.config_class.from_pretrained(folder)
    raw = json.loads((folder / "config.json").read_text())
    dtype = getattr(torch, str(raw.get("dtype") or raw.get("torch_dtype") or "bfloat16").removeprefix("torch."))
    std = getattr(cfg.get_text_config(), "initializer_range", None) or 0.02
    with torch.device("meta"):
        model = cls(cfg)
    layout = {}
    for name, p in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        layout[name] = TensorSpec(tuple(p.shape), dtype, _init_of(model.get_submodule(owner), leaf), std)
    return layout


def tensor_seed(seed: int, name: str) -> int:
    """A generator seed of its own for each (seed, tensor name), the same in every process."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


class RandomWeights:
    """Random weights in the Hugging Face layout of the config.json in `path`, made when the export's loader
    asks for each one (a gdn.export.checkpoint.WeightSource, passed as ExportOptions.weights): benchmarks only.
    Each tensor comes from its own generator on `device`, seeded by (seed, name), so two runs on one kind of
    device export identical weights; nothing is kept between calls. Values follow transformers' init
    (normal * initializer_range, norms at their init), so activations stay finite through deep bf16 stacks."""

    def __init__(self, path: Path, seed: int = 0, device: str | torch.device = "cpu"):
        self.path, self.seed, self.device = Path(path), seed, torch.device(device)
        self.layout = hf_layout(self.path)

    def keys(self) -> set[str]:
        return set(self.layout)

    def numel(self) -> int:
        return sum(math.prod(s.shape) for s in self.layout.values())

    def shape(self, key: str) -> tuple[int, ...]:
        return self.layout[key].shape

    def get(self, key: str) -> torch.Tensor:
        spec = self.layout[key]
        if spec.init in ("zeros", "ones"):
            return (torch.zeros if spec.init == "zeros" else torch.ones)(spec.shape, dtype=spec.dtype, device=self.device)
        g = torch.Generator(self.device).manual_seed(tensor_seed(self.seed, key))
        if spec.init == "a_log":
            a = torch.empty(spec.shape, device=self.device).uniform_(0.01, 16, generator=g)
            return a.log_().to(spec.dtype)
        return torch.empty(spec.shape, dtype=spec.dtype, device=self.device).normal_(0.0, spec.std, generator=g)

    def close(self) -> None:
        pass
