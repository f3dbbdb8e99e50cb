import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

# Tests marked `interpret` run Triton kernels on CPU tensors through Triton's interpreter, which has to be
# chosen (TRITON_INTERPRET=1) before any kernel is defined, for the whole process. torch.export of the
# triton_ops needs the real, compiled kernels, so scripts/test.sh runs the two groups in two processes.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    gpu = torch.cuda.is_available()
    no_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU")
    no_interp = pytest.mark.skip(reason="Triton on CPU tensors: run with TRITON_INTERPRET=1 (scripts/test.sh does)")
    on_gpu = pytest.mark.skip(reason="interpreter test; the GPU runs the real shapes")
    for item in items:
        if "cpu_artifacts" in getattr(item, "fixturenames", ()) and "slow" not in item.keywords:
            raise pytest.UsageError(f"{item.nodeid} runs an exported artifact: mark it slow")
        if "cuda" in item.keywords and not gpu:
            item.add_marker(no_gpu)
        if "interpret" in item.keywords:
            if gpu:
                item.add_marker(on_gpu)
            elif not INTERPRET:
                item.add_marker(no_interp)


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """name -> (directory of a saved tiny transformers checkpoint, the transformers model)."""
    from hf_tiny import save

    cache = {}

    def get(name: str):
        if name not in cache:
            path = tmp_path_factory.mktemp(name)
            cache[name] = (path, save(name, path))
        return cache[name]

    return get


# The CPU exports are the slowest work in CI (ExecuTorch's XNNPACK lowering of a small model takes minutes on two
# cores), so each is made once per session, all side by side.
@pytest.fixture(scope="session")
def cpu_artifacts(hf_checkpoints, tmp_path_factory):
    """name -> (checkpoint, model.pte), made by `gdn-export` processes run side by side on first use:
    "qwen3_5" (its tiny checkpoint given a real tokenizer, chat template and generation config) and
    "qwen3_next" at max_seq_len CPU_MAX_SEQ; "default", the bundled default model (qwen3_5_moe, the MoE family's
    CPU artifact), at DEFAULT_MAX_SEQ with prefill chunk DEFAULT_CHUNK."""
    from cpu_exports import CPU_MAX_SEQ, DEFAULT_CHUNK, DEFAULT_MAX_SEQ, add_tokenizer
    from runner_eager import DEFAULT_MODEL

    out, jobs = {}, {}
    for name in ("default", "qwen3_5", "qwen3_next"):
        folder = tmp_path_factory.mktemp(f"cpu_{name}")
        if name == "default":  # no --checkpoint: gdn-export's own default, as in the quickstart
            ckpt, flags = DEFAULT_MODEL, ["--max-seq-len", str(DEFAULT_MAX_SEQ), "--max-prefill-chunk", str(DEFAULT_CHUNK)]
        else:
            ckpt = hf_checkpoints(name)[0]
            if name == "qwen3_5":
                ckpt = shutil.copytree(ckpt, folder / "ckpt")
                add_tokenizer(ckpt, json.loads((ckpt / "config.json").read_text())["vocab_size"])
            flags = ["--checkpoint", str(ckpt), "--max-seq-len", str(CPU_MAX_SEQ)]
        pte = folder / "model.pte"
        cmd = [sys.executable, "-m", "gdn.export.cli", str(pte), "--backend", "cpu", *flags]
        jobs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out[name] = (ckpt, pte)
    try:
        for name, job in jobs.items():
            _, err = job.communicate(timeout=1200)
            assert job.returncode == 0, f"{name}: {err[-2000:]}"
            for stage in ("load weights", "export prefill", "export decode", "lower and compile", "write"):
                assert stage in err, f"{name}: no {stage!r} in the progress lines"
    finally:
        for job in jobs.values():
            job.kill()
    return out
