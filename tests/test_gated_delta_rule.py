"""Triton gated delta rule (chunked prefill, fused one-token decode) against a float64 recurrence.

Per-tensor tolerances are relative RMS errors against float64 computed from the same (rounded) inputs:
float32 inputs 1e-5 for o and the state; bfloat16 inputs 1e-2 for o (itself rounded to bf16) and the state.
CPU cases run the kernels through TRITON_INTERPRET=1 at small shapes; `cuda` cases run the real shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from gdn.kernels.gated_delta_rule import reference as ref
from gdn.kernels.gated_delta_rule import triton_chunk, triton_decode

interpreted = pytest.mark.interpret
TOL = {torch.float32: {"o": 1e-5, "state": 1e-5}, torch.bfloat16: {"o": 1e-2, "state": 1e-2}}
LENGTHS = (1, 2, 63, 64, 65, 127, 500, 1000)


@dataclass(frozen=True)
class Case:
    T: int
    Hk: int
    Hv: int
    K: int
    V: int
    dtype: torch.dtype
    init: str  # "zero" | "rand": the incoming state
    keys: str = "random"  # "random" | "aligned": keys near one direction, weak decay (as in trained models)

    @property
    def id(self) -> str:
        dt = {torch.float32: "fp32", torch.bfloat16: "bf16"}[self.dtype]
        aligned = "-aligned" if self.keys == "aligned" else ""
        return f"T{self.T}-Hk{self.Hk}-Hv{self.Hv}-K{self.K}-V{self.V}-{dt}-{self.init}{aligned}"


def params(cases: list[Case], marks=()) -> list:
    return [pytest.param(c, id=c.id, marks=marks) for c in cases]


CPU_CHUNK = (
    [Case(T, 2, 4, 16, 16, torch.float32, "rand") for T in LENGTHS]
    + [Case(T, 2, 2, 16, 32, torch.bfloat16, "zero") for T in (1, 65, 127)]
    # the tiny test models' heads: tiles padded (16-bit tiles to 64)
    + [Case(65, 2, 4, 8, 12, dt, "rand") for dt in (torch.float32, torch.bfloat16)]
    + [Case(64, 2, 2, 32, 16, torch.float32, "zero")]
    + [Case(T, 2, 4, 48, 48, torch.float32, "zero", "aligned") for T in (64, 100)]
    # V = 96: two state-pass V tiles of 64, the second half masked; K = V = 64 and 128 bf16: unpadded 16-bit tiles
    + [Case(100, 2, 4, 32, 96, torch.float32, "rand"), Case(65, 2, 4, 64, 64, torch.bfloat16, "rand")]
    + [Case(130, 2, 4, 128, 128, torch.bfloat16, "rand", "aligned")]
)
GPU_CHUNK = [Case(T, 16, 32, 128, 128, dt, "rand") for dt in (torch.float32, torch.bfloat16) for T in LENGTHS + (8192,)] + [
    Case(T, 16, 16, 128, 128, dt, "zero") for dt in (torch.float32, torch.bfloat16) for T in (65, 1000)
] + [Case(T, 16, 32, 128, 128, dt, "rand", "aligned") for dt in (torch.float32, torch.bfloat16) for T in (64, 1000)]
# the tiny test models' heads (K 8, V 12) and small powers of two: 16-bit tiles padded to 64
GPU_SMALL_HEADS = [Case(37, 2, 4, k, v, torch.bfloat16, "rand") for k, v in ((8, 12), (16, 16), (32, 32), (64, 64))]
CPU_DECODE = [Case(1, 2, 4, 16, 16, torch.float32, "rand"), Case(1, 2, 2, 8, 12, torch.bfloat16, "rand")]
GPU_DECODE = [Case(1, 16, hv, 128, 128, dt, "rand") for hv in (16, 32) for dt in (torch.float32, torch.bfloat16)]


def rel_rms(got: torch.Tensor, want: torch.Tensor) -> float:
    got = got.double()
    assert torch.isfinite(got).all(), "non-finite values (a NaN-poisoned element left unwritten?)"
    return ((got - want).square().mean().sqrt() / want.square().mean().sqrt()).item()


def gates64(a, b, A_log, dt_bias):
    return -A_log.double().exp() * F.softplus(a.double() + dt_bias.double()), b.double().sigmoid()


def keys(c: Case, T: int, device: str) -> torch.Tensor:
    """Random keys, or keys of a trained model's kind: one shared direction plus noise (cosine ~0.9
    between tokens), where the WY matrix of a chunk is badly conditioned."""
    k = torch.randn(1, T, c.Hk, c.K, device=device)
    if c.keys == "aligned":
        k = torch.randn(1, 1, c.Hk, c.K, device=device) + 0.3 * k
    return k.to(c.dtype)


def make(c: Case, device: str, T: int | None = None) -> dict:
    """Fresh random inputs; g and beta come from raw projections as in the model."""
    T = c.T if T is None else T
    d = dict(device=device)
    aligned = c.keys == "aligned"
    x = {
        "q": torch.randn(1, T, c.Hk, c.K, **d).to(c.dtype),
        "k": keys(c, T, device),
        "v": torch.randn(1, T, c.Hv, c.V, **d).to(c.dtype),
        "a": torch.randn(1, T, c.Hv, **d),
        "b": torch.randn(1, T, c.Hv, **d) + (2.0 if aligned else 0.0),
        # slow decay where aligned (A = exp(A_log) in [0.01, 0.1]), so a chunk's tokens keep interacting
        "A_log": torch.empty(c.Hv, **d).uniform_(*((0.01, 0.1) if aligned else (0.5, 8))).log(),
        "dt_bias": torch.randn(c.Hv, **d) * 0.5,
        "state": torch.randn(1, c.Hv, c.K, c.V, **d) * 0.5 if c.init == "rand" else torch.zeros(1, c.Hv, c.K, c.V, **d),
    }
    x["g"], x["beta"] = ref.gates(x["a"], x["b"], x["A_log"], x["dt_bias"])
    return x


def truth(x: dict, state: torch.Tensor | None = None, gates: str = "raw"):
    """float64 recurrence. gates "raw": g and beta from the raw a, b in float64 (what the decode kernel takes);
    "given": x's float32 g and beta, the chunk kernel's inputs, widened."""
    s = x["state"] if state is None else state
    if gates == "raw":
        g, beta = gates64(x["a"], x["b"], x["A_log"], x["dt_bias"])
    else:
        g, beta = x["g"].double(), x["beta"].double()
    return ref.naive_recurrence(x["q"].double(), x["k"].double(), x["v"].double(), g, beta, s.double())


def run_chunk(x: dict, reset: bool, state: torch.Tensor) -> torch.Tensor:
    out = torch.full_like(x["v"], float("nan"))
    flag = torch.tensor([reset], device=state.device)
    return triton_chunk.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], state, flag, out=out)


def run_decode(x: dict, t: int, state: torch.Tensor, reset: bool = False) -> torch.Tensor:
    sl = slice(t, t + 1)
    out = torch.full_like(x["v"][:, sl], float("nan"))
    flag = torch.tensor([reset], device=state.device)
    return triton_decode.recurrent_gated_delta_rule(
        x["q"][:, sl], x["k"][:, sl], x["v"][:, sl], x["a"][:, sl], x["b"][:, sl], x["A_log"], x["dt_bias"],
        state, flag, out=out,
    )


def check(c: Case, o, state, o64, s64) -> None:
    tol = TOL[c.dtype]
    assert o.dtype == c.dtype
    assert rel_rms(o, o64) < tol["o"], f"o rel rms {rel_rms(o, o64):.2e}"
    assert rel_rms(state, s64) < tol["state"], f"state rel rms {rel_rms(state, s64):.2e}"


def chunk_matches(c: Case, device: str) -> None:
    x = make(c, device)
    o64, s64 = truth(x)
    state = x["state"].clone()
    o = run_chunk(x, False, state)
    check(c, o, state, o64, s64)


def chunk_reset_reads_zero(c: Case, device: str) -> None:
    x = make(c, device)
    o64, s64 = truth(x, torch.zeros_like(x["state"]))
    state = torch.full_like(x["state"], float("nan"))  # reset must never read it
    o = run_chunk(x, True, state)
    check(c, o, state, o64, s64)


def decode_matches(c: Case, device: str, steps: int = 3) -> None:
    x = make(c, device, T=steps)
    o64, s64 = truth(x)
    state = x["state"].clone()
    o = torch.cat([run_decode(x, t, state) for t in range(steps)], dim=1)
    check(c, o, state, o64, s64)


def decode_reset_reads_zero(c: Case, device: str) -> None:
    x = make(c, device)
    o64, s64 = truth(x, torch.zeros_like(x["state"]))
    state = torch.full_like(x["state"], float("nan"))
    o = run_decode(x, 0, state, reset=True)
    check(c, o, state, o64, s64)


def prefill_then_decode(c: Case, device: str, steps: int = 4) -> None:
    """Chunked prefill of T tokens, then `steps` fused decode steps: equals the token-by-token recurrence."""
    x = make(c, device, T=c.T + steps)
    o64, s64 = truth(x)
    state = x["state"].clone()
    pre = {n: (t[:, : c.T] if t.dim() >= 3 else t) for n, t in x.items() if n != "state"}
    outs = [run_chunk(pre, False, state)]
    outs += [run_decode(x, c.T + i, state) for i in range(steps)]
    check(c, torch.cat(outs, dim=1), state, o64, s64)


@interpreted
@pytest.mark.parametrize("c", params(CPU_CHUNK))
def test_chunk_cpu(c):
    chunk_matches(c, "cpu")


@interpreted
@pytest.mark.parametrize("c", params([Case(65, 2, 4, 16, 16, torch.float32, "rand"),
                                      Case(1, 2, 4, 8, 12, torch.bfloat16, "rand")]))
def test_chunk_reset_cpu(c):
    chunk_reset_reads_zero(c, "cpu")


@interpreted
@pytest.mark.parametrize("c", params(CPU_DECODE))
def test_decode_cpu(c):
    decode_matches(c, "cpu")
    decode_reset_reads_zero(c, "cpu")


@interpreted
@pytest.mark.parametrize("c", params([Case(65, 2, 4, 16, 16, torch.float32, "rand"), Case(2, 2, 2, 8, 12, torch.float32, "zero")]))
def test_prefill_then_decode_cpu(c):
    prefill_then_decode(c, "cpu")


def test_bad_heads_named():
    q = torch.randn(1, 3, 3, 16)
    v = torch.randn(1, 3, 4, 16)
    with pytest.raises(ValueError, match="Hv=4 are not a multiple of key heads Hk=3"):
        triton_chunk.chunk_gated_delta_rule(q, q, v, v[..., 0], v[..., 0], torch.zeros(1, 4, 16, 16), torch.tensor([True]))


@pytest.mark.cuda
@pytest.mark.parametrize("c", params(GPU_CHUNK))
def test_chunk_cuda(c):
    chunk_matches(c, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("c", params(GPU_SMALL_HEADS))
def test_chunk_small_heads_cuda(c):
    chunk_matches(c, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("c", params([Case(127, 16, 32, 128, 128, torch.bfloat16, "rand")]))
def test_chunk_reset_cuda(c):
    chunk_reset_reads_zero(c, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("c", params(GPU_DECODE))
def test_decode_cuda(c):
    decode_matches(c, "cuda")
    decode_reset_reads_zero(c, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize(
    "c", params([Case(1000, 16, 32, 128, 128, dt, "rand") for dt in (torch.float32, torch.bfloat16)])
)
def test_prefill_then_decode_cuda(c):
    prefill_then_decode(c, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("c", params([Case(65, 16, 32, 128, 128, torch.bfloat16, "rand")]))
def test_ops_equal_kernels_cuda(c):
    """The registered ops run the same kernels: bit-equal outputs and states (outputs NaN-poisoned through
    the caching allocator, which hands the freed NaN block to the op's output)."""
    x = make(c, "cuda")
    reset = torch.tensor([False], device="cuda")
    s1, s2 = x["state"].clone(), x["state"].clone()
    want = run_chunk(x, False, s1)
    poison = torch.full_like(x["v"], float("nan"))
    del poison
    got = torch.ops.gdn.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], s2, reset)
    assert torch.equal(got, want) and torch.equal(s1, s2)
    want = run_decode(x, 0, s1)
    poison = torch.full_like(want, float("nan"))
    del poison
    sl = slice(0, 1)
    got = torch.ops.gdn.recurrent_gated_delta_rule(
        x["q"][:, sl], x["k"][:, sl], x["v"][:, sl], x["a"][:, sl], x["b"][:, sl], x["A_log"], x["dt_bias"], s2, reset
    )
    assert torch.equal(got, want) and torch.equal(s1, s2)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["qwen3_next", "qwen3_5_moe"])
