"""bench_cpu: the CPU path on two cores, in one run: the bundled default model's export time, time to first token
for 16- and 128-token prompts, decode tokens/s, and the peer: the same checkpoint in transformers, eager, fp32,
on the same cores. Prints a table and writes bench_cpu.json.

    python scripts/bench_cpu.py [--out DIR] [--threads 2] [--gdn-threads 1] [--new-tokens 128] [--reuse]

Wall-clock medians (time.perf_counter). Ours: `Runner.generate` from a fresh sequence, greedy; time to first
token is the runner's own (prefill in chunks of the artifact's bound, the first sampling and its read-back);
decode tok/s is (new tokens - 1) over the time from the first token to the last. The peer: `generate` with
do_sample=False; time to first token is one new token's `generate`, decode tok/s (n - 1) tokens over the extra
time of n. --reuse takes an artifact already in DIR (the export time recorded when it was made). --gdn-threads sizes
the ExecuTorch runtime's thread pool (runner/methods.py, $GDN_CPU_THREADS; --threads is the peer's torch threads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from gdn.export.pipeline import DEFAULT_CHECKPOINT, ExportOptions, run_export
from gdn.export.progress import Progress
from gdn.runner import Runner, SamplingParams
from gdn.runner.methods import CPU_THREADS_ENV

PROMPTS = (16, 128)
GREEDY = SamplingParams(temperature=0.0)


def export(folder: Path, reuse: bool) -> tuple[Path, float, bool]:
    out, recorded = folder / "model.pte", folder / "model.export_s"
    if reuse and out.exists() and recorded.exists():
        return out, float(recorded.read_text()), True
    t0 = time.perf_counter()
    run_export(ExportOptions(output=out, backend="cpu"), Progress())
    seconds = time.perf_counter() - t0
    recorded.write_text(f"{seconds:.1f}\n")
    return out, seconds, False


def bench_ours(pte: Path, ids: list[int], new_tokens: int, reps: int) -> dict:
    t0 = time.perf_counter()
    runner = Runner.load(pte)
    res = {"load_s": time.perf_counter() - t0, "max_seq_len": runner.max_seq_len, "prefill_chunk": runner.prefill_chunk}
    runner.generate(ids[:16], max_new_tokens=4, sampling=GREEDY)  # warm-up
    for n in PROMPTS:
        runs = [runner.generate(ids[:n], max_new_tokens=1, sampling=GREEDY).timings.prefill_s for _ in range(reps)]
        res[f"ttft_ms_{n}"] = statistics.median(runs) * 1e3
    # a stop token may end a run early: each run's rate is over the tokens it made (recorded)
    runs = [runner.generate(ids[:16], max_new_tokens=new_tokens, sampling=GREEDY).timings for _ in range(3)]
    res["decode_tok_s"] = statistics.median(t.decode_tokens_per_s for t in runs)
    res["decode_tokens"] = [t.generated_tokens for t in runs]
    runner.close()
    return res


def bench_peer(ids: list[int], new_tokens: int, reps: int) -> dict:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(DEFAULT_CHECKPOINT, dtype=torch.float32).eval()
    res = {"name": f"transformers {transformers.__version__}, eager, fp32"}

    def gen(prompt: list[int], n: int) -> float:
        x = torch.tensor([prompt])
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
        return time.perf_counter() - t

    gen(ids[:16], 4)  # warm-up
    for n in PROMPTS:
        res[f"ttft_ms_{n}"] = statistics.median(gen(ids[:n], 1) for _ in range(reps)) * 1e3
    one = statistics.median(gen(ids[:16], 1) for _ in range(reps))
    many = statistics.median(gen(ids[:16], new_tokens) for _ in range(3))
    res["decode_tok_s"] = (new_tokens - 1) / (many - one)
    return res


def table(ours: dict, peer: dict) -> str:
    def row(name: str, r: dict, export_s: str) -> str:
        dec = f"{r['decode_tok_s']:.0f}" if r.get("decode_tok_s") else "n/a"
        return f"| {name} | {export_s} | {r['ttft_ms_16']:.1f} | {r['ttft_ms_128']:.1f} | {dec} |"

    head = ("| | export s | time to first token, 16 tokens (ms) | 128 tokens (ms) | decode tok/s |\n"
            "|---|---|---|---|---|")
    ours_row = row("gdn (ExecuTorch, XNNPACK)", ours, f"{ours['export_s']:.1f}")
    return "\n".join([head, ours_row, row(peer["name"], peer, "")])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench_cpu"))
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the peer")
    ap.add_argument("--gdn-threads", type=int, default=1, help="threads of the ExecuTorch runtime's pool (ours)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--reuse", action="store_true", help="reuse DIR/model.pte and its recorded export time")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    os.environ[CPU_THREADS_ENV] = str(args.gdn_threads)
    pte, export_s, reused = export(args.out, args.reuse)
    ids = torch.randint(3, 4000, (max(PROMPTS),), generator=torch.Generator().manual_seed(1)).tolist()
    ours = {"export_s": export_s, "export_reused": reused, **bench_ours(pte, ids, args.new_tokens, args.reps)}
    peer = bench_peer(ids, args.new_tokens, args.reps)
    env = {"cpu_count": os.cpu_count(), "peer_threads": torch.get_num_threads(), "gdn_threads": args.gdn_threads,
           "platform": platform.platform(), "torch": torch.__version__, "python": platform.python_version()}
    (args.out / "bench_cpu.json").write_text(json.dumps({"env": env, "ours": ours, "peer": peer}, indent=2) + "\n")
    print(table(ours, peer))
    print(f"wrote {args.out / 'bench_cpu.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
