"""Parse a Hugging Face `config.json` of Qwen3-Next, Qwen3.5 or Qwen3.5-MoE into one dataclass."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FAMILIES = ("qwen3_next", "qwen3_5", "qwen3_5_moe")
LINEAR, FULL = "linear_attention", "full_attention"

# model_type (top level or text_config) -> family
_MODEL_TYPES = {
    "qwen3_next": "qwen3_next",
    "qwen3_5": "qwen3_5",
    "qwen3_5_text": "qwen3_5",
    "qwen3_5_moe": "qwen3_5_moe",
    "qwen3_5_moe_text": "qwen3_5_moe",
}


class ConfigError(ValueError):
    """A config.json the model cannot honour; the message names the field and the value."""


@dataclass(frozen=True)
class ModelConfig:
    family: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    layer_types: tuple[str, ...]
    rms_norm_eps: float
    tie_word_embeddings: bool
    max_position_embeddings: int
    # full attention
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float
    partial_rotary_factor: float
    # gated delta net
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int
    # feed-forward: dense MLP where `moe_layers[i]` is False, sparse MoE where True
    intermediate_size: int
    moe_layers: tuple[bool, ...]
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    norm_topk_prob: bool = True
    # True for Qwen3-Next: in_proj_qkvz / in_proj_ba are fused and interleaved per key-head group
    fused_gdn_projections: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    # the state dtype the checkpoint asks for (`mamba_ssm_dtype`), None when it says nothing
    ssm_state_dtype: str | None = None
    source: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def conv_dim(self) -> int:
        return 2 * self.linear_num_key_heads * self.linear_key_head_dim + self.value_dim

    @property
    def value_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        return d


def load_config(path: str | Path) -> ModelConfig:
    """Read `path` (a checkpoint directory or a config.json file)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no config.json at {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config.json at {path} is not valid JSON: {e}") from None
    return parse_config(raw)


def parse_config(raw: dict[str, Any]) -> ModelConfig:
    family, text = _family(raw)
    # the wrapper's own tie_word_embeddings decides tying (transformers reads the top-level config)
    tie = raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))

    def get(name: str, default: Any = ...) -> Any:
        if name in text and text[name] is not None:
            return text[name]
        if default is ...:
            raise ConfigError(f"config field {name!r} is missing")
        return default

    _refuse_unsupported(get)
    n_layers = int(get("num_hidden_layers"))
    layer_types = _layer_types(text, n_layers)
    rope_theta, partial = _rope(text)
    num_experts = int(get("num_experts", 0)) if family != "qwen3_5" else 0
    moe_layers = _moe_layers(text, family, n_layers, num_experts)
    eos = raw.get("eos_token_id", text.get("eos_token_id"))
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    bos = raw.get("bos_token_id", text.get("bos_token_id"))

    cfg = ModelConfig(
        family=family,
        vocab_size=int(get("vocab_size")),
        hidden_size=int(get("hidden_size")),
        num_hidden_layers=n_layers,
        layer_types=layer_types,
        rms_norm_eps=float(get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(tie),
        max_position_embeddings=int(get("max_position_embeddings", 32768)),
        num_attention_heads=int(get("num_attention_heads")),
        num_key_value_heads=int(get("num_key_value_heads")),
        head_dim=int(get("head_dim", int(get("hidden_size")) // int(get("num_attention_heads")))),
        rope_theta=rope_theta,
        partial_rotary_factor=partial,
        linear_num_key_heads=int(get("linear_num_key_heads")),
        linear_num_value_heads=int(get("linear_num_value_heads")),
        linear_key_head_dim=int(get("linear_key_head_dim")),
        linear_value_head_dim=int(get("linear_value_head_dim")),
        linear_conv_kernel_dim=int(get("linear_conv_kernel_dim", 4)),
        intermediate_size=int(get("intermediate_size", 0) or 0),
        moe_layers=moe_layers,
        num_experts=num_experts,
        num_experts_per_tok=int(get("num_experts_per_tok", 0)) if num_experts else 0,
        moe_intermediate_size=int(get("moe_intermediate_size", 0)) if num_experts else 0,
        shared_expert_intermediate_size=int(get("shared_expert_intermediate_size", 0)) if num_experts else 0,
        # Qwen3.5-MoE always renormalises the top-k weights (transformers ignores the field there)
        norm_topk_prob=bool(get("norm_topk_prob", True)) if family == "qwen3_next" else True,
        fused_gdn_projections=family == "qwen3_next",
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=eos_ids,
        ssm_state_dtype=get("mamba_ssm_dtype", None),
        source=raw,
    )
    _validate(cfg)
    return cfg


def _family(raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """-> (family, the text model's settings: `text_config` of a vision-language wrapper, else `raw`)."""
    model_type = raw.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise ConfigError(f"unsupported model_type {model_type!r}; expected one of {sorted(_MODEL_TYPES)}")
    family = _MODEL_TYPES[model_type]
    text = raw.get("text_config") or raw
    if text is not raw and _MODEL_TYPES.get(text.get("model_type", model_type + "_text")) != family:
        raise ConfigError(f"text_config.model_type {text.get('model_type')!r} does not match model_type {model_type!r}")
    return family, text


def _refuse_unsupported(get) -> None:
    act = get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"unsupported hidden_act {act!r}; only 'silu' is implemented")
    if get("attention_bias", False):
        raise ConfigError("unsupported attention_bias True; the model has no attention biases")


def _layer_types(text: dict[str, Any], n_layers: int) -> tuple[str, ...]:
    types = text.get("layer_types")
    if types is None:
        interval = int(text.get("full_attention_interval", 4))
        if interval < 1:
            raise ConfigError(f"full_attention_interval must be >= 1, got {interval}")
        types = [FULL if (i + 1) % interval == 0 else LINEAR for i in range(n_layers)]
    if len(types) != n_layers:
        raise ConfigError(f"layer_types has {len(types)} entries but num_hidden_layers is {n_layers}")
    for t in types:
        if t not in (LINEAR, FULL):
            raise ConfigError(f"unsupported layer_types entry {t!r}; expected {LINEAR!r} or {FULL!r}")
    return tuple(types)


def _rope(text: dict[str, Any]) -> tuple[float, float]:
    params = text.get("rope_parameters") or text.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"unsupported rope_type {rope_type!r}; only 'default' rotary embeddings are implemented")
    theta = params.get("rope_theta", text.get("rope_theta"))
    if theta is None:
        raise ConfigError("config field 'rope_theta' is missing (neither rope_parameters.rope_theta nor rope_theta)")
    partial = params.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.25))
    # Qwen3.5's interleaved mrope sections reduce to plain rope for text (all three position rows are equal)
    return float(theta), float(partial)


