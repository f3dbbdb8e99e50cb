"""Load a Hugging Face checkpoint directory into `GDNForCausalLM`, tensor by tensor.

Each parameter of the model has a recipe: the checkpoint tensors it is built from, with their expected
shapes and where each one goes. The model is built on the meta device; each parameter is allocated once
in the target dtype and filled from memory-mapped safetensors, so host memory peaks near one copy of
the weights. Every checkpoint tensor must be used (except the vision tower and MTP head), every
parameter must be filled, and every shape must match, or `CheckpointError` names the tensor.

The tensors come from a `WeightSource`: `SafetensorsDir` for a checkpoint, or one that `load_model` is handed
(benchmarks pass random weights made on request for shapes whose files do not fit the disk).
"""

from __future__ import annotations

import json
import math
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from .config import ModelConfig, load_config
from .model import GDNForCausalLM, Rotary
from .quant import QuantScheme, quant_target

# checkpoint key prefixes that belong to parts we do not run (vision tower, multi-token prediction)
IGNORED_PREFIXES = ("model.visual.", "visual.", "mtp.", "model.mtp.")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message names the tensor key or file."""


class WeightSource(Protocol):
    """Named tensors in the Hugging Face layout (names, shapes, dtypes), read one at a time by the loader."""

    path: Path  # named in error messages

    def keys(self) -> set[str]: ...

    def numel(self) -> int: ...

    def shape(self, key: str) -> tuple[int, ...]: ...

    def get(self, key: str) -> torch.Tensor: ...

    def close(self) -> None: ...


class SafetensorsDir:
    """Memory-mapped read access to `model.safetensors` or a sharded `model.safetensors.index.json`."""

    def __init__(self, path: Path):
        self.path = path
        index = path / "model.safetensors.index.json"
        single = path / "model.safetensors"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index} is not a valid safetensors index: {e}") from None
            self._file_of = {k: path / f for k, f in weight_map.items()}
        elif single.exists():
            self._file_of = None
            self._single = single
        else:
            raise CheckpointError(f"no model.safetensors or model.safetensors.index.json in {path}")
        self._stack = ExitStack()
        self._handles: dict[Path, object] = {}
        if self._file_of is None:
            self._file_of = {k: single for k in self._open(single).keys()}

    def _open(self, file: Path):
        if file not in self._handles:
            try:
                self._handles[file] = self._stack.enter_context(safe_open(str(file), framework="pt"))
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"cannot read safetensors file {file}: {e}") from None
        return self._handles[file]

    def keys(self) -> set[str]:
        return set(self._file_of)

    def numel(self) -> int:
        """Elements over all tensors (from the headers; nothing is read)."""
        return sum(math.prod(self.shape(k)) for k in self._file_of)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._open(self._file_of[key]).get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._open(self._file_of[key]).get_tensor(key)
        except SafetensorError as e:
            raise CheckpointError(f"cannot read tensor {key!r} from {self._file_of[key]}: {e}") from None

    def close(self) -> None:
        self._stack.close()


Writer = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class Piece:
    """One checkpoint tensor `key` of `shape`; `write(out, tensor)` puts it into the parameter."""

    key: str
    shape: tuple[int, ...]
    write: Writer


def _rows(start: int, stop: int) -> Writer:
    def write(out: torch.Tensor, t: torch.Tensor) -> None:
        out[start:stop].copy_(t)

    return write


def _whole(out: torch.Tensor, t: torch.Tensor) -> None:
    out.copy_(t.reshape(out.shape))


def _concat(pairs: list[tuple[str, tuple[int, ...]]]) -> list[Piece]:
    """Pieces stacked along dim 0 in order."""
    pieces, row = [], 0
    for key, shape in pairs:
        pieces.append(Piece(key, shape, _rows(row, row + shape[0])))
        row += shape[0]
    return pieces


def _gdn_pieces(cfg: ModelConfig, p: str) -> dict[str, list[Piece]]:
    H, hk, hv, dk, dv = cfg.hidden_size, cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim
    conv_dim, value_dim, W = cfg.conv_dim, cfg.value_dim, cfg.linear_conv_kernel_dim
    if cfg.fused_gdn_projections:
        in_proj = [Piece(f"{p}in_proj_qkvz.weight", (2 * hk * dk + 2 * value_dim, H), _qkvz_writer(cfg)),
                   Piece(f"{p}in_proj_ba.weight", (2 * hv, H), _ba_writer(cfg))]
    else:
        in_proj = _concat([(f"{p}in_proj_qkv.weight", (conv_dim, H)), (f"{p}in_proj_z.weight", (value_dim, H)),
                           (f"{p}in_proj_b.weight", (hv, H)), (f"{p}in_proj_a.weight", (hv, H))])
    return {
        "in_proj.weight": in_proj,
        "conv_weight": [Piece(f"{p}conv1d.weight", (conv_dim, 1, W), _whole)],
        "dt_bias": [Piece(f"{p}dt_bias", (hv,), _whole)],
        "A_log": [Piece(f"{p}A_log", (hv,), _whole)],
        "norm.weight": [Piece(f"{p}norm.weight", (dv,), _whole)],
        "out_proj.weight": [Piece(f"{p}out_proj.weight", (H, value_dim), _whole)],
    }


def _qkvz_writer(cfg: ModelConfig) -> Writer:
    """Qwen3-Next's in_proj_qkvz rows are grouped per key head: [q, k, v-group, z-group] each."""
    hk, dk, g_dv = cfg.linear_num_key_heads, cfg.linear_key_head_dim, cfg.value_dim // cfg.linear_num_key_heads
    key_dim, conv_dim = hk * dk, cfg.conv_dim

    def write(out: torch.Tensor, t: torch.Tensor) -> None:
        q, k, v, z = t.view(hk, 2 * dk + 2 * g_dv, -1).split([dk, dk, g_dv, g_dv], dim=1)
        out[:key_dim].copy_(q.reshape(key_dim, -1))
        out[key_dim : 2 * key_dim].copy_(k.reshape(key_dim, -1))
        out[2 * key_dim : conv_dim].copy_(v.reshape(cfg.value_dim, -1))
        out[conv_dim : conv_dim + cfg.value_dim].copy_(z.reshape(cfg.value_dim, -1))

    return write


