"""gdn-bench's random-weight source (scripts/gdn_bench.py: RandomWeights), which the export's loader reads
like a checkpoint when a shape's files would not fit the disk: deterministic per (seed, tensor name), the
Hugging Face layout of a config.json and transformers' init, read tensor by tensor; an export from it, and
gdn-bench's bad input (one line, exit 2). The export path for real checkpoints is unchanged (the last tests)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import gdn_bench  # noqa: E402
from gdn_bench import RandomWeights  # noqa: E402

from gdn.export.checkpoint import IGNORED_PREFIXES, CheckpointError, SafetensorsDir, load_model  # noqa: E402
from gdn.export.config import load_config  # noqa: E402
from gdn.export.pipeline import DEFAULT_CHECKPOINT, ExportOptions, plan, run_export  # noqa: E402

FAMILIES = ["qwen3_next", "qwen3_next_mlp_only", "qwen3_5_tied", "qwen3_5_moe", "qwen3_5_moe_vl"]


def config_only(folder: Path, source: Path = DEFAULT_CHECKPOINT, **changes) -> Path:
    """A copy of `source`'s config.json (with `changes`) and tokenizer files, without weights."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = json.loads((source / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, **changes}))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (source / name).exists():
            shutil.copy(source / name, folder / name)
    return folder


def test_same_seed_and_name_give_the_same_tensor_and_others_differ():
    a, b, other = RandomWeights(DEFAULT_CHECKPOINT, 7), RandomWeights(DEFAULT_CHECKPOINT, 7), RandomWeights(DEFAULT_CHECKPOINT, 8)
    key = "model.layers.0.linear_attn.in_proj_qkv.weight"
    same_shape = "model.layers.1.linear_attn.in_proj_qkv.weight"
    assert a.shape(key) == a.shape(same_shape)
    assert torch.equal(a.get(key), b.get(key))  # another object, the same (seed, name)
    assert torch.equal(a.get(key), a.get(key))  # asked twice
    assert not torch.equal(a.get(key), a.get(same_shape))
    assert not torch.equal(a.get(key), other.get(key))
    for k in ("model.layers.0.linear_attn.A_log", "model.layers.0.mlp.experts.gate_up_proj"):
        assert torch.equal(a.get(k), b.get(k)) and not torch.equal(a.get(k), other.get(k))


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def test_another_process_makes_the_same_tensors():
    """Two runs export identical weights: a fresh interpreter with another hash seed (Python's str hash is
    salted per process) makes the same bytes for the same (seed, name)."""
    keys = ["model.embed_tokens.weight", "model.layers.0.linear_attn.A_log", "model.layers.2.mlp.experts.down_proj"]
    code = (f"import sys; sys.path.insert(0, {str(SCRIPTS)!r}); import hashlib, torch, gdn_bench; "
            f"src = gdn_bench.RandomWeights(gdn_bench.DEFAULT_CHECKPOINT, 11); "
            f"print(*[hashlib.sha256(src.get(k).contiguous().view(torch.uint8).numpy().tobytes()).hexdigest() "
            f"for k in {keys!r}])")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    src = RandomWeights(DEFAULT_CHECKPOINT, 11)
    assert out.split() == [digest(src.get(k)) for k in keys]