@pytest.mark.parametrize("prompt_len", [70])
def test_model_ops_match_reference_cuda(name, prompt_len, hf_checkpoints):
    """tests/hf_tiny checkpoints (K=8, V=12: padded tiles) with kernels="ops" against kernels="reference"."""
    from gdn.export.checkpoint import load_model

    path, hf = hf_checkpoints(name)
    models = [load_model(path, max_seq_len=128, kernels=ks, device="cuda") for ks in ("reference", "ops")]
    vocab = hf.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (1, prompt_len), device="cuda")
    steps = [ids] + [torch.randint(0, vocab, (1, 1), device="cuda") for _ in range(5)]
    pos = 0
    with torch.no_grad():
        for tok in steps:
            input_pos = torch.arange(pos, pos + tok.shape[1], device="cuda")
            want, got = (m(tok, input_pos)[0] for m in models)
            assert (got - want).abs().max().item() < 1e-4, f"logits differ at position {pos}"
            pos += tok.shape[1]


REF_CASES = [Case(T, 2, 4, 16, 16, torch.float32, "rand", keys) for T in (63, 64, 65, 127) for keys in ("random", "aligned")]


@pytest.mark.parametrize("c", params(REF_CASES))
def test_reference_chunk_matches_float64(c):
    """The reference (the spec, and what CPU artifacts run) against the float64 recurrence."""
    x = make(c, "cpu")
    o64, s64 = truth(x)
    state = x["state"].clone()
    o = ref.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], state, torch.tensor([False]))
    check(c, o, state, o64, s64)


