"""Export time, artifact size and load footprint for a Qwen3.5-2B-shaped random-weight checkpoint (CUDA).

Writes the checkpoint (HF layout, bf16 safetensors) into a scratch folder, exports it with gdn-export's
pipeline, loads both methods and reports the GPU memory that loading took. Usage:
    python scripts/bench_export.py SCRATCH_DIR [--autotune decode|all|none] [--max-seq-len N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from gdn.export.checkpoint import recipes
from gdn.export.config import parse_config
from gdn.export.pipeline import ExportOptions, run_export
from gdn.export.progress import Progress

QWEN35_2B = {
    "model_type": "qwen3_5_text", "vocab_size": 248320, "hidden_size": 2048, "num_hidden_layers": 24,
    "full_attention_interval": 4, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256,
    "linear_num_key_heads": 16, "linear_num_value_heads": 16, "linear_key_head_dim": 128,
    "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "intermediate_size": 6144,
    "tie_word_embeddings": True, "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
    "eos_token_id": 248044, "torch_dtype": "bfloat16",
}


def write_checkpoint(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = parse_config(QWEN35_2B)
    tensors = {}
    for pieces in recipes(cfg, set()).values():
        for p in pieces:
            t = torch.randn(p.shape, dtype=torch.bfloat16, device="cuda") * 0.02
            if p.key.endswith("A_log"):
                t = torch.empty(p.shape, device="cuda").uniform_(0.5, 8).log().bfloat16()
            tensors[p.key] = t.cpu()
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(QWEN35_2B))
    return sum(t.numel() * t.element_size() for t in tensors.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scratch", type=Path)
    ap.add_argument("--autotune", choices=["decode", "all", "none"], default="decode")
    ap.add_argument("--max-seq-len", type=int, default=4096)
    args = ap.parse_args()
    t0 = time.perf_counter()
    nbytes = write_checkpoint(args.scratch / "ckpt")
    print(f"checkpoint: {nbytes / 2**30:.2f} GiB of bf16 weights written in {time.perf_counter() - t0:.1f}s", flush=True)
    opts = ExportOptions(output=args.scratch / "model.pte", checkpoint=args.scratch / "ckpt", backend="cuda",
                         dtype="bf16", max_seq_len=args.max_seq_len, autotune=args.autotune)
    t0 = time.perf_counter()
    res = run_export(opts, Progress())
    total = time.perf_counter() - t0
    print(f"export: {total:.1f}s total; stages " + ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items()))
    print("sizes: " + ", ".join(f"{k} {v / 2**30:.3f} GiB" for k, v in res.sizes.items()))
    print(f"device: {torch.cuda.get_device_name(0)}; kernels {res.kernels}; autotune {args.autotune}; "
          f"max_prefill_chunk {res.meta.max_prefill_chunk}")

    from gdn.runner.artifact import Artifact
    from gdn.runner.methods import load_methods

    torch.cuda.synchronize()
    free0 = torch.cuda.mem_get_info()[0]
    t0 = time.perf_counter()
    methods = load_methods(Artifact.open(res.path))
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    used = free0 - torch.cuda.mem_get_info()[0]
    pre, dec = methods.constants("prefill"), methods.constants("decode")
    shared = all(pre[k].data_ptr() == dec[k].data_ptr() for k in pre)
    print(f"load: {load_s:.1f}s; GPU memory used {used / 2**30:.3f} GiB for {nbytes / 2**30:.3f} GiB of weights; "
          f"constants shared {shared}")
    prompt = torch.randint(0, 248320, (1, 100), device="cuda")
    logits = methods.prefill(prompt, torch.arange(100, device="cuda"))
    logits = methods.decode(logits.argmax(-1).view(1, 1), torch.tensor([100], device="cuda"))
    print(f"prefill 100 + 1 decode step ran: logits {tuple(logits.shape)} finite {bool(logits.isfinite().all())}")


if __name__ == "__main__":
    main()