@pytest.mark.parametrize("case", FAMILIES)
def test_layout_is_the_saved_checkpoints(case, hf_checkpoints):
    """Names, shapes and dtypes of what transformers saves for the same config (its experts per expert on disk;
    ours are transformers' fused in-memory tensors, the loader's other expert layout: the same numbers)."""
    path, _ = hf_checkpoints(case)
    saved, ours = SafetensorsDir(path), RandomWeights(path)
    try:
        plain = {k for k in saved.keys() if ".experts." not in k}
        assert plain == {k for k in ours.keys() if ".experts." not in k}
        for k in plain:
            assert ours.shape(k) == saved.shape(k), k
            assert ours.get(k).dtype == saved.get(k).dtype, k
        fused = {k for k in ours.keys() if ".experts." in k}
        for k in fused:  # [E, 2I, H] gate_up_proj, [E, H, I] down_proj
            prefix, leaf = k.rsplit(".experts.", 1)
            E = ours.shape(k)[0]
            parts = ["gate_proj", "up_proj"] if leaf == "gate_up_proj" else ["down_proj"]
            rows = sum(saved.shape(f"{prefix}.experts.0.{p}.weight")[0] for p in parts)
            assert ours.shape(k) == (E, rows, saved.shape(f"{prefix}.experts.0.{parts[0]}.weight")[1])
            assert f"{prefix}.experts.{E - 1}.{parts[0]}.weight" in saved.keys()
        per_expert = {k for k in saved.keys() if ".experts." in k}
        assert bool(per_expert) == bool(fused)
    finally:
        saved.close()


@pytest.mark.parametrize("case", ["qwen3_next", "qwen3_5_tied", "qwen3_5_moe"])
def test_values_follow_transformers_init(case, tmp_path):
    """The constants are transformers' own init of the same config (zero-centred norms, the gated norm at 1,
    dt_bias 1); A_log in [log 0.01, log 16]; every other weight normal(0, initializer_range)."""
    import transformers

    from hf_tiny import CASES

    cls_name, cfg_name, kwargs, _ = CASES[case]
    torch.manual_seed(0)
    hf = getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**kwargs))
    hf.save_pretrained(tmp_path)
    ours = RandomWeights(tmp_path, seed=1)
    params = dict(hf.named_parameters())
    for key, spec in ours.layout.items():
        t = ours.get(key).float()
        assert torch.isfinite(t).all(), key
        if spec.init in ("zeros", "ones"):
            assert torch.equal(t, params[key].detach()), key
        elif spec.init == "a_log":
            assert key.endswith("A_log") and t.min() >= torch.tensor(0.01).log() and t.max() <= torch.tensor(16.0).log()
        elif t.numel() >= 1000:
            assert spec.std == hf.config.initializer_range
            assert abs(t.std().item() - spec.std) < 0.1 * spec.std and abs(t.mean().item()) < 0.1 * spec.std, key
    inits = {s.init for s in ours.layout.values()}
    assert inits == {"normal", "zeros", "ones", "a_log"}