def test_reference_chunk_on_the_trained_models_keys():
    """Layer 0 of the bundled trained model, a 100-token prompt: its keys are nearly parallel, the case that
    broke the squaring inverse. The reference's prefill equals the float64 recurrence (fp32 tolerances)."""
    import dataclasses

    from gdn.export.checkpoint import load_model
    from gdn.export.pipeline import DEFAULT_CHECKPOINT

    model = load_model(DEFAULT_CHECKPOINT, 128, torch.float32, torch.float32, "reference", "cpu")
    gdn = model.layers[0].linear_attn
    seen = {}

    def capture(q, k, v, g, beta, state, reset):
        seen.update(q=q.clone(), k=k.clone(), v=v.clone(), g=g.clone(), beta=beta.clone())
        return ref.chunk_gated_delta_rule(q, k, v, g, beta, state, reset)

    gdn.kernels = dataclasses.replace(gdn.kernels, chunk_gated_delta_rule=capture)
    T = 100
    with torch.no_grad():
        model.prefill(torch.randint(0, model.cfg.vocab_size, (1, T)), torch.arange(T))
    o64, s64 = ref.naive_recurrence(*(seen[n].double() for n in ("q", "k", "v", "g", "beta")),
                                    torch.zeros_like(gdn.recurrent_state, dtype=torch.float64))
    assert rel_rms(gdn.recurrent_state, s64) < TOL[torch.float32]["state"]
    state = torch.zeros_like(gdn.recurrent_state)
    o = ref.chunk_gated_delta_rule(seen["q"], seen["k"], seen["v"], seen["g"], seen["beta"], state, torch.tensor([True]))
    assert rel_rms(o, o64) < TOL[torch.float32]["o"], f"o rel rms {rel_rms(o, o64):.2e}"


