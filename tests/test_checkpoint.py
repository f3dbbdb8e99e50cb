"""Checkpoint loading: layouts (single, sharded, fused experts), and every bad checkpoint fails clearly."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from gdn.export.checkpoint import CheckpointError, load_model
from gdn.export.config import FULL, LINEAR, ConfigError
from runner_eager import DEFAULT_MODEL


def _copy(src, dst, tensors=None, config=None):
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(config(cfg) if config else cfg))
    save_file(tensors if tensors is not None else load_file(src / "model.safetensors"), dst / "model.safetensors")
    return dst


def _logits(path, ids):
    return load_model(path, max_seq_len=64)(ids, torch.arange(ids.shape[1]))


def test_sharded_index(hf_checkpoints, tmp_path):
    src, _ = hf_checkpoints("qwen3_5")
    tensors = load_file(src / "model.safetensors")
    keys = sorted(tensors)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: tensors[k] for k in ks}, tmp_path / name)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    ids = torch.randint(0, 160, (1, 9))
    assert torch.equal(_logits(tmp_path, ids), _logits(src, ids))


def test_fused_expert_keys_load_like_per_expert_keys(hf_checkpoints, tmp_path):
    """transformers' in-memory layout experts.gate_up_proj [E, 2I, H] / experts.down_proj [E, H, I]."""
    src, hf = hf_checkpoints("qwen3_next")
    tensors = load_file(src / "model.safetensors")
    E = hf.config.num_experts
    fused = {}
    for key in list(tensors):
        if ".mlp.experts.0.gate_proj" in key:
            p = key.split("experts.0.")[0] + "experts."
            gate = [tensors.pop(f"{p}{e}.gate_proj.weight") for e in range(E)]
            up = [tensors.pop(f"{p}{e}.up_proj.weight") for e in range(E)]
            fused[p + "gate_up_proj"] = torch.stack([torch.cat([g, u]) for g, u in zip(gate, up)])
            fused[p + "down_proj"] = torch.stack([tensors.pop(f"{p}{e}.down_proj.weight") for e in range(E)])
    dst = _copy(src, tmp_path / "fused", {**tensors, **fused})
    ids = torch.randint(0, 160, (1, 9))
    assert torch.equal(_logits(dst, ids), _logits(src, ids))


def test_vision_and_mtp_tensors_are_ignored(hf_checkpoints, tmp_path):
    src, _ = hf_checkpoints("qwen3_5_vl")
    tensors = load_file(src / "model.safetensors")
    tensors["mtp.layers.0.mlp.down_proj.weight"] = torch.randn(4, 4)
    assert any(k.startswith("model.visual.") for k in tensors)
    dst = _copy(src, tmp_path / "mtp", tensors)
    ids = torch.randint(0, 160, (1, 5))
    assert torch.equal(_logits(dst, ids), _logits(src, ids))


def _without(key):
    return lambda t: {k: v for k, v in t.items() if k != key}


def _reshaped(key):
    return lambda t: {**t, key: torch.randn(t[key].shape[0] + 1, *t[key].shape[1:])}


def _extra(key):
    return lambda t: {**t, key: torch.randn(3)}


@pytest.mark.parametrize(
    "edit, error",
    [
        (_without("model.layers.0.linear_attn.A_log"), "missing tensor 'model.layers.0.linear_attn.A_log'"),
        (_without("lm_head.weight"), "missing tensor 'lm_head.weight'"),
        (_reshaped("model.layers.3.self_attn.k_proj.weight"),
         r"tensor 'model.layers.3.self_attn.k_proj.weight' has shape \[33, 48\], expected \[32, 48\]"),
        (_extra("model.layers.0.linear_attn.surprise"), "unexpected tensor 'model.layers.0.linear_attn.surprise'"),
    ],
    ids=["missing-key", "missing-lm-head", "wrong-shape", "unexpected-key"],
)
def test_bad_tensors_name_the_key(edit, error, hf_checkpoints, tmp_path):
    src, _ = hf_checkpoints("qwen3_5")
    dst = _copy(src, tmp_path / "bad", edit(load_file(src / "model.safetensors")))
    with pytest.raises(CheckpointError, match=error):
        load_model(dst)


def test_unknown_model_type(hf_checkpoints, tmp_path):
    src, _ = hf_checkpoints("qwen3_5")
    dst = _copy(src, tmp_path / "bad", config=lambda c: {**c, "model_type": "mamba2"})
    with pytest.raises(ConfigError, match="unsupported model_type 'mamba2'"):
        load_model(dst)


def test_corrupt_and_missing_safetensors(hf_checkpoints, tmp_path):
    src, _ = hf_checkpoints("qwen3_5")
    dst = _copy(src, tmp_path / "bad")
    data = (dst / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read safetensors file .*model.safetensors"):
        load_model(dst)
    (dst / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="cannot read safetensors file"):
        load_model(dst)
    (dst / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors or model.safetensors.index.json"):
        load_model(dst)


_MEMORY_PROBE = textwrap.dedent("""
    import sys, threading, time, torch
    from gdn.export.checkpoint import load_model

    def anon_kb():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

    peak, done = [0], [False]
    def watch():
        while not done[0]:
            peak[0] = max(peak[0], anon_kb())
            time.sleep(0.001)
    base = anon_kb()
    t = threading.Thread(target=watch); t.start()
    model = load_model(sys.argv[1], max_seq_len=16, dtype=getattr(torch, sys.argv[2]))
    done[0] = True; t.join()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(weights, (max(peak[0], anon_kb()) - base) * 1024)
""")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_peak_host_memory_is_one_copy_of_the_weights(dtype, tmp_path_factory):
    """A ~350 MB fp32 checkpoint: anonymous memory during loading peaks near one copy in the target dtype
    (memory-mapped file pages are page cache, not counted)."""
    path = tmp_path_factory.getbasetemp() / "big-checkpoint"
    if not path.exists():
        path.mkdir()
        cfg = json.loads((DEFAULT_MODEL / "config.json").read_text())
        cfg.update(hidden_size=1024, vocab_size=16000, num_hidden_layers=4, layer_types=[LINEAR] * 3 + [FULL],
                   num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False,
                   num_experts=8, moe_intermediate_size=512, shared_expert_intermediate_size=512,
                   linear_num_key_heads=2, linear_num_value_heads=8, linear_key_head_dim=64, linear_value_head_dim=64)
        (path / "config.json").write_text(json.dumps(cfg))
        from gdn.export.checkpoint import recipes
        from gdn.export.config import parse_config
        big = {p.key: torch.randn(p.shape) * 0.02 for ps in recipes(parse_config(cfg), set()).values() for p in ps}
        save_file(big, path / "model.safetensors")
        del big
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(path), dtype], check=True, capture_output=True,
                         text=True).stdout.split()
    weights, peak = int(out[0]), int(out[1])
    assert weights > (150e6 if dtype == "float32" else 75e6)
    # one copy plus transients (at most the largest source tensor, 65 MB in fp32, while it is converted)
    assert peak < 1.1 * weights + 70e6, f"peak {peak / 1e6:.0f} MB for {weights / 1e6:.0f} MB of weights"