class Recording(RandomWeights):
    """Records each request and how many tensors it handed out are still alive when the next is asked for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requested, self.alive, self.most_alive = [], weakref.WeakSet(), 0

    def get(self, key):
        self.most_alive = max(self.most_alive, len(self.alive))
        self.requested.append(key)
        t = super().get(key)
        self.alive.add(t)
        return t


@pytest.mark.parametrize("case", FAMILIES)
def test_loader_reads_the_source_tensor_by_tensor(case, hf_checkpoints):
    """Each tensor is asked for once and let go before the next: the source never holds more than the
    tensor being loaded, and holds nothing itself."""
    path, _ = hf_checkpoints(case)
    src = Recording(path, seed=0)
    model = load_model(path, 16, weights=src)
    assert src.most_alive == 0
    assert len(src.requested) == len(set(src.requested))
    assert set(src.requested) == {k for k in src.keys() if not k.startswith(IGNORED_PREFIXES)}
    assert not any(isinstance(v, torch.Tensor) for v in vars(src).values())
    again = load_model(path, 16, weights=RandomWeights(path, seed=0))
    for (name, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), name


def test_forty_layers_in_bf16_stay_finite(tmp_path):
    """The bundled model's shape stretched to 40 layers (the full 35B-A3B's depth), bf16 weights and
    activations: prefill of 17 tokens, then 3 one-token steps; logits finite and not flat."""
    layers = (["linear_attention"] * 3 + ["full_attention"]) * 10
    folder = config_only(tmp_path / "deep", num_hidden_layers=40, layer_types=layers)
    model = load_model(folder, 32, dtype=torch.bfloat16, weights=RandomWeights(folder, 0))
    ids = torch.randint(3, 4096, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = [model.prefill(ids[:, :17], torch.arange(17))]
        logits += [model(ids[:, t : t + 1], torch.tensor([t])) for t in range(17, 20)]
    for x in logits:
        assert torch.isfinite(x.float()).all() and x.float().std() > 0


def test_the_full_35b_a3b_shape_comes_from_its_config_alone(tmp_path):
    """qwen3.5-35b-a3b: config.json only (no weights), always random; its layout on the meta device is the
    full model's (40 layers, 256 experts, top-8, vocab 248,320; about 34.7 billion parameters)."""
    src = gdn_bench.resolve_model("qwen3.5-35b-a3b", None)
    assert src.seed == 0 and src.folder is None
    folder = gdn_bench.make_config("qwen3.5-35b-a3b", tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    cfg = load_config(folder)
    assert (cfg.num_hidden_layers, cfg.num_experts, cfg.num_experts_per_tok, cfg.vocab_size) == (40, 256, 8, 248320)
    assert cfg.layer_types.count("full_attention") == 10 and all(cfg.moe_layers)
    layout = RandomWeights(folder).layout
    assert 34e9 < sum(torch.Size(s.shape).numel() for s in layout.values()) < 36e9
    assert {s.dtype for s in layout.values()} == {torch.bfloat16}
    assert layout["model.layers.39.mlp.experts.gate_up_proj"].shape == (256, 1024, 2048)


@pytest.mark.parametrize("case", ["qwen3_5_moe", "qwen3_5_tied"])
def test_quantized_decode_bytes_count_the_models_packed_weights_and_scales(case, hf_checkpoints):
    """The memory limit of an int4 artifact: the bytes of the loaded model's own qweight and scales (k of E
    experts, one embedding row), conv weights in bf16; norms, A_log and dt_bias left out as in decode_bytes."""
    from gdn.export.quant import QuantScheme

    path, _ = hf_checkpoints(case)
    scheme = QuantScheme(4, 4)
    model = load_model(path, 8, torch.bfloat16, quant=scheme, weights=RandomWeights(path))
    cfg = model.cfg
    routed = cfg.num_experts_per_tok / max(cfg.num_experts, 1)
    want = 0
    for name, p in model.named_parameters():
        owner, leaf = name.rsplit(".", 1)
        if name.endswith("norm.weight") or leaf in ("A_log", "dt_bias"):
            continue
        size = p.numel() * p.element_size()
        if owner == "embed_tokens":
            size //= cfg.vocab_size  # one row
        want += size * (routed if owner.rsplit(".", 1)[-1] in ("gate_up", "down") else 1)
    if cfg.tie_word_embeddings:  # one table, stored once: lm_head reads it whole as well
        q = model.embed_tokens
        want += q.qweight.numel() * q.qweight.element_size() + q.scales.numel() * q.scales.element_size()
    quant = scheme.to_metadata(model)
    got = gdn_bench.decode_bytes(json.loads(json.dumps(cfg.to_dict())), "bfloat16", pos=0, state=0, quant=quant)
    assert got == want


def bench_error(capsys, *argv) -> str:
    assert gdn_bench.main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gdn-bench: error: "), err
    return err[0]


def test_bench_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert "unknown model 'qwen9'" in bench_error(capsys, "--models", "tiny,qwen9", "--out", str(tmp_path))
    folder = config_only(tmp_path / "shape")
    err = bench_error(capsys, "--models", str(folder), "--out", str(tmp_path))
    assert str(folder) in err and "no weights" in err and "--random-weights" in err
    assert "'int3'" in bench_error(capsys, "--models", "tiny", "--quant", "int3")
    assert "--dtype fp32" in bench_error(capsys, "--models", "tiny", "--quant", "int4", "--dtype", "fp32")
    assert "--group-size 3" in bench_error(capsys, "--models", "tiny", "--quant", "int4", "--group-size", "3")
    odd = config_only(tmp_path / "odd", architectures=["NoSuchModel"])
    assert "NoSuchModel" in bench_error(capsys, "--models", str(odd), "--random-weights", "0", "--out", str(tmp_path))
    assert not any(tmp_path.glob("*.pte"))


def test_bench_models_resolve_to_their_weight_source(tmp_path):
    folder = config_only(tmp_path / "shape")
    assert gdn_bench.resolve_model(str(folder), 5) == gdn_bench.ModelSource(str(folder), folder, 5)
    assert gdn_bench.resolve_model(str(folder), 5).label == "shape-random5"
    assert gdn_bench.resolve_model("tiny", None) == gdn_bench.ModelSource("tiny", DEFAULT_CHECKPOINT, None)
    assert gdn_bench.resolve_model("tiny", 2).label == "tiny-random2"
    assert gdn_bench.resolve_model("qwen3.5-2b", None).seed is None  # its bf16 files fit: a real checkpoint
    assert gdn_bench.resolve_model(str(DEFAULT_CHECKPOINT), None).seed is None
    build = gdn_bench.Build("qwen3.5-35b-a3b-random0", folder, "bf16", "int4", None)
    assert build.name(4416) == "qwen3.5-35b-a3b-random0-bf16-int4-s4416.pte"


def test_real_checkpoints_still_need_their_weights(tmp_path):
    """Without a weight source, a folder without safetensors is refused before any work, as before."""
    folder = config_only(tmp_path / "shape")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        plan(ExportOptions(output=tmp_path / "m.pte", checkpoint=folder, backend="cpu"))
    assert plan(ExportOptions(output=tmp_path / "m.pte", checkpoint=folder, backend="cpu",
                              weights=RandomWeights(folder))).cfg == load_config(DEFAULT_CHECKPOINT)


@pytest.mark.slow  # a CPU export
def test_export_from_random_weights_runs(tmp_path):
    """The bundled default model's config and tokenizer, no weights: exported on the CPU with random weights,
    then run. The artifact's prefill logits (two chunks) are the eager model's from the same seed, within 4x
    the eager float32 error against float64; the Runner generates from text through the artifact's tokenizer."""
    from gdn.runner import Runner, SamplingParams
    from gdn.runner.artifact import Artifact
    from gdn.runner.methods import load_methods

    folder = config_only(tmp_path / "shape")
    out = tmp_path / "random.pte"
    result = run_export(ExportOptions(output=out, checkpoint=folder, backend="cpu", max_seq_len=64,
                                      max_prefill_chunk=16, weights=RandomWeights(folder, seed=3)))
    assert result.path == out and not any(folder.glob("*.safetensors*"))
    methods = load_methods(Artifact.open(out))
    eager = load_model(folder, 64, weights=RandomWeights(folder, seed=3))
    exact = load_model(folder, 64, torch.float64, torch.float64, weights=RandomWeights(folder, seed=3))
    prompt = torch.randint(3, 4096, (1, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref64, ref32 = exact.prefill(prompt, torch.arange(23)), eager.prefill(prompt, torch.arange(23))
    methods.prefill(prompt[:, :16], torch.arange(16))
    got = methods.prefill(prompt[:, 16:], torch.arange(16, 23))
    err, err32 = (got.double() - ref64).abs().max().item(), (ref32.double() - ref64).abs().max().item()
    assert torch.isfinite(got).all() and err <= 4 * err32 + 1e-5, (err, err32)
    methods.close()
    runner = Runner.load(out)
    reply = runner.generate("The trait is", max_new_tokens=12, sampling=SamplingParams(temperature=0.0))
    assert 1 <= len(reply.generated_ids) <= 12 and reply.stop_reason in ("stop_token", "max_new_tokens")
    runner.close()
