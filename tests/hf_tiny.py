"""Tiny random checkpoints of the three families, built and saved by transformers (the reference)."""

from __future__ import annotations

from pathlib import Path

import torch

SMALL = dict(
    vocab_size=160, hidden_size=48, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=12,
    intermediate_size=40, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
)
MOE = dict(num_experts=8, num_experts_per_tok=3, moe_intermediate_size=20, shared_expert_intermediate_size=24)
VISION = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=48)

# name -> (transformers class name, config class name, config kwargs, wrapper?)
CASES = {
    "qwen3_next": ("Qwen3NextForCausalLM", "Qwen3NextConfig", {**SMALL, **MOE}, False),
    "qwen3_next_mlp_only": ("Qwen3NextForCausalLM", "Qwen3NextConfig",
                            {**SMALL, **MOE, "num_hidden_layers": 5, "mlp_only_layers": [1, 3]}, False),
    "qwen3_next_sparse_step": ("Qwen3NextForCausalLM", "Qwen3NextConfig",
                               {**SMALL, **MOE, "decoder_sparse_step": 2, "norm_topk_prob": False}, False),
    "qwen3_5": ("Qwen3_5ForCausalLM", "Qwen3_5TextConfig", {**SMALL}, False),
    "qwen3_5_tied": ("Qwen3_5ForCausalLM", "Qwen3_5TextConfig", {**SMALL, "tie_word_embeddings": True}, False),
    "qwen3_5_moe": ("Qwen3_5MoeForCausalLM", "Qwen3_5MoeTextConfig", {**SMALL, **MOE, "linear_num_value_heads": 2}, False),
    "qwen3_5_vl": ("Qwen3_5ForConditionalGeneration", "Qwen3_5Config", {**SMALL}, True),
    "qwen3_5_moe_vl": ("Qwen3_5MoeForConditionalGeneration", "Qwen3_5MoeConfig", {**SMALL, **MOE}, True),
}


def build(name: str, seed: int = 0):
    """A transformers model of case `name` with every weight randomised (norms and gates included)."""
    import transformers

    cls_name, cfg_name, kwargs, wrapper = CASES[name]
    cfg_cls = getattr(transformers, cfg_name)
    cfg = cfg_cls(text_config=dict(kwargs), vision_config=dict(VISION)) if wrapper else cfg_cls(**kwargs)
    if wrapper:
        cfg.tie_word_embeddings = kwargs.get("tie_word_embeddings", False)
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(cfg).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("A_log"):
                p.copy_(torch.empty_like(p).uniform_(0.5, 8).log())
            elif pname.endswith("dt_bias"):
                p.copy_(torch.randn_like(p) * 0.5)
            elif "norm" in pname:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.copy_(torch.randn_like(p) * 0.15)
    return model


def save(name: str, path: Path, seed: int = 0):
    model = build(name, seed)
    model.save_pretrained(path)
    return model
