"""runner.artifact / runner.flatbuf against real ExecuTorch programs: the flatbuffer reader agrees with exir's
own emitted program, and broken or foreign files give one clear ArtifactError."""

from __future__ import annotations

import json

import pytest
import torch
from torch.export import export

from gdn.export.lower import lower_cpu
from gdn.runner.artifact import FORMAT_VERSION, METADATA_KEY, Artifact, ArtifactError, Metadata
from gdn.runner.flatbuf import read_pte
from gdn.runner.methods import load_methods


pytestmark = pytest.mark.slow  # each test lowers a small program with ExecuTorch


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, 8))

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        # input_pos is used first so a delegate may take the inputs out of the method's order
        return input_pos.float() + torch.nn.functional.linear(tokens.float(), self.w)


def meta(backend: str = "cpu", version: int = FORMAT_VERSION) -> Metadata:
    return Metadata(format_version=version, backend=backend, family="qwen3_5", config={}, vocab_size=8,
                    max_seq_len=8, max_prefill_chunk=1, dtype="float32", state_dtype="float32", state=[],
                    bos_token_id=None, eos_token_ids=[1], stop_token_ids=[1], chat_template=None, generation_defaults={})


@pytest.fixture(scope="module")
def module():
    return TwoInputs()


@pytest.fixture(scope="module")
def program(module):
    args = (torch.randint(0, 8, (1, 8)), torch.arange(1))
    eps = {name: export(module, args, strict=True) for name in ("prefill", "decode")}
    return lower_cpu(eps, {METADATA_KEY: meta().to_json().encode()})


def write(program, path):
    with open(path, "wb") as f:
        program.write_to_file(f)
    return path


class FloatInputs(torch.nn.Module):
    """Float inputs go straight into the XNNPACK delegate, second argument first."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, 8))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(b, self.w) + a


def test_reader_agrees_with_exir(tmp_path):
    ep = export(FloatInputs(), (torch.randn(1, 8), torch.randn(1, 8)), strict=True)
    program = lower_cpu({"prefill": ep}, {METADATA_KEY: meta().to_json().encode()})
    path = write(program, tmp_path / "m.pte")
    data = path.read_bytes()
    layout = read_pte(data, len(data))
    for plan in program.executorch_program.execution_plan:
        assert layout.method_inputs[plan.name] == len(plan.inputs)
        calls = [i.instr_args for chain in plan.chains for i in chain.instructions
                 if type(i.instr_args).__name__ == "DelegateCall"]
        want = [[plan.inputs.index(a) if a in plan.inputs else -1 for a in c.args] for c in calls]
        assert layout.delegate_inputs[plan.name] == want
        assert layout.delegate_ids[plan.name] == [plan.delegates[c.delegate_index].id for c in calls]
    assert any(i >= 0 for calls in layout.delegate_inputs.values() for c in calls for i in c), "no delegate reads an input"
    seg = layout.named_data[METADATA_KEY]
    assert json.loads(data[seg.offset : seg.offset + seg.size])["backend"] == "cpu"


def test_open_and_run(module, program, tmp_path):
    art = Artifact.open(write(program, tmp_path / "m.pte"))
    assert art.meta == meta() and art.tokenizer_json is None and art.data_path is None
    methods = load_methods(art)
    tokens, pos = torch.randint(0, 8, (1, 8)), torch.randint(1, 8, (1,))
    with torch.no_grad():
        want = module(tokens, pos)
    for run in (methods.prefill, methods.decode):
        torch.testing.assert_close(run(tokens, pos), want, rtol=1e-5, atol=1e-4)


def test_missing_truncated_and_foreign(program, tmp_path):
    with pytest.raises(ArtifactError, match="no artifact at"):
        Artifact.open(tmp_path / "absent.pte")
    full = write(program, tmp_path / "m.pte").read_bytes()
    cut = tmp_path / "cut.pte"
    cut.write_bytes(full[: len(full) - 100])
    with pytest.raises(ArtifactError, match="truncated"):
        Artifact.open(cut)
    junk = tmp_path / "junk.pte"
    junk.write_bytes(b"hello, not a program" * 10)
    with pytest.raises(ArtifactError, match="not an ExecuTorch program"):
        Artifact.open(junk)
    empty = tmp_path / "empty.pte"
    empty.write_bytes(b"")
    with pytest.raises(ArtifactError, match="empty"):
        Artifact.open(empty)


def test_not_a_gdn_artifact(tmp_path):
    ep = export(TwoInputs(), (torch.randint(0, 8, (1, 8)), torch.arange(1)), strict=True)
    plain = write(lower_cpu({"forward": ep}, {}), tmp_path / "plain.pte")
    with pytest.raises(ArtifactError, match="not a gdn artifact"):
        Artifact.open(plain)


def test_unknown_version_and_missing_data_file(tmp_path):
    with pytest.raises(ArtifactError, match="unknown artifact format version 99"):
        Metadata.from_json(meta(version=99).to_json(), "x.pte")
    ep = export(TwoInputs(), (torch.randint(0, 8, (1, 8)), torch.arange(1)), strict=True)
    cuda_meta = meta(backend="cuda").to_json().encode()
    path = write(lower_cpu({"prefill": ep, "decode": ep}, {METADATA_KEY: cuda_meta}), tmp_path / "c.pte")
    with pytest.raises(ArtifactError, match="missing data file .*c.ptd"):
        Artifact.open(path)
