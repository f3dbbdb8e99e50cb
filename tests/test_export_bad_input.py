"""gdn-export on bad input: one line naming the problem, exit code 2, nothing left in the target folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch


def gdn_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gdn.export.cli", *args], capture_output=True, text=True, timeout=300)


def assert_refused(run: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2; the last line is the only error line; no traceback (stage lines before it are progress)."""
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == [lines[-1]] and lines[-1].startswith("gdn-export: error: "), run.stderr
    assert "Traceback" not in run.stderr
    for w in words:
        assert w in lines[-1], lines[-1]


def test_unknown_layout(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(gdn_export(str(out / "m.pte"), "--checkpoint", str(ckpt), "--backend", "cpu"), "'llama'")
    assert list(out.iterdir()) == []


def test_missing_checkpoint_and_weights(tmp_path, hf_checkpoints):
    assert_refused(gdn_export(str(tmp_path / "m.pte"), "--checkpoint", str(tmp_path / "nope"), "--backend", "cpu"),
                   str(tmp_path / "nope"))
    src, _ = hf_checkpoints("qwen3_5")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(src / "config.json", ckpt / "config.json")
    assert_refused(gdn_export(str(tmp_path / "m.pte"), "--checkpoint", str(ckpt), "--backend", "cpu"), "model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_max_seq_len_beyond_model(tmp_path, hf_checkpoints):
    src, _ = hf_checkpoints("qwen3_5")
    limit = json.loads((src / "config.json").read_text())["max_position_embeddings"]
    run = gdn_export(str(tmp_path / "m.pte"), "--checkpoint", str(src), "--backend", "cpu", "--max-seq-len", str(limit + 1))
    assert_refused(run, str(limit + 1), str(limit), "max_position_embeddings")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_max_seq_len_beyond_gpu_memory(tmp_path, hf_checkpoints):
    """A KV cache that cannot fit the GPU is refused before any stage runs (a config with a huge limit)."""
    src, _ = hf_checkpoints("qwen3_5")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["max_position_embeddings"] = 1 << 40
    (ckpt / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    out.mkdir()
    run = gdn_export(str(out / "m.pte"), "--checkpoint", str(ckpt), "--backend", "cuda", "--max-seq-len", str(1 << 39))
    assert_refused(run, str(1 << 39), "GiB of GPU memory")
    assert list(out.iterdir()) == []


def test_prefill_chunk_beyond_reference_bound(tmp_path, hf_checkpoints):
    src, _ = hf_checkpoints("qwen3_5")
    run = gdn_export(str(tmp_path / "m.pte"), "--checkpoint", str(src), "--backend", "cpu", "--max-prefill-chunk", "65")
    assert_refused(run, "65", "64")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu(tmp_path, hf_checkpoints):
    src, _ = hf_checkpoints("qwen3_5")
    assert_refused(gdn_export(str(tmp_path / "m.pte"), "--checkpoint", str(src), "--backend", "cuda"), "GPU")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # lowers a program
def test_out_of_disk_leaves_nothing(tmp_path):
    """A real write failure: the file-size limit (RLIMIT_FSIZE) makes the kernel refuse bytes past 4 KiB."""
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from torch.export import export
        from gdn.export.lower import lower_cpu
        from gdn.export.artifact import write_artifact
        from gdn.export.errors import ExportError
        ep = export(torch.nn.Linear(64, 64), (torch.randn(1, 64),), strict=True)
        program = lower_cpu({{"forward": ep}}, {{"gdn.metadata": b"{{}}"}})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            write_artifact(program, __import__("pathlib").Path({str(tmp_path / "m.pte")!r}), with_data=False)
        except ExportError as e:
            print("REFUSED", e)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "REFUSED out of disk space writing" in run.stdout, run.stdout + run.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags,words", [
    (["--quant", "int3"], ["'int3'", "none, int8, int4"]),
    (["--quant", "int4", "--group-size", "128"], ["128", "192", "input dimension", "weight 'embed_tokens'"]),
    (["--quant", "int8", "--dtype", "fp32"], ["--quant int8", "--dtype fp32"]),
    (["--quant", "int4", "--group-size", "0"], ["--group-size", "0"]),
    (["--group-size", "64"], ["--group-size 64", "--quant"]),
])
def test_bad_quantization_options(tmp_path, flags, words):
    """Refused in the plan, before any stage: the bundled model's input dims are all 192."""
    run = gdn_export(str(tmp_path / "m.pte"), "--backend", "cpu", *flags)
    assert_refused(run, *words)
    assert "load weights" not in run.stderr and list(tmp_path.iterdir()) == []


def test_cuda_quantization_takes_power_of_two_groups(tmp_path):
    """The CUDA ops quantize the bundled MoE model; a group size that divides every input dim (192) but is no power
    of two is refused for them (their kernels step in whole power-of-two groups) and accepted by the reference
    (the same check gdn-export runs in its plan; called directly, as this machine may have no GPU)."""
    from gdn.export.config import load_config
    from gdn.export.errors import ExportError
    from gdn.export.pipeline import DEFAULT_CHECKPOINT, ExportOptions, resolve_quant

    cfg = load_config(DEFAULT_CHECKPOINT)
    assert any(cfg.moe_layers)
    assert resolve_quant(ExportOptions(output=tmp_path / "m.pte", quant="int4"), cfg, "ops").bits == 4
    opts = ExportOptions(output=tmp_path / "m.pte", quant="int4", group_size=48)
    with pytest.raises(ExportError, match="--group-size 48: the CUDA kernels take power-of-two group sizes"):
        resolve_quant(opts, cfg, "ops")
    assert resolve_quant(opts, cfg, "reference").group == 48