# ---------------------------------------------------------------- pads: tokens that change no state
# The model marks a prefill pad (rows n .. T-1, input_pos -1) with q = k = v = 0 (the conv zeroes its rows) and
# g = beta = 0; a decode pad with count 0 (the decode op's optional argument), which selects g = beta = 0 and k = 0
# over whatever the inputs hold. Then exp(g) = 1 and the write k (beta (v - S^T k)) is exactly 0, so the state
# ends bit-equal to the call without the pads, in the Triton kernels (a partly padded chunk is the same arithmetic
# as a masked one, an all-pad chunk S * 1 + 0) and the references, and the real rows of o are bit-equal to the
# unpadded call's (the kernels: same tiles at any T).

def as_pads(x: dict, n: int) -> dict:
    """x with its rows n .. T-1 turned into pads, as the model sends them."""
    def pad(name, value):
        t = x[name].clone()
        t[:, n:] = value
        return t

    return {**x, **{name: pad(name, 0.0) for name in ("q", "k", "v", "g", "beta")}}


def first(x: dict, n: int) -> dict:
    return {name: t[:, :n] if name in ("q", "k", "v", "g", "beta", "a", "b") else t for name, t in x.items()}


def chunk_pads_match(c: Case, n: int, device: str) -> None:
    """c.T tokens of which the last c.T - n are pads, against the n-token call (bit-equal) and float64."""
    x = as_pads(make(c, device), n)
    s_pad, s_plain = x["state"].clone(), x["state"].clone()
    o = run_chunk(x, False, s_pad)
    want = run_chunk(first(x, n), False, s_plain)
    assert torch.equal(s_pad, s_plain), "the pads changed the state"
    assert torch.equal(o[:, :n], want), "the real rows differ from the unpadded call"
    assert torch.equal(o[:, n:], torch.zeros_like(o[:, n:])), "a pad's o is not 0"
    o64, s64 = truth(first(x, n), gates="given")
    check(c, o[:, :n], s_pad, o64, s64)


