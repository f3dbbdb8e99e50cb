"""End to end on the GPU: a CUDA artifact of the bundled default model (fp32), run by gdn-run with and
without the CUDA graph: token-identical, equal to the eager model's greedy tokens; a missing .ptd is one
line and exit 2. Set GDN_CUDA_ARTIFACT to reuse an artifact exported with --max-seq-len >= 128."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from gdn.runner import Runner, SamplingParams
from gdn.runner.cli import main
from runner_eager import DEFAULT_MODEL, greedy_reference, load_eager, random_ids

pytestmark = [pytest.mark.cuda, pytest.mark.slow]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    given = os.environ.get("GDN_CUDA_ARTIFACT")
    if given:
        return Path(given)
    from gdn.export.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("cuda_e2e") / "model.pte"
    return run_export(ExportOptions(output=out, backend="cuda", dtype="fp32", max_seq_len=128, autotune="none")).path


def run(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_cli_graph_and_eager_are_token_identical_and_equal_the_eager_model(capsys, artifact):
    ids = random_ids(29)
    results = {}
    for flag in ("--cuda-graph", "--no-cuda-graph"):
        code, out, err = run(capsys, "--model", str(artifact), "--prompt-ids", ",".join(map(str, ids)),
                             "--temperature", "0", "--max-new-tokens", "60", "--json", flag)
        assert code == 0, err
        results[flag] = json.loads(out)
        code, out, err = run(capsys, "--model", str(artifact), "--prompt-ids", ",".join(map(str, ids)),
                             "--temperature", "0.9", "--top-k", "30", "--seed", "3", "--max-new-tokens", "60",
                             "--json", flag)
        assert code == 0, err
        results[flag + " sampled"] = json.loads(out)
    g, e = results["--cuda-graph"], results["--no-cuda-graph"]
    assert g["generated_ids"] == e["generated_ids"]
    assert (g["decode_path"], e["decode_path"]) == ("cuda_graph", "eager")
    assert results["--cuda-graph sampled"]["generated_ids"] == results["--no-cuda-graph sampled"]["generated_ids"]
    assert results["--cuda-graph sampled"]["decode_path"] == "cuda_graph"
    assert results["--no-cuda-graph sampled"]["decode_path"] == "eager"
    model, _ = load_eager(DEFAULT_MODEL, 128, device="cuda", kernels="ops")
    ref = greedy_reference(model, ids, 60)
    assert g["generated_ids"] == ref[: len(g["generated_ids"])]
    print(f"\ncuda e2e: graph counters {results['--cuda-graph sampled']['graph']}, "
          f"decode tok/s graph {results['--cuda-graph sampled']['timings']['decode_tokens_per_s']:.0f} "
          f"eager {results['--no-cuda-graph sampled']['timings']['decode_tokens_per_s']:.0f}")


def test_runner_session_and_many_prompts_on_one_graph(artifact):
    graphed = Runner.load(artifact, cuda_graph=True)
    eager = Runner.load(artifact, cuda_graph=False)
    greedy = SamplingParams(temperature=0.0)
    for n in (3, 40, 100):
        ids = random_ids(n)
        assert graphed.generate(ids, max_new_tokens=30, sampling=greedy).generated_ids == \
               eager.generate(ids, max_new_tokens=30, sampling=greedy).generated_ids
    sg, se = graphed.session(), eager.session()
    for text in ("Hello", "And then?"):
        a = sg.generate(text, chat=True, max_new_tokens=8, sampling=greedy)
        b = se.generate(text, chat=True, max_new_tokens=8, sampling=greedy)
        assert a.generated_ids == b.generated_ids and a.reused_tokens == b.reused_tokens
    assert graphed.graph_counters["captures"] == 1
    graphed.close()
    eager.close()


def test_missing_ptd_is_one_line_exit_2(capsys, artifact, tmp_path):
    lonely = tmp_path / "model.pte"
    shutil.copy(artifact, lonely)
    code, out, err = run(capsys, "--model", str(lonely), "--prompt-ids", "1,2")
    ours = [line for line in err.splitlines() if line.startswith("gdn-run")]
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(ours) == 1 and ours[0].startswith("gdn-run: error: missing data file")


def test_a_new_sampling_structure_recaptures_over_the_artifact(artifact):
    """A new sampling structure re-captures at once (warmup happens once), and a container whose run was
    captured still runs eagerly: the runner uses the single-threaded run, whose thread-safe twin records a
    completion event that a capture leaves failing every later run ("invalid argument")."""
    graphed = Runner.load(artifact, cuda_graph=True)
    eager = Runner.load(artifact, cuda_graph=False)
    prompt = random_ids(11)
    for params in (SamplingParams(temperature=0.0), SamplingParams(temperature=0.8, top_k=20, seed=5)):
        g = graphed.generate(prompt, max_new_tokens=20, sampling=params)
        e = eager.generate(prompt, max_new_tokens=20, sampling=params)
        assert g.generated_ids == e.generated_ids and g.decode_path == "cuda_graph"
    assert graphed.graph_counters["captures"] == 2 and graphed.graph_counters["eager_calls"] == 3
    one = torch.tensor([[prompt[0]]], device="cuda")
    logits = graphed.methods.decode(one, torch.tensor([0], device="cuda"))
    assert torch.isfinite(logits).all()
    graphed.close()
    eager.close()
