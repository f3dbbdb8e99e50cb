"""`gdn-export --quant int8|int4`: the quantized model (export/quant.py) against the float reference, its loader,
its metadata, and (slow) CPU artifacts of the bundled default model run by the real ExecuTorch runtime through
gdn.runner, whose greedy tokens must be the eager model's (same quantized weights) up to bf16 near-ties: fed the
artifact's tokens, the eager model ranks each first or within BF16_TIE of its largest logit."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gdn.export.artifact import tensor_bytes
from gdn.export.checkpoint import load_model
from gdn.export.pipeline import DEFAULT_CHECKPOINT
from gdn.export.quant import QuantEmbedding, QuantLinear, QuantScheme, dense_weight, quant_target
from gdn.kernels.qgemv import reference as qref
from gdn.runner.artifact import Artifact, Metadata
from runner_eager import DEFAULT_MODEL, random_ids

SCHEMES = {"int8": QuantScheme(8, 64), "int4": QuantScheme(4, 32)}
MAX_SEQ, CHUNK = 64, 16


def load(scheme: QuantScheme | None, dtype=torch.bfloat16, ckpt=DEFAULT_CHECKPOINT):
    return load_model(ckpt, MAX_SEQ, dtype, torch.float32, "reference", quant=scheme)


@pytest.mark.parametrize("bits,group,shape", [(8, 32, (7, 96)), (4, 16, (5, 48)), (4, 64, (3, 2, 128))])
def test_quant_linear_is_the_reference(bits, group, shape):
    """load quantizes as kernels/qgemv/reference.quantize does; forward = F.linear on its dequantisation, near
    the float64 product of the same dequantized weights; the embedding gathers dequantized rows."""
    w = torch.randn(shape, dtype=torch.bfloat16)
    m = QuantLinear(shape, QuantScheme(bits, group))
    m.load(w)
    q, s = qref.quantize(w.reshape(-1, shape[-1]), bits, group)
    assert torch.equal(m.qweight.reshape(q.shape), q) and torch.equal(m.scales.reshape(s.shape), s)
    deq = qref.dequantize(q, s, bits, group).view(shape)
    assert torch.equal(m.dequantize(), deq)
    if len(shape) == 2:  # a linear layer (the 3-d form is a stack of experts, read through dequantize)
        x = torch.randn(5, shape[-1], dtype=torch.bfloat16)  # odd row count
        y = torch.full((5, shape[0]), float("nan"), dtype=torch.bfloat16)
        y.copy_(m(x))
        exact = x.double() @ deq.double().T
        tol = 2 ** -7 * (x.double().abs() @ deq.double().abs().T) + 1e-6
        assert torch.isfinite(y).all() and ((y.double() - exact).abs() <= tol).all()
        e = QuantEmbedding(shape, QuantScheme(bits, group))
        e.load(w)
        ids = torch.tensor([2, 0, 2])
        assert torch.equal(e(ids), deq[ids])


@pytest.mark.parametrize("name", SCHEMES)
def test_loader_quantizes_every_projection_and_nothing_else(name):
    scheme = SCHEMES[name]
    model = load(scheme)
    quantized = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    cfg = model.cfg
    n_linear = sum(t == "linear_attention" for t in cfg.layer_types)
    # per layer: the mixer's two projections, router_shared, shared_down, the two expert stacks; + the embedding
    assert len(quantized) == 6 * cfg.num_hidden_layers + 1 and model.lm_head is model.embed_tokens
    assert sum(".linear_attn.in_proj" in n for n in quantized) == n_linear
    floats = {n for n, p in model.named_parameters() if p.is_floating_point() and not n.endswith(".scales")}
    assert all(n.rsplit(".", 1)[-1] in ("weight", "conv_weight", "A_log", "dt_bias") and "norm" in n
               or n.endswith(("conv_weight", "A_log", "dt_bias")) for n in floats), floats
    dense = load(None)
    for n, p in dense.named_parameters():
        target = quant_target(model, n)
        if target is None:
            assert torch.equal(model.get_parameter(n), p), n
            continue
        K = p.shape[-1]
        q, s = qref.quantize(p.detach().reshape(-1, K), scheme.bits, scheme.group)
        assert torch.equal(target.qweight.reshape(q.shape), q) and torch.equal(target.scales.reshape(s.shape), s), n


@pytest.mark.parametrize("name", SCHEMES)
def test_weight_bytes_shrink_as_computed(name):
    scheme = SCHEMES[name]
    dense, model = load(None), load(scheme)
    want = 0
    for n, p in dense.named_parameters():
        if quant_target(model, n) is None:
            want += p.numel() * p.element_size()
        else:
            want += p.numel() * scheme.bits // 8 + p.numel() // scheme.group * 2  # packed weights + bf16 scales
    assert weight_bytes(model) == want < weight_bytes(dense)


@pytest.mark.parametrize("name", SCHEMES)
def test_decode_path_matches_prefill_path(name):
    """The one-token qgemv / norm_qgemv path and the dequantize-then-matmul path agree (same weights)."""
    model = load(SCHEMES[name])
    torch.manual_seed(0)
    prompt = torch.tensor([random_ids(11)])
    with torch.no_grad():
        for t in range(prompt.shape[1]):
            step = model(prompt[:, t : t + 1], torch.tensor([t]))
        whole = model.prefill(prompt, torch.arange(prompt.shape[1]))
    assert (step.float() - whole.float()).abs().max() <= 0.05 * whole.float().abs().max()
    assert step.argmax() == whole.argmax()


def test_dense_weight_of_each_kind():
    lin = torch.nn.Linear(4, 3, bias=False)
    p = torch.nn.Parameter(torch.ones(2, 3, 4))
    assert dense_weight(lin) is lin.weight and dense_weight(p) is p


def test_metadata_quant_field_round_trips_and_is_optional():
    meta = Metadata(1, "cpu", "qwen3_5", {}, 10, 8, 4, "bfloat16", "float32", [], None, [], [], None, {},
                    {"scheme": "int4", "bits": 4, "group_size": 64, "scale_dtype": "bfloat16"})
    assert Metadata.from_json(meta.to_json(), "x") == meta
    assert meta.weights_label() == "int4 (group 64, bfloat16 scales)"
    import json

    old = json.loads(meta.to_json())
    del old["quant"]
    legacy = Metadata.from_json(json.dumps(old), "x")
    assert legacy.quant is None and legacy.weights_label() == "bfloat16"


def weight_bytes(model) -> int:
    return tensor_bytes(model.parameters())


# ---- CPU artifacts (slow): one export per scheme, side by side ---------------------------------------------


@pytest.fixture(scope="module")
def quant_artifacts(tmp_path_factory):
    """scheme name -> model.pte of the bundled default model, exported for the CPU by gdn-export processes."""
    jobs, out = {}, {}
    for name, scheme in SCHEMES.items():
        pte = tmp_path_factory.mktemp(f"quant_{name}") / "model.pte"
        cmd = [sys.executable, "-m", "gdn.export.cli", str(pte), "--backend", "cpu", "--quant", name,
               "--group-size", str(scheme.group), "--max-seq-len", str(MAX_SEQ), "--max-prefill-chunk", str(CHUNK)]
        jobs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out[name] = pte
    try:
        for name, job in jobs.items():
            _, err = job.communicate(timeout=1200)
            assert job.returncode == 0, f"{name}: {err[-2000:]}"
    finally:
        for job in jobs.values():
            job.kill()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", SCHEMES)
def test_artifact_greedy_follows_the_eager_quantized_model(quant_artifacts, name):
    from gdn.runner import Runner
    from runner_eager import EagerMethods

    scheme = SCHEMES[name]
    runner = Runner.load(quant_artifacts[name])
    meta = runner.meta
    assert meta.dtype == "bfloat16" and meta.quant["scheme"] == name and meta.quant["bits"] == scheme.bits
    assert meta.quant["group_size"] == scheme.group and "mlp.gate_up" in meta.quant["quantized"]
    eager = EagerMethods(load(scheme, ckpt=DEFAULT_MODEL), "cpu")
    for n in (CHUNK + 5, 3):  # chunked prefill, then a fresh short prompt
        prompt = random_ids(n)
        result = runner.generate(prompt, max_new_tokens=12, temperature=0.0)
        got = result.generated_ids
        assert len(got) == 12 or result.stop_reason == "stop_token", f"prompt of {n}: {result.stop_reason}"
        margins = teacher_forced_margins(eager, prompt, got)
        # bf16 in two runtimes (XNNPACK / portable kernels against ATen) rounds differently: a token may differ only
        # where the eager model's top two are within that rounding (BF16_TIE of its largest logit)
        assert max(margins) <= BF16_TIE, f"prompt of {n}: eager logit margins of the artifact's tokens {margins}"
    runner.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", SCHEMES)
def test_artifact_stores_the_packed_weights(quant_artifacts, name):
    """Every quantized weight's bytes are in the .pte as packed (not folded back into floats), and the file is
    the quantized model's weight bytes plus the program and the tokenizer."""
    pte = quant_artifacts[name]
    data = pte.read_bytes()
    model = load(SCHEMES[name])
    packed = [m for m in model.modules() if isinstance(m, QuantLinear)]
    for m in packed:
        assert data.find(m.qweight.detach().contiguous().view(torch.uint8).numpy().tobytes()) >= 0
    table = packed[0] if isinstance(packed[0], QuantEmbedding) else model.embed_tokens
    assert data.find(table.dequantize().contiguous().view(torch.uint8).numpy().tobytes()[:4096]) < 0
    program = len(data) - weight_bytes(model) - len(Artifact.open(pte).tokenizer_json.encode())
    assert 0 < program < 2 << 20, f"{len(data)} bytes for {weight_bytes(model)} bytes of weights"


BF16_TIE = 0.02  # relative to the largest |logit|: the summed bf16 rounding of two runtimes over the model


def teacher_forced_margins(methods, prompt: list[int], tokens: list[int]) -> list[float]:
    """Feed `tokens` after `prompt` (chunked prefill, then decode) -> per token, how far its logit falls below the
    model's largest, relative to the largest |logit| (0 where it is the model's own greedy choice)."""
    T = len(prompt)
    for start in range(0, T, CHUNK):
        stop = min(T, start + CHUNK)
        logits = methods.prefill(torch.tensor([prompt[start:stop]]), torch.arange(start, stop))
    margins = []
    for i, tok in enumerate(tokens):
        row = logits.float()[0]
        margins.append(float((row.max() - row[tok]) / row.abs().max()))
        logits = methods.decode(torch.tensor([[tok]]), torch.tensor([T + i]))
    return margins