PAD_CHUNKS = ((2, 1), (16, 15), (32, 17), (64, 63), (128, 65), (128, 64), (128, 1), (200, 3))


@interpreted
@pytest.mark.parametrize("T,n", PAD_CHUNKS, ids=[f"T{t}-n{n}" for t, n in PAD_CHUNKS])
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_chunk_pads_cpu(T, n, dt):
    chunk_pads_match(Case(T, 2, 4, 16, 16, dt, "rand"), n, "cpu")


@pytest.mark.parametrize("T,n", PAD_CHUNKS, ids=[f"T{t}-n{n}" for t, n in PAD_CHUNKS])
def test_float64_recurrence_pads(T, n):
    """The spec's arithmetic in float64: a pad step is S * exp(0) + 0 k^T (...), the state exactly unchanged."""
    x = {k: v.double() if v.is_floating_point() else v for k, v in as_pads(make(Case(T, 2, 4, 8, 12, torch.float32,
                                                                                      "rand"), "cpu"), n).items()}
    o, s = truth(x, gates="given")
    want_o, want_s = truth(first(x, n), gates="given")
    assert torch.equal(s, want_s) and torch.equal(o[:, :n], want_o) and not o[:, n:].any()


@pytest.mark.parametrize("kind", ["reference", "cpu"])
@pytest.mark.parametrize("T,n", PAD_CHUNKS, ids=[f"T{t}-n{n}" for t, n in PAD_CHUNKS])
def test_reference_chunk_pads(T, n, kind):
    """The CPU kernels (float32 inside): cpu.py's state bit-equal to the unpadded call's (it pads to whole chunks
    with the same zeros, so its chunks are the same arithmetic); the reference's within float32 rounding of it
    (its last chunk is shorter without the pads), and the real rows of o too (elementwise ops at another length)."""
    from gdn.kernels.gated_delta_rule import cpu

    fn = {"reference": ref.chunk_gated_delta_rule, "cpu": cpu.chunk_gated_delta_rule}[kind]
    x = as_pads(make(Case(T, 2, 4, 8, 12, torch.float32, "rand"), "cpu"), n)
    no = torch.tensor([False])
    s_pad, s_plain = x["state"].clone(), x["state"].clone()
    o = fn(x["q"], x["k"], x["v"], x["g"], x["beta"], s_pad, no)
    want = fn(*(x[k][:, :n] for k in ("q", "k", "v", "g", "beta")), s_plain, no)
    tol = 1e-6
    if kind == "cpu":
        assert torch.equal(s_pad, s_plain), "the pads changed the state"
    torch.testing.assert_close(s_pad, s_plain, rtol=tol, atol=tol)
    torch.testing.assert_close(o[:, :n], want, rtol=tol, atol=tol)
    assert torch.equal(o[:, n:], torch.zeros_like(o[:, n:]))


