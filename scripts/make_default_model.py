"""Write the bundled default model: a tiny random-weight Qwen3.5-MoE checkpoint in Hugging Face layout.

    python scripts/make_default_model.py [OUT_DIR]      (default: export/default_model)

It has the real file layout (config.json, model.safetensors with per-expert keys as transformers'
save_pretrained writes them, tokenizer.json, tokenizer_config.json with a chat template,
generation_config.json), so it goes through exactly the code paths of a Hub checkpoint. Its weights are
random: it exercises the pipeline, it does not write sensible text. Seeded, so reruns give the same files.
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gdn.export.checkpoint import recipes
from gdn.export.config import parse_config

SEED = 20261122
VOCAB = 512
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer() -> Tokenizer:
    """Byte-level BPE on CPython's LICENSE text (present in every CPython install)."""
    corpus = Path(sysconfig.get_path("stdlib"), "LICENSE.txt").read_text(encoding="utf-8").splitlines()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok


def config(vocab_size: int, eos: list[int]) -> dict:
    return {
        "architectures": ["Qwen3_5MoeForCausalLM"],
        "model_type": "qwen3_5_moe_text",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "layer_types": ["linear_attention"] * 3 + ["full_attention"],
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_conv_kernel_dim": 4,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 32,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        "tie_word_embeddings": False,
        "mamba_ssm_dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": eos,
        "dtype": "float32",
    }


def random_weights(cfg_json: dict) -> dict[str, torch.Tensor]:
    cfg = parse_config(cfg_json)
    gen = torch.Generator().manual_seed(SEED)
    out = {}
    for pieces in recipes(cfg, set()).values():
        for piece in pieces:
            key, shape = piece.key, piece.shape
            if key.endswith("A_log"):
                t = torch.empty(shape).uniform_(1.0, 16.0, generator=gen).log()
            elif key.endswith("dt_bias"):
                t = torch.ones(shape)
            elif "norm" in key:
                # zero-centred (1 + w) norms start at 0; the gated GDN norm is a plain weight
                t = torch.ones(shape) if key.endswith("linear_attn.norm.weight") else torch.zeros(shape)
            else:
                t = torch.randn(shape, generator=gen) * 0.02
            out[key] = t.contiguous()
    return out


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    eos = [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
    cfg = config(tok.get_vocab_size(), eos)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "bos_token": None, "chat_template": CHAT_TEMPLATE}, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({
        "do_sample": True, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "eos_token_id": eos}, indent=2) + "\n")
    save_file(random_weights(cfg), str(out / "model.safetensors"), metadata={"format": "pt"})
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "export" / "default_model")
