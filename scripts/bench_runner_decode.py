"""Decode tokens/s of the runner with and without the CUDA graph (GPU).

Models: the bundled tiny default model (fp32) and a Qwen3.5-2B-shaped random-weight model (bf16), run
as eager GDNForCausalLM behind the Methods interface (kernels="ops"); with --artifact, also a gdn-export
artifact through Runner.load. Each row: the median over repeats of (generated - 1) / time from the first
token to the last, which includes the per-token host read of the new id (the streaming cost).
Usage: python scripts/bench_runner_decode.py [--artifact model.pte ...] [--new-tokens N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from runner_eager import DEFAULT_MODEL, EagerMethods, load_eager, metadata  # noqa: E402

from gdn.export.config import parse_config  # noqa: E402
from gdn.export.model import GDNForCausalLM  # noqa: E402
from gdn.runner import Runner, SamplingParams  # noqa: E402

# Qwen3.5-2B-like shape (our reading of the family: 24 layers, 3 GDN : 1 gated attention, tied embeddings)
SHAPE_2B = dict(
    model_type="qwen3_5_text", vocab_size=248320, hidden_size=2048, num_hidden_layers=24,
    layer_types=["linear_attention"] * 3 + ["full_attention"], full_attention_interval=4,
    num_attention_heads=8, num_key_value_heads=2, head_dim=256, linear_num_key_heads=16,
    linear_num_value_heads=16, linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4,
    intermediate_size=6144, tie_word_embeddings=True, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
)


def random_2b(max_seq_len: int) -> GDNForCausalLM:
    raw = dict(SHAPE_2B, layer_types=SHAPE_2B["layer_types"] * 6)
    cfg = parse_config(raw)
    with torch.device("cuda"):
        model = GDNForCausalLM(cfg, max_seq_len, torch.bfloat16, torch.float32, kernels="ops")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.data = p.data.to(torch.bfloat16)  # the constructor sizes parameters in fp32; the loader would cast
            if name.endswith("A_log"):
                p.uniform_(0.0, 2.0)
            else:
                p.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


def bench(runner: Runner, prompt_len: int, new_tokens: int, repeats: int) -> tuple[float, dict]:
    vocab = runner.vocab_size
    greedy = SamplingParams(temperature=0.0)
    runner.generate([random.randrange(vocab) for _ in range(prompt_len)], max_new_tokens=16, sampling=greedy)
    rates = []
    for _ in range(repeats):
        prompt = [random.randrange(vocab) for _ in range(prompt_len)]
        r = runner.generate(prompt, max_new_tokens=new_tokens, sampling=greedy)
        assert len(r.generated_ids) == new_tokens, r.stop_reason
        rates.append(r.timings.decode_tokens_per_s)
    return statistics.median(rates), runner.graph_counters


def rows_for(name: str, methods, meta, prompt_len, new_tokens, repeats) -> list[dict]:
    out = []
    for graph in (False, True):
        runner = Runner(methods, meta, None, cuda_graph=graph)
        t0 = time.perf_counter()
        rate, counters = bench(runner, prompt_len, new_tokens, repeats)
        out.append({"model": name, "cuda_graph": graph, "decode_tok_s": round(rate, 1), "counters": counters,
                    "bench_s": round(time.perf_counter() - t0, 1)})
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", action="append", default=[])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-2b", action="store_true")
    args = ap.parse_args()
    print(f"device: {torch.cuda.get_device_name(0)} | torch {torch.__version__}", flush=True)
    rows = []
    model, methods = load_eager(DEFAULT_MODEL, 512, device="cuda", kernels="ops")
    meta = metadata(model, 512, 64, None, stop_token_ids=[], eos_token_ids=[])
    rows += rows_for("tiny default model fp32 (eager module)", methods, meta, 16, args.new_tokens, args.repeats)
    del model, methods
    if not args.skip_2b:
        model = random_2b(1024)
        n_params = sum(p.numel() for p in model.parameters())
        meta = metadata(model, 1024, 64, None, stop_token_ids=[], eos_token_ids=[], dtype="bfloat16")
        rows += rows_for(f"Qwen3.5-2B-shaped bf16 random ({n_params / 1e9:.2f}B params, eager module)",
                         EagerMethods(model, "cuda"), meta, 16, args.new_tokens, args.repeats)
        del model
    for path in args.artifact:
        for graph in (False, True):
            runner = Runner.load(path, cuda_graph=graph)
            rate, counters = bench(runner, 16, args.new_tokens, args.repeats)
            rows.append({"model": f"artifact {path} ({runner.meta.dtype})", "cuda_graph": graph,
                         "decode_tok_s": round(rate, 1), "counters": counters})
            print(json.dumps(rows[-1]), flush=True)
            runner.close()
    print("| model | CUDA graph | decode tok/s (median) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {'on' if r['cuda_graph'] else 'off'} | {r['decode_tok_s']} |")


if __name__ == "__main__":
    main()