def decode_pad_keeps_state(c: Case, device: str, fn) -> None:
    """count 0: the state bit-equal, with NaN inputs (o unspecified) and with the model's zero q, k, v (o 0)."""
    x = make(c, device)
    no, zero = torch.tensor([False], device=device), torch.tensor([0], device=device)
    for garbage in (float("nan"), 0.0):
        y = {n: torch.full_like(x[n], garbage) for n in ("q", "k", "v")}
        y.update({n: torch.full_like(x[n], float("nan")) for n in ("a", "b")})
        s = x["state"].clone()
        o = fn(y["q"], y["k"], y["v"], y["a"], y["b"], x["A_log"], x["dt_bias"], s, no, zero)
        assert torch.equal(s, x["state"]), "a decode pad changed the state"
        if garbage == 0.0:
            assert torch.equal(o, torch.zeros_like(o))
    # count 1: the plain step
    s1, s2 = x["state"].clone(), x["state"].clone()
    args = [x[n] for n in ("q", "k", "v", "a", "b", "A_log", "dt_bias")]
    assert torch.equal(fn(*args, s1, no, torch.tensor([1], device=device)), fn(*args, s2, no))
    assert torch.equal(s1, s2)


@interpreted
@pytest.mark.parametrize("c", params(CPU_DECODE))
def test_decode_pad_cpu(c):
    decode_pad_keeps_state(c, "cpu", triton_decode.recurrent_gated_delta_rule)


@pytest.mark.parametrize("c", params(CPU_DECODE))
def test_reference_decode_pad(c):
    decode_pad_keeps_state(c, "cpu", ref.recurrent_gated_delta_rule)


@pytest.mark.cuda
@pytest.mark.parametrize("T,n", PAD_CHUNKS + ((4096, 4000), (1024, 1)), ids=[f"T{t}-n{n}" for t, n in PAD_CHUNKS] +
                         ["T4096-n4000", "T1024-n1"])
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_chunk_pads_cuda(T, n, dt):
    chunk_pads_match(Case(T, 16, 32, 128, 128, dt, "rand"), n, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("c", params(GPU_DECODE))
def test_decode_pad_cuda(c):
    decode_pad_keeps_state(c, "cuda", triton_decode.recurrent_gated_delta_rule)
