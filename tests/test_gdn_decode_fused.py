"""The fused GDN decode step (gdn::conv_recurrent_gated_delta_rule: conv, gates, L2 norms and recurrence from the
in_proj output) and out_proj with the gated RMS norm in front (gdn::gated_norm_gemv), against float64.

Per-tensor tolerances, relative RMS against float64 from the same rounded inputs: float32 1e-5, bfloat16 1e-2 for
o and the recurrent state; the conv state holds copies of inputs and must be exact. gated_norm_gemv: every output
within the dot's forward-error scale, as tests/test_gemv.py. Outputs are NaN-poisoned. CPU cases run the kernels
through TRITON_INTERPRET=1 at small odd shapes (the interpreter's results equal the unfused kernels' bit for bit);
`cuda` cases run Qwen3.5-2B and 35B-A3B shapes. The model-level checks compare the fused decode path with the
unfused one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import gdn.kernels  # noqa: F401  (registers torch.ops.gdn.*)
from gdn.kernels.causal_conv1d import triton_conv
from gdn.kernels.gated_delta_rule import reference as ref
from gdn.kernels.gated_delta_rule import triton_decode, triton_fused_decode
from gdn.kernels.gemv import reference as gref
from gdn.kernels.gemv import triton_gated_norm_gemv, triton_gemv
from gdn.kernels.gemv.triton_gemv import PDL_MAX_K, GemvConfig

interpreted = pytest.mark.interpret
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
EPS = 1e-6


@dataclass(frozen=True)
class Case:
    Hk: int
    Hv: int
    K: int
    V: int
    W: int
    dtype: torch.dtype

    @property
    def C(self) -> int:  # conv channels
        return 2 * self.Hk * self.K + self.Hv * self.V

    @property
    def P(self) -> int:  # in_proj width: q | k | v | z | b | a
        return self.C + self.Hv * self.V + 2 * self.Hv

    @property
    def id(self) -> str:
        dt = "fp32" if self.dtype == torch.float32 else "bf16"
        return f"Hk{self.Hk}-Hv{self.Hv}-K{self.K}-V{self.V}-W{self.W}-{dt}"


def params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


CPU_CASES = [
    Case(2, 2, 16, 16, 4, torch.float32),  # Hv / Hk = 1
    Case(2, 4, 8, 12, 4, torch.bfloat16),  # the tiny test models' heads: padded K and V tiles
    Case(1, 3, 16, 8, 4, torch.float32),  # Hv / Hk = 3
    Case(2, 6, 8, 12, 3, torch.bfloat16),  # W 3: two state rows
    Case(1, 2, 16, 40, 4, torch.float32),  # three V tiles, the last ragged
    Case(2, 4, 48, 48, 4, torch.bfloat16),  # the bundled default model's heads
]
GPU_CASES = [Case(16, hv, 128, 128, 4, dt) for hv in (16, 32) for dt in DTYPES.values()]  # 2B, 35B-A3B


def inputs(c: Case, steps: int, device: str) -> dict:
    """Fresh random inputs: `steps` rows of in_proj output, the weights and both incoming states."""
    d = dict(device=device)
    return {
        "x": torch.randn(steps, c.P, **d).to(c.dtype),
        "cw": (torch.randn(c.C, c.W, **d) * 0.5).to(c.dtype),
        "A_log": torch.empty(c.Hv, **d).uniform_(0.5, 8).log(),
        "dt_bias": torch.randn(c.Hv, **d) * 0.5,
        "cs": torch.randn(1, c.W - 1, c.C, **d).to(c.dtype),
        "s": torch.randn(1, c.Hv, c.K, c.V, **d) * 0.5,
    }


def truth(c: Case, x: dict, counts: list[int], resets: list[bool]):
    """float64 steps: the conv over [state; x] with SiLU, then the recurrence; a pad (count 0) keeps both states
    (zeroed on reset) and outputs 0. -> (o [steps, Hv, V], conv state [1, W - 1, C], state [1, Hv, K, V])."""
    cs, s = x["cs"][0].double(), x["s"].double()
    w = x["cw"].double().T  # [W, C]
    outs = []
    for t, (n, reset) in enumerate(zip(counts, resets)):
        if reset:
            cs, s = torch.zeros_like(cs), torch.zeros_like(s)
        if n == 0:
            outs.append(torch.zeros(c.Hv, c.V, dtype=torch.float64, device=s.device))
            continue
        row = x["x"][t].double()
        window = torch.cat([cs, row[None, : c.C]])  # [W, C]
        y, cs = F.silu((window * w).sum(0)), window[1:]
        q, k, v = y.split([c.Hk * c.K, c.Hk * c.K, c.Hv * c.V])
        b, a = row[c.C + c.Hv * c.V :].split([c.Hv, c.Hv])
        g, beta = -x["A_log"].double().exp() * F.softplus(a + x["dt_bias"].double()), b.sigmoid()
        o, s = ref.naive_recurrence(q.view(1, 1, c.Hk, c.K), k.view(1, 1, c.Hk, c.K), v.view(1, 1, c.Hv, c.V),
                                    g.view(1, 1, c.Hv), beta.view(1, 1, c.Hv), s)
        outs.append(o[0, 0])
    return torch.stack(outs), cs[None], s


def run_fused(c: Case, x: dict, counts, resets, pdl: str = "on", use_count: bool = True):
    """The fused kernels step by step on copies of the states, each o NaN-poisoned first."""
    cs, s = x["cs"].clone(), x["s"].clone()
    outs = []
    for t, (n, reset) in enumerate(zip(counts, resets)):
        out = torch.full((1, c.Hv, c.V), float("nan"), dtype=c.dtype, device=s.device)
        count = torch.tensor([n], device=s.device) if use_count else None
        o = triton_fused_decode.conv_recurrent_gated_delta_rule(
            x["x"][t : t + 1], cs, x["cw"], x["A_log"], x["dt_bias"], s, torch.tensor([reset], device=s.device),
            count, pdl=pdl, out=out,
        )
        assert o.data_ptr() == out.data_ptr()
        outs.append(o[0])
    return torch.stack(outs), cs, s


def run_unfused(c: Case, x: dict, counts, resets):
    """The unfused Triton kernels (conv, then the recurrence) as the model called them."""
    cs, s = x["cs"].clone(), x["s"].clone()
    outs = []
    for t, (n, reset) in enumerate(zip(counts, resets)):
        row, flag, count = x["x"][t : t + 1], torch.tensor([reset], device=s.device), torch.tensor([n], device=s.device)
        y = triton_conv.causal_conv1d(row[:, : c.C].unsqueeze(0), cs, x["cw"], flag, count)
        q, k, v = y.split([c.Hk * c.K, c.Hk * c.K, c.Hv * c.V], dim=-1)
        b, a = row[:, c.C + c.Hv * c.V :].split([c.Hv, c.Hv], dim=-1)
        o = triton_decode.recurrent_gated_delta_rule(
            q.reshape(1, 1, c.Hk, c.K), k.reshape(1, 1, c.Hk, c.K), v.reshape(1, 1, c.Hv, c.V), a.reshape(1, 1, c.Hv),
            b.reshape(1, 1, c.Hv), x["A_log"], x["dt_bias"], s, flag, count,
        )
        outs.append(o[0, 0])
    return torch.stack(outs), cs, s


def rel_rms(got: torch.Tensor, want: torch.Tensor) -> float:
    got = got.double()
    assert torch.isfinite(got).all(), "non-finite values (a NaN-poisoned element left unwritten?)"
    return ((got - want).square().mean().sqrt() / want.square().mean().sqrt()).item()


def check(c: Case, got, want) -> None:
    (o, cs, s), (o64, cs64, s64) = got, want
    assert o.dtype == c.dtype
    assert rel_rms(o, o64) < TOL[c.dtype], f"o rel rms {rel_rms(o, o64):.2e}"
    assert rel_rms(s, s64) < TOL[c.dtype], f"state rel rms {rel_rms(s, s64):.2e}"
    assert torch.equal(cs, cs64.to(c.dtype)), "the conv state is not the last W - 1 real inputs"


# steps: a sequence start (reset), real tokens, a pad in between, and a pad on reset
SCHEDULE = {"steps": ([1, 1, 1, 1], [False] * 4), "reset": ([1, 1, 1], [True, False, False]),
            "pad": ([1, 0, 1, 0], [False] * 4), "reset_pad": ([0, 1, 1], [True, False, False])}


def fused_matches(c: Case, device: str, schedule: str, pdl: str = "on") -> None:
    counts, resets = SCHEDULE[schedule]
    x = inputs(c, len(counts), device)
    for t, n in enumerate(counts):
        if n == 0:
            x["x"][t] = float("nan")  # a pad's input is garbage: none of it may enter
    if resets[0]:
        x["cs"].fill_(float("nan"))  # reset must never read the incoming states
        x["s"].fill_(float("nan"))
    check(c, run_fused(c, x, counts, resets, pdl), truth(c, x, counts, resets))


@interpreted
@pytest.mark.parametrize("schedule", list(SCHEDULE))
@pytest.mark.parametrize("c", params(CPU_CASES))
def test_fused_matches_float64_cpu(c, schedule):
    fused_matches(c, "cpu", schedule)


@interpreted
@pytest.mark.parametrize("c", params(CPU_CASES[:2]))
def test_fused_without_count_cpu(c):
    """count None: every step real, as with count 1."""
    x = inputs(c, 3, "cpu")
    want = run_fused(c, x, [1, 1, 1], [False] * 3)
    got = run_fused(c, x, [1, 1, 1], [False] * 3, use_count=False)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@interpreted
@pytest.mark.parametrize("schedule", list(SCHEDULE))
@pytest.mark.parametrize("c", params(CPU_CASES))
def test_fused_equals_unfused_kernels_cpu(c, schedule):
    """Under the interpreter the fused kernel does the unfused kernels' arithmetic in their order: bit-equal o
    and states, pads and resets included."""
    counts, resets = SCHEDULE[schedule]
    x = inputs(c, len(counts), "cpu")
    got, want = run_fused(c, x, counts, resets), run_unfused(c, x, counts, resets)
    for name, a, b in zip(("o", "conv state", "state"), got, want):
        assert torch.equal(a, b), f"{name} differs: max {(a.double() - b.double()).abs().max().item():.2e}"


@interpreted
@pytest.mark.parametrize("c", params(CPU_CASES[:2]))
def test_pad_leaves_states_bit_equal_cpu(c):
    x = inputs(c, 1, "cpu")
    x["x"].fill_(float("nan"))
    o, cs, s = run_fused(c, x, [0], [False])
    assert torch.equal(cs, x["cs"]) and torch.equal(s, x["s"]) and (o == 0).all()


def test_reference_matches_float64():
    """The CPU op (the reference composition: conv, then the recurrence) over steps, pads and resets."""
    c = Case(2, 4, 8, 12, 4, torch.float32)
    for schedule, (counts, resets) in SCHEDULE.items():
        x = inputs(c, len(counts), "cpu")
        cs, s = x["cs"].clone(), x["s"].clone()
        outs = [torch.ops.gdn.conv_recurrent_gated_delta_rule(
            x["x"][t : t + 1], cs, x["cw"], x["A_log"], x["dt_bias"], s, torch.tensor([r]), torch.tensor([n]))[0]
            for t, (n, r) in enumerate(zip(counts, resets))]
        check(c, (torch.stack(outs), cs, s), truth(c, x, counts, resets))


def test_fused_bad_shapes_named():
    c = Case(2, 4, 8, 12, 4, torch.float32)
    x = inputs(c, 1, "cpu")
    good = dict(projected=x["x"], conv_state=x["cs"], conv_weight=x["cw"], A_log=x["A_log"], dt_bias=x["dt_bias"],
                state=x["s"], reset=torch.tensor([False]))

    def args(**kw):
        return {**good, **kw}

    bad = {
        "projected": args(projected=x["x"][:, :-1]),
        "Hk": args(conv_state=torch.zeros(1, 3, c.C + 3), conv_weight=torch.zeros(c.C + 3, 4)),
        "conv weight": args(conv_weight=torch.zeros(c.C, 3)),
        "state": args(state=x["s"].to(torch.bfloat16)),
    }
    for name, kw in bad.items():
        with pytest.raises(ValueError) as e:
            triton_fused_decode.conv_recurrent_gated_delta_rule(**kw)
        assert "\n" not in str(e.value), name
    with pytest.raises(ValueError, match=rf"projected \(1, {c.P - 1}\)"):
        triton_fused_decode.conv_recurrent_gated_delta_rule(**bad["projected"])


# ---------------------------------------------------------------------------------------------- gated_norm_gemv

def gated_inputs(N: int, Hv: int, V: int, dtype, device: str, nw_dtype=None):
    o = (torch.randn(1, Hv * V, device=device) * 3).to(dtype)
    z = (torch.randn(1, Hv * V, device=device) * 2).to(dtype)
    nw = (torch.rand(V, device=device) + 0.5).to(nw_dtype or dtype)
    w = (torch.randn(N, Hv * V, device=device) * (Hv * V) ** -0.5).to(dtype)
    return o, z, nw, w


def gated_truth(o, z, nw, V: int) -> torch.Tensor:
    """float64 w (x / rms(x)) silu(z) per head, flattened [1, Hv V]."""
    x, z = o.double().view(-1, V), z.double().view(-1, V)
    n = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + EPS) * nw.double()
    return (n * F.silu(z)).reshape(1, -1)


def gated_matches(N: int, Hv: int, V: int, dtype, device: str, cfg: GemvConfig | None = None, nw_dtype=None):
    o, z, nw, w = gated_inputs(N, Hv, V, dtype, device, nw_dtype)
    out = torch.full((1, N), float("nan"), dtype=dtype, device=device)
    y = triton_gated_norm_gemv.gated_norm_gemv(o, z, nw, EPS, w, cfg, out=out)
    assert y.data_ptr() == out.data_ptr() and torch.isfinite(y).all()
    a64 = gated_truth(o, z, nw, V)
    diff = (y.double() - a64 @ w.double().T).abs()
    bound = a64.abs() @ w.double().abs().T  # the dot's forward-error scale, per output
    assert (diff <= TOL[dtype] * bound).all(), f"max err / bound {(diff / bound).max().item():.2e}"
    # the reference's input (GatedRMSNorm's roundings) in a float64 dot: the kernel rounds its input the same way,
    # so y differs by its own rounding and the float32 sum only
    want = gref.gated_rms_norm(o.view(1, Hv, V), z.view(1, Hv, V), nw, EPS).double().view(1, -1) @ w.double().T
    slack = 2 * torch.finfo(dtype).eps + 16 * torch.finfo(torch.float32).eps
    assert ((y.double() - want).abs() <= slack * bound).all(), "the input is not rounded as GatedRMSNorm rounds"


GATED_CPU = [(1, 1, 16), (63, 3, 12), (65, 5, 24), (8, 4, 48)]  # (N, Hv, V)


@interpreted
@pytest.mark.parametrize("pdl", ["off", "on"])
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("N,Hv,V", GATED_CPU, ids=[f"N{n}-Hv{h}-V{v}" for n, h, v in GATED_CPU])
def test_gated_norm_gemv_cpu(N, Hv, V, dt, pdl):
    """"on": the PDL form (every head in one step); "off" with 32-column steps: the loop form, heads per step."""
    gated_matches(N, Hv, V, DTYPES[dt], "cpu", GemvConfig(block_k=32, pdl=pdl))


@interpreted
@pytest.mark.parametrize("N,Hv,V", [(70, 5, 96), (6, 33, 128)], ids=["pdl_form", "loop_form"])
def test_gated_norm_gemv_default_config_cpu(N, Hv, V):
    """The op's config on both sides of PDL_MAX_K (33 heads of 128: 8 whole heads per step, a ragged last step)."""
    assert (Hv * V <= PDL_MAX_K) == (N == 70)
    gated_matches(N, Hv, V, torch.bfloat16, "cpu")


