"""Drive an artifact through captured prefill and decode graphs and print which path each took: the workload to
run under `compute-sanitizer --tool memcheck` (one gdn-run call never gets past the prefill buckets' warmup).

    compute-sanitizer --tool memcheck python scripts/tools/graph_replays.py model.pte [--turns 6] [--new 40]

Turns alternate between prompts of a few lengths (so some buckets capture and replay) and continue a session
(prefill at a non-zero start); each prints its prefill and decode paths and graph counters.
"""

from __future__ import annotations

import argparse
import random

from gdn.runner import Runner, SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--new", type=int, default=40)
    args = ap.parse_args()
    runner = Runner.load(args.artifact, cuda_graph=True, warmup=1)
    rng = random.Random(0)
    ids = lambda n: [rng.randrange(3, runner.vocab_size) for _ in range(n)]  # noqa: E731
    greedy = SamplingParams(temperature=0.0)
    for turn in range(args.turns):
        r = runner.generate(ids((17, 100, 33)[turn % 3]), max_new_tokens=args.new, sampling=greedy)
        print(f"turn {turn}: prefill {r.prefill_path} {r.prefill_graph}, decode {r.decode_path} {r.graph}")
    chat = runner.session()
    for turn in range(3):
        r = chat.generate(ids(9), max_new_tokens=args.new, sampling=greedy)
        print(f"session turn {turn}: reused {r.reused_tokens}, prefill {r.prefill_path}, decode {r.decode_path}")
    runner.close()


if __name__ == "__main__":
    main()