def _ba_writer(cfg: ModelConfig) -> Writer:
    """Qwen3-Next's in_proj_ba rows are grouped per key head: [b-group, a-group] each."""
    hk, hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    start = cfg.conv_dim + cfg.value_dim

    def write(out: torch.Tensor, t: torch.Tensor) -> None:
        b, a = t.view(hk, 2 * (hv // hk), -1).chunk(2, dim=1)
        out[start : start + hv].copy_(b.reshape(hv, -1))
        out[start + hv : start + 2 * hv].copy_(a.reshape(hv, -1))

    return write


def _attention_pieces(cfg: ModelConfig, p: str) -> dict[str, list[Piece]]:
    H, D = cfg.hidden_size, cfg.head_dim
    q_out, kv_out = cfg.num_attention_heads * D, cfg.num_key_value_heads * D
    return {
        "qkv_proj.weight": _concat([(f"{p}q_proj.weight", (2 * q_out, H)), (f"{p}k_proj.weight", (kv_out, H)),
                                    (f"{p}v_proj.weight", (kv_out, H))]),
        "o_proj.weight": [Piece(f"{p}o_proj.weight", (H, q_out), _whole)],
        "q_norm.weight": [Piece(f"{p}q_norm.weight", (D,), _whole)],
        "k_norm.weight": [Piece(f"{p}k_norm.weight", (D,), _whole)],
    }


def _mlp_pieces(H: int, inter: int, p: str) -> dict[str, list[Piece]]:
    return {
        "gate_up_proj.weight": _concat([(f"{p}gate_proj.weight", (inter, H)), (f"{p}up_proj.weight", (inter, H))]),
        "down_proj.weight": [Piece(f"{p}down_proj.weight", (H, inter), _whole)],
    }


def _moe_pieces(cfg: ModelConfig, p: str, keys: set[str]) -> dict[str, list[Piece]]:
    H, E, I, S = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size, cfg.shared_expert_intermediate_size
    pieces = {
        "router_shared.weight": _concat([(f"{p}gate.weight", (E, H)), (f"{p}shared_expert.gate_proj.weight", (S, H)),
                                         (f"{p}shared_expert.up_proj.weight", (S, H)),
                                         (f"{p}shared_expert_gate.weight", (1, H))]),
        "shared_down_proj.weight": [Piece(f"{p}shared_expert.down_proj.weight", (H, S), _whole)],
    }
    if f"{p}experts.gate_up_proj" in keys:
        # transformers' in-memory fused layout, the one we use
        pieces["gate_up"] = [Piece(f"{p}experts.gate_up_proj", (E, 2 * I, H), _whole)]
        pieces["down"] = [Piece(f"{p}experts.down_proj", (E, H, I), _whole)]
        return pieces

    def at(e: int, start: int, stop: int) -> Writer:
        def write(out: torch.Tensor, t: torch.Tensor) -> None:
            out[e, start:stop].copy_(t)

        return write

    pieces["gate_up"] = [piece for e in range(E) for piece in (
        Piece(f"{p}experts.{e}.gate_proj.weight", (I, H), at(e, 0, I)),
        Piece(f"{p}experts.{e}.up_proj.weight", (I, H), at(e, I, 2 * I)))]
    pieces["down"] = [Piece(f"{p}experts.{e}.down_proj.weight", (H, I), at(e, 0, H)) for e in range(E)]
    return pieces


def recipes(cfg: ModelConfig, keys: set[str]) -> dict[str, list[Piece]]:
    """Our parameter name -> the checkpoint pieces it is built from."""
    root = "model.language_model." if any(k.startswith("model.language_model.") for k in keys) else "model."
    H = cfg.hidden_size
    out: dict[str, list[Piece]] = {
        "embed_tokens.weight": [Piece(f"{root}embed_tokens.weight", (cfg.vocab_size, H), _whole)],
        "norm.weight": [Piece(f"{root}norm.weight", (H,), _whole)],
    }
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = [Piece("lm_head.weight", (cfg.vocab_size, H), _whole)]
    for i in range(cfg.num_hidden_layers):
        src, dst = f"{root}layers.{i}.", f"layers.{i}."
        parts = {"input_layernorm.weight": [Piece(f"{src}input_layernorm.weight", (H,), _whole)],
                 "post_attention_layernorm.weight": [Piece(f"{src}post_attention_layernorm.weight", (H,), _whole)]}
        if cfg.layer_types[i] == "linear_attention":
            parts |= {f"linear_attn.{k}": v for k, v in _gdn_pieces(cfg, f"{src}linear_attn.").items()}
        else:
            parts |= {f"self_attn.{k}": v for k, v in _attention_pieces(cfg, f"{src}self_attn.").items()}
        if cfg.moe_layers[i]:
            parts |= {f"mlp.{k}": v for k, v in _moe_pieces(cfg, f"{src}mlp.", keys).items()}
        else:
            parts |= {f"mlp.{k}": v for k, v in _mlp_pieces(H, cfg.intermediate_size, f"{src}mlp.").items()}
        out |= {dst + k: v for k, v in parts.items()}
    return out


def load_model(
    checkpoint: str | Path,
    max_seq_len: int = 2048,
    dtype: torch.dtype = torch.float32,
    state_dtype: torch.dtype = torch.float32,
    kernels: str = "reference",
    device: str | torch.device = "cpu",
    quant: QuantScheme | None = None,
    weights: WeightSource | None = None,
) -> GDNForCausalLM:
    """Build the model for `checkpoint` (a directory with config.json and safetensors) and load its weights;
    with `quant`, each projection is quantized as soon as it is complete (no float copy of the model exists).
    `weights`: read the tensors from this source instead of the directory's safetensors (the caller closes it)."""
    path = Path(checkpoint)
    cfg = load_config(path)
    files = SafetensorsDir(path) if weights is None else weights
    try:
        with torch.device("meta"):
            model = GDNForCausalLM(cfg, max_seq_len, dtype, state_dtype, kernels, quant)
        _fill_parameters(model, files, recipes(cfg, files.keys()), dtype, torch.device(device))
    finally:
        if weights is None:
            files.close()
    _materialize_buffers(model, cfg, torch.device(device))
    model.tie_weights()
    return model.eval().requires_grad_(False)


def _check_mapped(model: nn.Module, plan: dict[str, list[Piece]]) -> None:
    filled = set()
    for name in plan:
        target = quant_target(model, name)
        filled |= {name} if target is None else {p for p, t in model.named_parameters() if t is target.qweight
                                                  or t is target.scales}
    for name, _ in model.named_parameters():
        if name not in filled:
            raise CheckpointError(f"no checkpoint tensor is mapped to parameter {name!r}")


def _fill_parameters(model: nn.Module, files: WeightSource, plan: dict[str, list[Piece]], dtype, device) -> None:
    keys = files.keys()
    used = set()
    _check_mapped(model, plan)
    for name, pieces in plan.items():
        for piece in pieces:
            if piece.key not in keys:
                raise CheckpointError(f"missing tensor {piece.key!r} in checkpoint {files.path}")
            got = files.shape(piece.key)
            if got != piece.shape:
                raise CheckpointError(f"tensor {piece.key!r} has shape {list(got)}, expected {list(piece.shape)}")
        target = quant_target(model, name)
        shape = target.shape if target is not None else model.get_parameter(name).shape
        out = torch.empty(shape, dtype=dtype, device=device)
        for piece in pieces:
            piece.write(out, files.get(piece.key))
            used.add(piece.key)
        if target is None:
            _set(model, name, nn.Parameter(out, requires_grad=False))
        else:  # complete: quantize it now, and let the float copy go
            target.load(out)
        del out
    leftover = sorted(k for k in keys - used if not k.startswith(IGNORED_PREFIXES))
    if model.cfg.tie_word_embeddings:
        leftover = [k for k in leftover if k != "lm_head.weight"]
    if leftover:
        more = f" (and {len(leftover) - 3} more)" if len(leftover) > 3 else ""
        raise CheckpointError(f"unexpected tensor {leftover[0]!r} in checkpoint{more}: {leftover[:3]}")


def _set(model: nn.Module, name: str, value: nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, value)


def _materialize_buffers(model: GDNForCausalLM, cfg: ModelConfig, device: torch.device) -> None:
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                module._buffers[name] = torch.zeros(buf.shape, dtype=buf.dtype, device=device)
    model.rotary = Rotary(cfg).to(device)