@interpreted
def test_gated_norm_gemv_float32_weight_cpu():
    """A float32 norm weight with bf16 o: the weight's product is float32 (type promotion), not rounded."""
    gated_matches(9, 3, 12, torch.bfloat16, "cpu", nw_dtype=torch.float32)


def roundings_match(Hv: int, V: int, device: str) -> None:
    """bf16 with identity weights: y is the kernel's input itself, which must be the reference's (GatedRMSNorm's
    roundings in its order; a skipped rounding changed about a quarter of them). rsqrt and the sigmoid may differ
    in the last float32 bit, which can move a bf16 rounding: at most 2 % of the values, by one unit."""
    o, z, nw, _ = gated_inputs(1, Hv, V, torch.bfloat16, device)
    eye = torch.eye(Hv * V, dtype=torch.bfloat16, device=device)
    y = triton_gated_norm_gemv.gated_norm_gemv(o, z, nw, EPS, eye).float()
    a = gref.gated_rms_norm(o.view(1, Hv, V), z.view(1, Hv, V), nw, EPS).view(1, -1).float()
    differ = y != a
    ulp = torch.finfo(torch.bfloat16).eps * a.abs().clamp(min=1e-30)
    assert differ.float().mean() <= 0.02, f"{differ.sum().item()} of {a.numel()} differ"
    assert ((y - a).abs() <= ulp).all()