def _moe_layers(text: dict[str, Any], family: str, n_layers: int, num_experts: int) -> tuple[bool, ...]:
    if family == "qwen3_5" or num_experts == 0:
        if family == "qwen3_5_moe":
            raise ConfigError(f"num_experts must be > 0 for qwen3_5_moe, got {num_experts}")
        return (False,) * n_layers
    if family == "qwen3_5_moe":
        return (True,) * n_layers
    step = int(text.get("decoder_sparse_step", 1) or 1)
    dense = set(text.get("mlp_only_layers") or [])
    return tuple(i not in dense and (i + 1) % step == 0 for i in range(n_layers))


def _validate(cfg: ModelConfig) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(cfg.num_attention_heads % cfg.num_key_value_heads == 0,
         f"num_attention_heads {cfg.num_attention_heads} is not a multiple of num_key_value_heads {cfg.num_key_value_heads}")
    need(cfg.linear_num_value_heads % cfg.linear_num_key_heads == 0,
         f"linear_num_value_heads {cfg.linear_num_value_heads} is not a multiple of linear_num_key_heads {cfg.linear_num_key_heads}")
    need(cfg.rotary_dim % 2 == 0 and 0 < cfg.rotary_dim <= cfg.head_dim,
         f"partial_rotary_factor {cfg.partial_rotary_factor} gives rotary dim {cfg.rotary_dim} for head_dim {cfg.head_dim}")
    need(cfg.linear_conv_kernel_dim >= 2, f"linear_conv_kernel_dim must be >= 2, got {cfg.linear_conv_kernel_dim}")
    if any(cfg.moe_layers):
        need(0 < cfg.num_experts_per_tok <= cfg.num_experts,
             f"num_experts_per_tok {cfg.num_experts_per_tok} must be in [1, num_experts={cfg.num_experts}]")
        need(cfg.moe_intermediate_size > 0, f"moe_intermediate_size must be > 0, got {cfg.moe_intermediate_size}")
        need(cfg.shared_expert_intermediate_size > 0,
             f"shared_expert_intermediate_size must be > 0, got {cfg.shared_expert_intermediate_size}")
    if not all(cfg.moe_layers):
        need(cfg.intermediate_size > 0, f"intermediate_size must be > 0 for dense layers, got {cfg.intermediate_size}")
    if cfg.ssm_state_dtype not in (None, "float32", "bfloat16", "float16"):
        raise ConfigError(f"unsupported mamba_ssm_dtype {cfg.ssm_state_dtype!r}")
