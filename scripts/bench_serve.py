"""bench-serve: what gdn-serve adds to generation, against the Runner directly (what gdn-run does), on one
artifact, in one run.

    python scripts/bench_serve.py --model model.pte [--cuda-graph/--no-cuda-graph] [--prompt TEXT]
        [--max-tokens 256] [--repeats 5] [--out bench_serve.json]

1. Direct: `Runner.generate` on the prompt, greedy, as `gdn-run --stats` runs it (one warm-up run, then
   --repeats): time to first token, decode tokens/s and time per token from the Runner's own timings.
2. Served: gdn-serve started as its own process on a free localhost port with the same flags, the direct
   runner closed first; one streaming client (plain HTTP, reading server-sent events as they arrive) sends the
   same completion request (one warm-up, then --repeats): time to first token over HTTP (request sent to
   first text received), decode tokens/s and time per token between the first text and the closing chunk.
   The added latency per token is the served time per token minus the direct one.
3. Prefix reuse over HTTP: a second turn that extends the first (prompt + its completion + more text),
   sent right after it (the server keeps the state: only the new tokens are prefilled) and after an unrelated
   request (the whole prompt is prefilled): its time to first token both ways.

Wall-clock times (time.perf_counter), medians over the repeats; prints a table, writes JSON with --out.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "The borrow checker"
MORE = " In short,"


def direct(model: Path, cuda_graph: bool | None, prompt: str, max_tokens: int, repeats: int) -> dict:
    from gdn.runner import Runner

    runner = Runner.load(model, cuda_graph=cuda_graph)
    max_tokens = min(max_tokens, runner.max_seq_len - len(runner.encode(prompt)) - len(runner.encode(MORE)) - 1)
    runs = [runner.generate(prompt, max_new_tokens=max_tokens, temperature=0) for _ in range(repeats + 1)][1:]
    out = {
        "device": str(runner.device), "max_seq_len": runner.max_seq_len, "max_tokens": max_tokens,
        "generated_tokens": [r.timings.generated_tokens for r in runs], "decode_path": runs[-1].decode_path,
        "time_to_first_token_s": statistics.median(r.timings.prefill_s for r in runs),
        "decode_tokens_per_s": statistics.median(r.timings.decode_tokens_per_s for r in runs),
        "per_token_s": statistics.median(r.timings.decode_s / (r.timings.generated_tokens - 1) for r in runs),
    }
    runner.close()
    del runner, runs
    gc.collect()
    _empty_cuda_cache()
    return out


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Served:
    """gdn-serve in its own process; stopped with SIGINT, as a person would."""

    def __init__(self, model: Path, cuda_graph: bool | None):
        flags = [] if cuda_graph is None else ["--cuda-graph" if cuda_graph else "--no-cuda-graph"]
        cmd = [sys.executable, "-m", "gdn.runner.serve_cli", "--model", str(model), "--port", "0", "--log-level",
               "warning", *flags]  # gdn-serve, wherever pip put the console script
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        line = ""
        while " on http://" not in line:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise SystemExit(f"bench-serve: gdn-serve exited with {self.proc.returncode}")
        self.port = int(line.rsplit(":", 1)[1].split("/")[0])

    def stream(self, prompt: str, max_tokens: int) -> dict:
        """One streaming completion: arrival times of its events, its text and usage."""
        body = {"model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        t0 = time.perf_counter()
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise SystemExit(f"bench-serve: HTTP {resp.status}: {resp.read()[:500]!r}")
        text, first, finish, usage = [], None, None, None
        while (line := resp.readline()) and line.strip() != b"data: [DONE]":
            if not line.startswith(b"data: "):
                continue
            now, chunk = time.perf_counter(), json.loads(line[6:])
            choice = chunk["choices"][0] if chunk["choices"] else None
            if choice and choice["text"]:
                first = now if first is None else first
                text.append(choice["text"])
            if choice and choice["finish_reason"]:
                finish = now
            usage = chunk.get("usage") or usage
        conn.close()
        return {"ttft_s": first - t0, "first": first, "finish": finish, "text": "".join(text), "usage": usage}

    def health(self) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("GET", "/health")
        out = json.loads(conn.getresponse().read())
        conn.close()
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def served(model: Path, cuda_graph: bool | None, prompt: str, max_tokens: int, repeats: int) -> dict:
    server = Served(model, cuda_graph)
    try:
        runs = [server.stream(prompt, max_tokens) for _ in range(repeats + 1)][1:]
        n = [r["usage"]["completion_tokens"] for r in runs]
        per_token = [(r["finish"] - r["first"]) / (k - 1) for r, k in zip(runs, n)]
        out = {
            "generated_tokens": n, "decode_path": server.health()["decode_path"],
            "time_to_first_token_s": statistics.median(r["ttft_s"] for r in runs),
            "decode_tokens_per_s": statistics.median(1 / t for t in per_token),
            "per_token_s": statistics.median(per_token),
            "reuse": reuse(server, prompt, runs[-1]["text"], max_tokens, repeats),
        }
    finally:
        server.stop()
    return out


def reuse(server: Served, prompt: str, completion: str, max_tokens: int, repeats: int) -> dict:
    """Turn two (prompt + completion + MORE) right after turn one, and after an unrelated request."""
    second = prompt + completion + MORE
    kept, lost = [], []
    for _ in range(repeats):
        server.stream(prompt, max_tokens)
        kept.append(server.stream(second, 1))
        server.stream("Unrelated", 1)
        lost.append(server.stream(second, 1))
    return {
        "prompt_tokens": kept[-1]["usage"]["prompt_tokens"],
        "cached_tokens": kept[-1]["usage"]["prompt_tokens_details"]["cached_tokens"],
        "kept_time_to_first_token_s": statistics.median(r["ttft_s"] for r in kept),
        "lost_time_to_first_token_s": statistics.median(r["ttft_s"] for r in lost),
    }


def table(d: dict, s: dict) -> str:
    ms = lambda x: f"{x * 1e3:.2f} ms"  # noqa: E731
    r = s["reuse"]
    rows = [
        ("", "direct (Runner, as gdn-run)", "served (HTTP, 1 streaming client)"),
        ("decode tok/s", f"{d['decode_tokens_per_s']:.1f}",
         f"{s['decode_tokens_per_s']:.1f} ({s['decode_tokens_per_s'] / d['decode_tokens_per_s']:.1%} of direct)"),
        ("time per token", ms(d["per_token_s"]),
         f"{ms(s['per_token_s'])} (added {ms(s['per_token_s'] - d['per_token_s'])})"),
        ("time to first token", ms(d["time_to_first_token_s"]), f"{ms(s['time_to_first_token_s'])} over HTTP"),
        ("tokens per run", str(d["generated_tokens"][-1]), str(s["generated_tokens"][-1])),
        ("decode path", d["decode_path"], str(s["decode_path"])),
        ("turn 2, state kept", "", f"{ms(r['kept_time_to_first_token_s'])} to first token "
                                   f"({r['cached_tokens']} of {r['prompt_tokens']} prompt tokens reused)"),
        ("turn 2, state lost", "", f"{ms(r['lost_time_to_first_token_s'])} to first token (all prefilled)"),
    ]
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, width)).rstrip() for row in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("model.pte"))
    ap.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--max-tokens", type=int, default=256, help="bounded by the artifact's context")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"bench-serve: no artifact at {args.model}")
    d = direct(args.model, args.cuda_graph, args.prompt, args.max_tokens, args.repeats)
    s = served(args.model, args.cuda_graph, args.prompt, d["max_tokens"], args.repeats)
    print(f"{args.model} on {d['device']} ({platform.node()}), prompt {args.prompt!r}, greedy, "
          f"medians of {args.repeats}")
    print(table(d, s))
    if s["generated_tokens"] != d["generated_tokens"]:
        print(f"note: token counts differ (direct {d['generated_tokens']}, served {s['generated_tokens']})")
    if args.out:
        args.out.write_text(json.dumps({"model": str(args.model), "prompt": args.prompt, "repeats": args.repeats,
                                        "direct": d, "served": s}, indent=2))


if __name__ == "__main__":
    main()
