"""The warmup -> capture -> replay state machine (GPU): on a counter step, on the eager model behind the
Methods interface (fp32, kernels="ops"). Replay over a real artifact's AOTInductor containers is in
tests/test_runner_cuda_e2e.py."""

import pytest
import torch

from gdn.runner import Runner, SamplingParams
from gdn.runner.cuda_graph import GraphedStep, GraphState
from runner_eager import DEFAULT_MODEL, greedy_reference, load_eager, metadata, random_ids, tokenizer_json

pytestmark = pytest.mark.cuda
MAX_SEQ = 256
GREEDY = SamplingParams(temperature=0.0)
SAMPLED = SamplingParams(temperature=1.0, top_k=40, top_p=0.9, seed=1234)


def test_counter_step_warms_up_captures_once_and_each_call_runs_once():
    x = torch.zeros(1, device="cuda")
    g = GraphedStep(lambda: x.add_(1), warmup=3)
    states = []
    for _ in range(10):
        g()
        states.append(g.state)
    assert float(x) == 10  # the capturing call ran exactly once (by its replay), every replay once
    assert states == [GraphState.WARMUP] * 3 + [GraphState.READY] * 7
    assert vars(g.counters) == {"eager_calls": 3, "captures": 1, "replays": 7}


def test_changed_dependency_recaptures_instead_of_replaying_a_stale_graph():
    holder = {"buf": torch.zeros(4, device="cuda")}
    g = GraphedStep(lambda: holder["buf"].add_(1), lambda: holder["buf"].data_ptr(), warmup=2)
    for _ in range(5):
        g()
    old = holder["buf"]
    holder["buf"] = torch.zeros(4, device="cuda") + 100  # the state was reallocated
    for _ in range(5):
        g()
    assert old.tolist() == [5.0] * 4 and holder["buf"].tolist() == [105.0] * 4
    # warmup happens once: the re-capture records at once, never calling the captured step eagerly
    assert vars(g.counters) == {"eager_calls": 2, "captures": 2, "replays": 8}


def test_capture_failure_falls_back_to_eager_and_says_why():
    x = torch.zeros(1, device="cuda")

    def step():
        x.add_(1)
        x.item()  # a host synchronisation: not capturable

    g = GraphedStep(step, warmup=1)
    for _ in range(4):
        g()
    assert g.state is GraphState.EAGER and "capture failed" in g.fallback_reason
    assert float(x) == 4 and vars(g.counters) == {"eager_calls": 4, "captures": 0, "replays": 0}


def test_disabled_runs_eagerly():
    x = torch.zeros(1, device="cuda")
    g = GraphedStep(lambda: x.add_(1), enabled=False)
    for _ in range(5):
        g()
    assert float(x) == 5 and g.state is GraphState.EAGER and g.counters.captures == 0


@pytest.fixture(scope="module")
def eager_cuda():
    return load_eager(DEFAULT_MODEL, MAX_SEQ, device="cuda", kernels="ops")


def runners(eager_cuda, **meta):
    model, methods = eager_cuda
    m = metadata(model, MAX_SEQ, 64, DEFAULT_MODEL, stop_token_ids=[], eos_token_ids=[], **meta)
    return (Runner(methods, m, tokenizer_json(), cuda_graph=True),
            Runner(methods, m, tokenizer_json(), cuda_graph=False))


def ids(n):
    return random_ids(n)


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_graph_replay_gives_eager_tokens_for_200_plus_steps(eager_cuda, sampling):
    graphed, eager = runners(eager_cuda)
    prompt = ids(17)
    g = graphed.generate(prompt, max_new_tokens=230, sampling=sampling)
    e = eager.generate(prompt, max_new_tokens=230, sampling=sampling)
    assert g.generated_ids == e.generated_ids and len(g.generated_ids) == 230
    if sampling is GREEDY:
        assert g.generated_ids == greedy_reference(eager_cuda[0], prompt, 230)
    # 229 decode steps in blocks of 4: 3 warmup blocks, the capture, 54 more replays
    assert g.decode_path == "cuda_graph" and g.graph == {"eager_calls": 3, "captures": 1, "replays": 55}
    assert e.decode_path == "eager" and e.graph == {"eager_calls": 229, "captures": 0, "replays": 0}


def test_one_capture_serves_other_positions_new_prompts_sessions_and_the_end_of_the_context(eager_cuda):
    graphed, eager = runners(eager_cuda)
    cases = [(ids(5), 40), (ids(61), 50), (ids(MAX_SEQ - 12), 100), (ids(2), 20)]
    for prompt, n in cases:  # captured at position 5 + 3; replayed from other starts after state resets
        g = graphed.generate(prompt, max_new_tokens=n, sampling=SAMPLED)
        e = eager.generate(prompt, max_new_tokens=n, sampling=SAMPLED)
        assert g.generated_ids == e.generated_ids
    assert g.graph["captures"] == 1
    near_end = graphed.generate(cases[2][0], max_new_tokens=100, sampling=SAMPLED)
    assert near_end.stop_reason == "context_full" and len(near_end.generated_ids) == 12  # last fed position 255
    assert near_end.generated_ids == eager.generate(cases[2][0], max_new_tokens=100, sampling=SAMPLED).generated_ids
    # the two runners share one model state: all graphed turns first, then all eager turns (its first resets)
    turns = (ids(9), ids(4), ids(7))
    sg, se = graphed.session(), eager.session()
    got = [sg.generate(turn, max_new_tokens=15, sampling=SAMPLED) for turn in turns]
    want = [se.generate(turn, max_new_tokens=15, sampling=SAMPLED) for turn in turns]
    assert [g.generated_ids for g in got] == [w.generated_ids for w in want]
    assert [g.reused_tokens > 0 for g in got] == [False, True, True]
    assert graphed.graph_counters["captures"] == 1


def test_a_new_sampling_structure_recaptures(eager_cuda):
    graphed, eager = runners(eager_cuda)
    prompt = ids(8)
    # long enough to pass the warmup blocks (3 of DECODE_BLOCK steps each) and capture
    first = graphed.generate(prompt, max_new_tokens=40, sampling=GREEDY)
    assert first.graph["captures"] == 1
    g = graphed.generate(prompt, max_new_tokens=20, sampling=SAMPLED)
    assert g.graph["captures"] == 2
    assert g.generated_ids == eager.generate(prompt, max_new_tokens=20, sampling=SAMPLED).generated_ids


@pytest.mark.parametrize("block", [1, 4, 8])
def test_graph_equals_eager_over_1000_steps(block):
    """Decode blocks of k steps per replay, 1,000 steps: the graphed runner's ids are the eager step's (block 1)."""
    model, methods = load_eager(DEFAULT_MODEL, 1100, device="cuda", kernels="ops")
    m = metadata(model, 1100, 64, DEFAULT_MODEL, stop_token_ids=[], eos_token_ids=[])
    graphed = Runner(methods, m, tokenizer_json(), cuda_graph=True, decode_block=block)
    eager = Runner(methods, m, tokenizer_json(), cuda_graph=False)
    prompt = ids(33)
    for sampling in (GREEDY, SAMPLED):
        g = graphed.generate(prompt, max_new_tokens=1001, sampling=sampling)
        e = eager.generate(prompt, max_new_tokens=1001, sampling=sampling)
        assert g.generated_ids == e.generated_ids and len(g.generated_ids) == 1001
        assert g.decode_path == "cuda_graph"
