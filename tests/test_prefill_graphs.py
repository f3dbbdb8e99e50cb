"""Prefill through CUDA graphs per length bucket (gdn.runner.prefill_graphs): a chunk runs in the smallest bucket
that holds it, padded with pads (input_pos -1). On the GPU, against the same artifact's unpadded eager prefill:
the logits of every length and the state it leaves (the next prefill's and decode steps' logits), within the
tolerance of a row computed in a GEMM of another row count. Set GDN_PREFILL_ARTIFACT to reuse an fp32 export of
the bundled model with a 1,024-token prefill chunk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from gdn.runner import Runner
from gdn.runner.loop import prefill
from gdn.runner.prefill_graphs import PrefillGraphs, buckets
from runner_eager import random_ids

LENGTHS = (1, 2, 15, 16, 17, 127, 128, 129, 1023, 1024)
TOL = dict(rtol=1e-4, atol=1e-5)  # fp32 logits; a pad-free row may round differently at another GEMM row count


def gpu(test):
    """The GPU tests: they export (slow) and need a CUDA device."""
    for mark in (pytest.mark.cuda, pytest.mark.slow,
                 pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")):
        test = mark(test)
    return test


def test_buckets_are_powers_of_two_then_the_chunk():
    assert buckets(1) == [1]
    assert buckets(8) == [1, 2, 4, 8]
    assert buckets(1000) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(graphed PrefillGraphs, eager Runner) over two loads of one fp32 artifact: separate states."""
    given = os.environ.get("GDN_PREFILL_ARTIFACT")
    if given:
        path = Path(given)
    else:
        from gdn.export.pipeline import ExportOptions, run_export

        out = tmp_path_factory.mktemp("prefill_graphs") / "model.pte"
        path = run_export(ExportOptions(output=out, backend="cuda", dtype="fp32", max_seq_len=2048,
                                        autotune="none")).path
    graphed, eager = Runner.load(path, cuda_graph=True), Runner.load(path, cuda_graph=False)
    assert graphed.prefill_chunk == 1024
    yield PrefillGraphs(graphed.methods, graphed.prefill_chunk, cuda_graph=True, warmup=1), graphed, eager
    graphed.close()
    eager.close()


def same_state(graphed: Runner, eager: Runner, at: int, steps: int = 3) -> None:
    """The states agree: a few decode steps from position `at` give the same logits."""
    for i in range(steps):
        tok = torch.tensor([[5 + i]], device="cuda")
        pos = torch.tensor([at + i], device="cuda")
        torch.testing.assert_close(graphed.methods.decode(tok, pos), eager.methods.decode(tok, pos), **TOL)


@gpu
@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("start", [0, 300], ids=["fresh", "continued"])
def test_graphed_prefill_equals_eager(pair, T, start):
    """Three calls per length (warmup, capture, replay): each equals the unpadded eager prefill, fresh and after
    a 300-token prefix, and leaves the same state."""
    pg, graphed, eager = pair
    prefix, ids = random_ids(start), random_ids(T)
    for call in range(3):
        if start:
            pg(prefix, 0)
            prefill(eager.methods, prefix, 0, eager.prefill_chunk)
        got = pg(ids, start).clone()
        want = prefill(eager.methods, ids, start, eager.prefill_chunk)
        torch.testing.assert_close(got, want, **TOL, msg=lambda m: f"T {T} at {start}, call {call}: {m}")
        same_state(graphed, eager, start + T)
    assert pg.path == "cuda_graph"


@gpu
def test_one_capture_per_bucket_replays_every_length_in_it(pair):
    """Bucket 16 captured once serves 9 .. 16 tokens; the counters say which path ran."""
    pg, graphed, eager = pair
    for _ in range(2):  # warmup (1 call), then the capture
        pg(random_ids(16), 0)
    assert pg.steps[16].counters.captures == 1
    for T in range(9, 17):
        ids = random_ids(T)
        torch.testing.assert_close(pg(ids, 0).clone(), prefill(eager.methods, ids, 0, eager.prefill_chunk), **TOL)
        same_state(graphed, eager, T)
        assert pg.path == "cuda_graph"
    assert pg.steps[16].counters.captures == 1
    assert len({id(step._shared_pool) for step in pg.steps.values()}) == 1, "one pool for every bucket"


@gpu
def test_no_state_bleeds_between_prompts(pair):
    """A long prompt, then a short one from position 0: the short one's logits and state are a fresh start's."""
    pg, graphed, eager = pair
    pg(random_ids(1000), 0)
    ids = random_ids(20)
    torch.testing.assert_close(pg(ids, 0).clone(), prefill(eager.methods, ids, 0, eager.prefill_chunk), **TOL)
    same_state(graphed, eager, 20)
