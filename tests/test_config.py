"""config.json of the three families, as on the Hub and as transformers 5.x writes them."""

import json

import pytest

from gdn.export.config import FULL, LINEAR, ConfigError, load_config, parse_config

BASE = dict(vocab_size=100, hidden_size=32, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
            linear_value_head_dim=8, intermediate_size=64)
MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16)


def test_qwen3_next_old_style_rope_and_interval():
    raw = {**BASE, **MOE, "model_type": "qwen3_next", "rope_theta": 5e6, "partial_rotary_factor": 0.25,
           "full_attention_interval": 4, "decoder_sparse_step": 2, "mlp_only_layers": [3], "norm_topk_prob": False}
    cfg = parse_config(raw)
    assert cfg.family == "qwen3_next" and cfg.fused_gdn_projections
    assert cfg.rope_theta == 5e6 and cfg.rotary_dim == 4
    assert cfg.layer_types == (LINEAR, LINEAR, LINEAR, FULL) * 2
    # sparse on layers 1, 5, 7 ((i + 1) % 2 == 0), layer 3 forced dense by mlp_only_layers
    assert cfg.moe_layers == (False, True, False, False, False, True, False, True)
    assert cfg.norm_topk_prob is False


def test_qwen3_5_vl_wrapper_reads_text_config_and_rope_parameters():
    text = {**BASE, "model_type": "qwen3_5_text", "layer_types": [LINEAR, FULL] * 4, "mamba_ssm_dtype": "float32",
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                                "mrope_section": [11, 11, 10], "mrope_interleaved": True},
            "eos_token_id": 7}
    raw = {"model_type": "qwen3_5", "architectures": ["Qwen3_5ForConditionalGeneration"], "text_config": text,
           "vision_config": {"depth": 1}, "tie_word_embeddings": True}
    cfg = parse_config(raw)
    assert cfg.family == "qwen3_5" and not cfg.fused_gdn_projections
    assert cfg.layer_types == (LINEAR, FULL) * 4
    assert cfg.rope_theta == 1e7 and cfg.tie_word_embeddings
    assert cfg.moe_layers == (False,) * 8 and cfg.eos_token_ids == (7,)
    assert cfg.ssm_state_dtype == "float32"


def test_qwen3_5_moe_text_only_class():
    raw = {**BASE, **MOE, "model_type": "qwen3_5_moe_text", "rope_parameters": {"rope_theta": 1e7}}
    cfg = parse_config(raw)
    assert cfg.family == "qwen3_5_moe" and all(cfg.moe_layers) and cfg.norm_topk_prob
    assert cfg.partial_rotary_factor == 0.25  # the family default


def test_load_config_from_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**BASE, "model_type": "qwen3_5_text", "rope_theta": 1e4}))
    assert load_config(tmp_path).hidden_size == 32


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "llama"}, "unsupported model_type 'llama'"),
        ({"hidden_act": "gelu"}, "unsupported hidden_act 'gelu'"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}}, "unsupported rope_type 'yarn'"),
        ({"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
        ({"linear_num_value_heads": 3}, "linear_num_value_heads 3 is not a multiple of linear_num_key_heads 2"),
        ({"layer_types": ["mamba"] * 8}, "unsupported layer_types entry 'mamba'"),
        ({"layer_types": [LINEAR] * 3}, "layer_types has 3 entries but num_hidden_layers is 8"),
        ({"attention_bias": True}, "unsupported attention_bias True"),
        ({"hidden_size": None}, "config field 'hidden_size' is missing"),
        ({"mamba_ssm_dtype": "float8"}, "unsupported mamba_ssm_dtype 'float8'"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_fields_name_field_and_value(change, message):
    raw = {**BASE, "model_type": "qwen3_5_text", "rope_theta": 1e4, **change}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(raw)


def test_missing_or_broken_config_json(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path)


def test_default_max_seq_len_spans_the_model_limit_within_the_kv_budget():
    """ops kernels: the model's limit, capped so the KV cache fits KV_BUDGET_BYTES; CPU/reference: bounded."""
    import torch

    from gdn.export.pipeline import DEFAULT_MAX_SEQ_LEN, KV_BUDGET_BYTES, default_max_seq_len, kv_bytes_per_token

    types = [LINEAR, LINEAR, LINEAR, FULL] * 6
    qwen35_2b = parse_config({**BASE, "model_type": "qwen3_5_text", "num_hidden_layers": 24, "layer_types": types, "rope_theta": 1e7,
                              "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256,
                              "max_position_embeddings": 262144})
    assert kv_bytes_per_token(qwen35_2b, torch.bfloat16) == 6 * 2 * 2 * 256 * 2
    assert default_max_seq_len(qwen35_2b, "ops", torch.bfloat16) == 262144
    assert default_max_seq_len(qwen35_2b, "reference", torch.bfloat16) == DEFAULT_MAX_SEQ_LEN
    wide = parse_config({**BASE, "model_type": "qwen3_5_text", "num_hidden_layers": 24, "layer_types": types, "rope_theta": 1e7,
                         "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 256,
                         "max_position_embeddings": 262144})
    n = default_max_seq_len(wide, "ops", torch.float32)
    assert n % 256 == 0 and n * kv_bytes_per_token(wide, torch.float32) <= KV_BUDGET_BYTES
    assert (n + 256) * kv_bytes_per_token(wide, torch.float32) > KV_BUDGET_BYTES