@interpreted
def test_gated_norm_gemv_roundings_cpu():
    roundings_match(8, 64, "cpu")


@pytest.mark.parametrize("dt", list(DTYPES))
def test_gated_reference_is_the_models_norm(dt):
    """The CPU op equals the model's GatedRMSNorm, then the projection, bit for bit."""
    from gdn.export.model import GatedRMSNorm

    Hv, V = 3, 12
    o, z, nw, w = gated_inputs(5, Hv, V, DTYPES[dt], "cpu")
    norm = GatedRMSNorm(V, EPS).to(DTYPES[dt])
    norm.weight.data.copy_(nw)
    want = F.linear(norm(o.view(1, Hv, V), z.view(1, Hv, V)).reshape(1, -1), w)
    assert torch.equal(torch.ops.gdn.gated_norm_gemv(o, z, nw, EPS, w), want)


def test_gated_norm_gemv_bad_shapes_named():
    o, z, nw, w = gated_inputs(4, 3, 12, torch.float32, "cpu")
    for kw in ({"o": o[:, :-1]}, {"nw": torch.ones(7)}, {"w": w.T.contiguous().T}):
        args = {"o": o, "z": z, "nw": nw, "w": w, **kw}
        with pytest.raises(ValueError, match="gated_norm_gemv wants") as e:
            triton_gated_norm_gemv.gated_norm_gemv(args["o"], args["z"], args["nw"], EPS, args["w"])
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------- the model

