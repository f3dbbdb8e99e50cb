"""End to end on CPU: the bundled default model's artifact (gdn-export with no checkpoint given: conftest's
`cpu_artifacts`), run by gdn-run in-process and as a console script: greedy tokens equal the eager model's,
streaming, chat, stats, seeds, and every bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gdn.runner.cli import main
from cpu_exports import DEFAULT_MAX_SEQ as MAX_SEQ
from runner_eager import (DEFAULT_MODEL, DEFAULT_STOP_IDS, DEFAULT_VOCAB, greedy_reference, load_eager, random_ids,
                          tokenizer_json)


pytestmark = pytest.mark.slow  # every test runs the default model's CPU artifact, which the session exports


@pytest.fixture(scope="module")
def artifact(cpu_artifacts) -> Path:
    return cpu_artifacts["default"][1]


@pytest.fixture(scope="module")
def eager_model():
    return load_eager(DEFAULT_MODEL, MAX_SEQ)[0]


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def run_json(capsys, *args) -> dict:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_json_greedy_tokens_equal_the_eager_model(capsys, artifact, eager_model):
    ids = random_ids(21)  # 21 > the 16-token prefill chunk
    got = run_json(capsys, "--model", str(artifact), "--prompt-ids", ",".join(map(str, ids)),
                   "--temperature", "0", "--max-new-tokens", "24")
    assert got["prompt_ids"] == ids and got["decode_path"] == "eager"
    ref = greedy_reference(eager_model, ids, 24)
    n = len(got["generated_ids"])
    assert got["generated_ids"] == ref[:n]
    assert n == 24 or (got["stop_reason"] == "stop_token" and got["generated_ids"][-1] in DEFAULT_STOP_IDS)


def test_fixed_prompt_greedy_continuation_equals_the_stored_eager_expectation(capsys, artifact):
    """tests/data/default_model_greedy.json comes from eager PyTorch (scripts/default_model_expectation.py)."""
    want = json.loads((Path(__file__).parent / "data" / "default_model_greedy.json").read_text())
    got = run_json(capsys, "--model", str(artifact), "--prompt", want["prompt"], "--temperature", "0",
                   "--max-new-tokens", str(want["max_new_tokens"]))
    assert got["prompt_ids"] == want["prompt_ids"]
    assert got["generated_ids"] == want["generated_ids"] and got["text"] == want["text"]


def test_text_prompt_stream_equals_json_text_and_stats_line(capsys, artifact, eager_model):
    common = ["--model", str(artifact), "--prompt", "Python Software Foundation", "--temperature", "0.9",
              "--seed", "5", "--max-new-tokens", "20"]
    got = run_json(capsys, *common)
    code, out, err = run(capsys, *common, "--stats")
    assert code == 0 and out == (got["text"] or "") + "\n"
    stats = [line for line in err.splitlines() if line.startswith("load ")]
    assert len(stats) == 1 and "decode path eager" in stats[0] and "tok/s" in stats[0]
    again = run_json(capsys, *common)
    assert again["generated_ids"] == got["generated_ids"] and got["sampling"]["seed"] == 5
    other = run_json(capsys, *common[:-4], "--seed", "6", "--max-new-tokens", "20")
    assert other["generated_ids"] != got["generated_ids"]


def test_chat_applies_the_template_and_greedy_matches(capsys, artifact, eager_model):
    from gdn.runner.tokenizer import Tokenizer

    got = run_json(capsys, "--model", str(artifact), "--prompt", "Hi", "--chat", "--temperature", "0",
                   "--max-new-tokens", "10")
    want = Tokenizer(tokenizer_json()).encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert got["prompt_ids"] == want
    assert got["generated_ids"] == greedy_reference(eager_model, want, 10)[: len(got["generated_ids"])]


def test_cuda_graph_flag_on_a_cpu_artifact_is_ignored_with_a_notice(capsys, artifact):
    code, out, err = run(capsys, "--model", str(artifact), "--prompt-ids", "5,6", "--cuda-graph",
                         "--max-new-tokens", "3")
    assert code == 0 and "--cuda-graph ignored" in err and out.strip()


def test_model_defaults_to_model_pte_in_the_working_directory(capsys, artifact, monkeypatch):
    monkeypatch.chdir(artifact.parent)
    assert run_json(capsys, "--prompt-ids", "7,8,9", "--max-new-tokens", "2")["model"] == "model.pte"


BAD = [
    (["--model", "{missing}", "--prompt", "x"], "no artifact at"),
    (["--model", "{text}", "--prompt", "x"], "is not an ExecuTorch program"),
    (["--model", "{truncated}", "--prompt", "x"], "truncated"),
    (["--model", "{art}", "--prompt", ""], "prompt is empty"),
    (["--model", "{art}", "--prompt", "x", "--temperature", "-1"], "temperature must be"),
    (["--model", "{art}", "--prompt", "x", "--top-p", "0"], "top_p must be in (0, 1], got 0.0"),
    (["--model", "{art}", "--prompt", "x", "--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
    (["--model", "{art}", "--prompt-ids", f"1,{DEFAULT_VOCAB}"],
     f"token id {DEFAULT_VOCAB} is outside the vocabulary [0, {DEFAULT_VOCAB})"),
    (["--model", "{art}", "--prompt-ids", "1,x"], "--prompt-ids must be comma-separated integers"),
    (["--model", "{art}", "--prompt-ids", ",".join(["1"] * MAX_SEQ)], "does not fit max_seq_len 64"),
    (["--model", "{art}", "--prompt", "x", "--prompt-ids", "1"], "exactly one of"),
    (["--model", "{art}"], "exactly one of"),
    (["--model", "{art}", "--prompt-ids", "1", "--chat"], "--chat needs a text prompt"),
    (["--model", "{art}", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--model", "{art}", "--prompt-file", "{missing}"], "cannot read --prompt-file"),
    (["--model", "{art}", "--prompt", "x", "--top-k", "two"], "'two' is not a valid integer"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[
    "missing_artifact", "not_an_artifact", "truncated", "empty_prompt", "negative_temperature", "top_p_0",
    "top_p_1.5", "id_out_of_vocab", "ids_not_integers", "prompt_too_long", "two_prompts", "no_prompt",
    "chat_with_ids", "zero_new_tokens", "missing_prompt_file", "bad_option_value"])
def test_bad_input_is_one_line_and_exit_2(capsys, artifact, tmp_path, args, message):
    text = tmp_path / "notes.pte"
    text.write_text("hello, not a program\n")
    truncated = tmp_path / "cut.pte"
    data = artifact.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    paths = {"{missing}": str(tmp_path / "absent.pte"), "{text}": str(text), "{truncated}": str(truncated),
             "{art}": str(artifact)}
    code, out, err = run(capsys, *[paths.get(a, a) for a in args])
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if not line.startswith("[cpuinfo")]
    assert len(lines) == 1 and lines[0].startswith("gdn-run: error: ") and message in lines[0], err


def test_console_script_end_to_end_and_a_bad_input_without_traceback(artifact, eager_model):
    exe = Path(sys.executable).with_name("gdn-run")
    ok = subprocess.run([str(exe), "--model", str(artifact), "--prompt-ids", "3,4,5", "--temperature", "0",
                         "--max-new-tokens", "8", "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    ids = json.loads(ok.stdout)["generated_ids"]
    assert ids == greedy_reference(eager_model, [3, 4, 5], 8)[: len(ids)]
    bad = subprocess.run([str(exe), "--model", str(artifact), "--prompt-ids", "99999"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "99999" in bad.stderr
