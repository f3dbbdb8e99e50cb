"""kernels/attention/cpu.py against the dense float64 oracle of tests/test_attention.py: fresh random inputs, caches
NaN from the first unwritten position on, odd lengths, prefixes, GQA groups; the caches it leaves must equal the
written ones exactly. float32 runs ExecuTorch's LLM ops (llama::update_cache, llama::custom_sdpa) on [Hkv, S, 1, D]
caches; float64 / bfloat16 the dense decode softmax and the reference's prefill on [Hkv, S, D].
Pads (input_pos -1) as in tests/test_attention.py: nothing written, pad rows 0, real rows as without them, also
when the pads' positions would run past the end of the cache."""

from __future__ import annotations

import pytest
import torch

from gdn.kernels.attention import cpu, reference
from test_attention import Case, check, decode_pad_keeps_caches, make, oracle, pad_params, pads_match, params

f64, f32, bf16 = torch.float64, torch.float32, torch.bfloat16
CASES = (
    [Case(T, 0, 4, 2, 48, T + 37, dt) for T in (1, 5, 63, 64) for dt in (f64, f32)]
    + [Case(T, s, 4, 2, 48, S, dt) for s, T, S in ((511, 2, 600), (510, 64, 1100), (1000, 24, 1024))
       for dt in (f64, f32)]
    + [Case(1, p, 4, 2, 48, 1100, dt) for p in (0, 511, 1099) for dt in (f64, f32)]
    + [Case(17, 30, 6, 2, 32, 97, f32), Case(7, 60, 3, 3, 16, 67, f32), Case(1, 40, 8, 1, 16, 64, bf16),
       Case(33, 3, 4, 4, 8, 40, bf16), Case(64, 0, 4, 2, 48, 64, f32)]
)


def layout(fn):
    """fn on the model's cache layout for the dtype (cache_shape): the test's [Hkv, S, D] caches viewed as it."""
    def run(q, k, v, k_cache, v_cache, input_pos):
        Hkv, S, D = k_cache.shape
        shape = cpu.cache_shape(Hkv, S, D, q.dtype)
        return fn(q, k, v, k_cache.view(shape), v_cache.view(shape), input_pos)
    return run


def step(c: Case):
    return layout(cpu.decode_attention if c.T == 1 else cpu.prefill_attention)


@pytest.mark.parametrize("c", params(CASES))
def test_cpu_attention_matches_dense_float64(c):
    x = make(c, "cpu")
    kc, vc = x["k_cache"].clone(), x["v_cache"].clone()
    check(x, step(c)(x["q"], x["k"], x["v"], kc, vc, x["input_pos"]), oracle(x), kc, vc)


def test_cache_shape_by_dtype():
    assert cpu.cache_shape(2, 64, 48, f32) == (2, 64, 1, 48)
    assert cpu.cache_shape(2, 64, 48, bf16) == (2, 64, 48)


def test_cpu_attention_checks_arguments_like_the_reference():
    x = make(Case(2, 0, 4, 2, 8, 16, f32), "cpu")
    with pytest.raises(ValueError, match="decode_attention takes one token"):
        layout(cpu.decode_attention)(**x)
    with pytest.raises(ValueError, match="query heads H=4 are not a multiple"):
        layout(cpu.prefill_attention)(**{**x, "k": x["k"][:, :1].repeat(1, 3, 1), "v": x["v"][:, :1].repeat(1, 3, 1),
                                         "k_cache": torch.zeros(3, 16, 8), "v_cache": torch.zeros(3, 16, 8)})


def test_dense_decode_agrees_with_the_reference_over_chunk_edges():
    """The dense softmax (non-float32 decode) and the reference's chunked online softmax agree in float64."""
    x = make(Case(40, 500, 4, 2, 48, 1100, f64), "cpu")
    a = {n: x[n].clone() for n in x}
    reference.write_cache(a["k"], a["v"], a["k_cache"], a["v_cache"], a["input_pos"])
    got = cpu.attend(a["q"], a["k_cache"], a["v_cache"], a["input_pos"])
    want = reference.prefill_attention(*(x[n].clone() for n in ("q", "k", "v", "k_cache", "v_cache", "input_pos")))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_chunks_then_decode_steps_read_only_their_positions():
    """float32: prefill chunks then decode steps on one pair of caches, each call's output against the oracle of the
    caches it left; the slots past the last position stay NaN throughout (nothing reads or writes them)."""
    Hkv, S, D = 2, 200, 48
    kc, vc = (torch.full((Hkv, S, D), float("nan")) for _ in range(2))
    pos = 0
    for T in (13, 64, 1, 1, 30, 1):
        x = {"q": torch.randn(T, 4, D), "k": torch.randn(T, Hkv, D), "v": torch.randn(T, Hkv, D),
             "k_cache": kc.clone(), "v_cache": vc.clone(), "input_pos": torch.arange(pos, pos + T)}
        o = step(Case(T, pos, 4, Hkv, D, S, f32))(x["q"], x["k"], x["v"], kc, vc, x["input_pos"])
        check(x, o, oracle(x), kc, vc)
        pos += T
    assert torch.isnan(kc[:, pos:]).all() and torch.isnan(vc[:, pos:]).all()


@pytest.mark.parametrize("c,pads", pad_params((torch.float64, torch.float32)))
def test_cpu_attention_pads(c, pads):
    pads_match(c, pads, layout(cpu.prefill_attention), "cpu", exact_to_unpadded=False)


@pytest.mark.parametrize("pos", [0, 1, 1099])
@pytest.mark.parametrize("dt", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_cpu_decode_pad(pos, dt):
    decode_pad_keeps_caches(Case(1, pos, 4, 2, 48, 1100, dt), layout(cpu.decode_attention), "cpu")