def interpreted_sets():
    """(unfused, fused) kernel sets for the CPU: the CUDA set's Triton kernels (run by the interpreter) for the GDN
    chain from in_proj's output to out_proj's, the reference for the rest (the same in both; the interpreter
    would take minutes over every projection)."""
    from gdn.kernels import REFERENCE

    unfused = dataclasses.replace(
        REFERENCE, name="interpreted", causal_conv1d=triton_conv.causal_conv1d,
        recurrent_gated_delta_rule=triton_decode.recurrent_gated_delta_rule, gemv=triton_gemv.gemv,
    )
    fused = dataclasses.replace(
        unfused, name="interpreted_fused",
        conv_recurrent_gated_delta_rule=triton_fused_decode.conv_recurrent_gated_delta_rule,
        gated_norm_gemv=triton_gated_norm_gemv.gated_norm_gemv,
    )
    return unfused, fused


def with_kernels(model, ks):
    for m in model.modules():
        if hasattr(m, "kernels") and not isinstance(m.kernels, str):
            m.kernels = ks
    return model


def decode_run(model, steps: list[int], device: str):
    """Prefill 5 tokens, then one-token steps at `steps` (-1: a pad) -> (logits of each real step, states)."""
    g = torch.Generator().manual_seed(3)
    vocab = model.cfg.vocab_size
    logits = []
    with torch.no_grad():
        model.prefill(torch.randint(0, vocab, (1, 5), generator=g).to(device), torch.arange(5, device=device))
        for pos in steps:
            tok = torch.randint(0, vocab, (1, 1), generator=g).to(device)
            out = model(tok, torch.tensor([pos], device=device))
            if pos >= 0:
                logits.append(out)
    return torch.cat(logits), {n: b.clone() for n, b in model.state_buffers().items()}


MODEL_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def models_agree(dtype, device: str, unfused_ks, fused_ks) -> None:
    from runner_eager import DEFAULT_MODEL

    from gdn.export.checkpoint import load_model

    steps = [5, -1, 6, 7]
    runs = []
    for ks in (unfused_ks, fused_ks):
        # the CUDA set's KV cache layout on the GPU, the reference's on the CPU (whose attention the sets keep)
        base = "ops" if device == "cuda" else "reference"
        model = load_model(DEFAULT_MODEL, 64, dtype, torch.float32, base, device=device)
        runs.append(decode_run(with_kernels(model, ks), steps, device))
    (want, want_states), (got, got_states) = runs
    assert rel_rms(got, want.double()) < MODEL_TOL[dtype], f"logits rel rms {rel_rms(got, want.double()):.2e}"
    for name, b in want_states.items():
        if "recurrent_state" in name or "conv_state" in name:
            err = rel_rms(got_states[name], b.double())
            assert err < MODEL_TOL[dtype], f"{name} rel rms {err:.2e}"


@interpreted
@pytest.mark.parametrize("dt", list(DTYPES))
def test_model_fused_decode_equals_unfused_cpu(dt):
    """The bundled model (trained weights; Hk 2, Hv 4, K = V = 48) decoding through the interpreted fused step
    against the interpreted unfused kernels: logits of every real step and the GDN states after a pad."""
    models_agree(DTYPES[dt], "cpu", *interpreted_sets())


@pytest.mark.slow
def test_decode_export_keeps_fused_ops_cpu():
    """torch.export of the CUDA set's decode method (on CPU tensors the ops run their reference kernels): one node
    of each fused op per GDN layer, none of the unfused ones, only the states mutated, and the exported program
    equals eager over real steps and a pad."""
    from runner_eager import DEFAULT_MODEL

    from gdn.export.checkpoint import load_model

    model = load_model(DEFAULT_MODEL, 64, torch.float32, torch.float32, "ops")
    gdn_layers = sum(hasattr(layer, "linear_attn") for layer in model.layers)
    ep = torch.export.export(model, (torch.tensor([[3]]), torch.tensor([0])), strict=True)
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert sum(t.startswith("gdn.conv_recurrent_gated_delta_rule") for t in targets) == gdn_layers
    assert sum(t.startswith("gdn.gated_norm_gemv") for t in targets) == gdn_layers
    assert not [t for t in targets if t.startswith(("gdn.causal_conv1d", "gdn.recurrent_gated_delta_rule"))]
    # the functional form (what the lowering takes) lists the buffers each method writes
    mutated = [n.rsplit(".", 1)[-1] for n in ep.run_decompositions({}).graph_signature.buffers_to_mutate.values()]
    assert mutated.count("conv_state") == mutated.count("recurrent_state") == gdn_layers, mutated
    assert set(mutated) <= {"conv_state", "recurrent_state", "k_cache", "v_cache"}, mutated
    exported, eager = ep.module(), load_model(DEFAULT_MODEL, 64, torch.float32, torch.float32, "ops")
    for pos, tok in [(0, 5), (1, 9), (-1, 10**6), (2, 7)]:
        args = (torch.tensor([[tok]]), torch.tensor([pos]))
        torch.testing.assert_close(exported(*args), eager(*args), atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------------------------- GPU, real shapes

@pytest.mark.cuda
@pytest.mark.parametrize("pdl", ["on", "serial", "off"])
@pytest.mark.parametrize("schedule", list(SCHEDULE))
@pytest.mark.parametrize("c", params(GPU_CASES))
def test_fused_matches_float64_cuda(c, schedule, pdl):
    fused_matches(c, "cuda", schedule, pdl)


@pytest.mark.cuda
@pytest.mark.parametrize("c", params(GPU_CASES))
def test_fused_close_to_unfused_kernels_cuda(c):
    """On the GPU the compiler may contract the two kernels' arithmetic differently: within the tolerances;
    the conv state exactly."""
    counts, resets = SCHEDULE["pad"]
    x = inputs(c, len(counts), "cuda")
    (o, cs, s), (o2, cs2, s2) = run_fused(c, x, counts, resets), run_unfused(c, x, counts, resets)
    assert torch.equal(cs, cs2)
    assert rel_rms(o, o2.double()) < TOL[c.dtype] and rel_rms(s, s2.double()) < TOL[c.dtype]


@pytest.mark.cuda
@pytest.mark.parametrize("c", params(GPU_CASES[:2]))
def test_pad_leaves_states_bit_equal_cuda(c):
    x = inputs(c, 1, "cuda")
    x["x"].fill_(float("nan"))
    o, cs, s = run_fused(c, x, [0], [False])
    assert torch.equal(cs, x["cs"]) and torch.equal(s, x["s"]) and (o == 0).all()


GATED_GPU = {"out_proj_2b": (2048, 16, 128), "out_proj_35b": (2048, 32, 128)}


@pytest.mark.cuda
@pytest.mark.parametrize("pdl", ["on", "serial", "off"])
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("name", list(GATED_GPU))
def test_gated_norm_gemv_cuda(name, dt, pdl):
    gated_matches(*GATED_GPU[name], DTYPES[dt], "cuda", GemvConfig(pdl=pdl))


@pytest.mark.cuda
def test_gated_norm_gemv_roundings_cuda():
    roundings_match(16, 128, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("dt", list(DTYPES))
def test_model_fused_decode_equals_unfused_cuda(dt):
    """The CUDA set (fused) against the same set without the fused ops, eager on the GPU."""
    from gdn.kernels import OPS

    unfused = dataclasses.replace(OPS, conv_recurrent_gated_delta_rule=None, gated_norm_gemv=None)
    models_agree(DTYPES[dt], "cuda", unfused, OPS)
