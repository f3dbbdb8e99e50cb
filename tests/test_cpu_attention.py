"""kernels/attention/cpu.py, the dense attention of CPU decode (its `attend` at any T), against the dense float64 oracle of
tests/test_attention.py: fresh random inputs, caches NaN from the first unwritten position on, odd lengths,
prefixes, GQA groups, float64 / float32 / bfloat16; the caches it leaves must equal the written ones exactly.
Pads (input_pos -1) as in tests/test_attention.py: nothing written, pad rows 0, real rows as without them."""

from __future__ import annotations

import pytest
import torch

from gdn.kernels.attention import cpu, reference
from test_attention import Case, check, decode_pad_keeps_caches, make, oracle, pad_params, pads_match, params

f64, f32, bf16 = torch.float64, torch.float32, torch.bfloat16
CASES = (
    [Case(T, 0, 4, 2, 48, T + 37, dt) for T in (1, 5, 63, 64) for dt in (f64, f32)]
    + [Case(T, s, 4, 2, 48, S, f64) for s, T, S in ((511, 2, 600), (510, 64, 1100), (1000, 24, 1024))]
    + [Case(1, p, 4, 2, 48, 1100, f64) for p in (0, 511, 1099)]
    + [Case(17, 30, 6, 2, 32, 97, f32), Case(1, 40, 8, 1, 16, 64, bf16), Case(33, 3, 4, 4, 8, 40, bf16)]
)


def dense_prefill(q, k, v, k_cache, v_cache, input_pos):
    """cpu.attend at T > 1, with the reference's checks and cache write (decode_attention's steps)."""
    reference.check_args(q, k, v, k_cache, v_cache, input_pos, decode=False)
    reference.write_cache(k, v, k_cache, v_cache, input_pos)
    return cpu.attend(q, k_cache, v_cache, input_pos)


@pytest.mark.parametrize("c", params(CASES))
def test_cpu_attention_matches_dense_float64(c):
    x = make(c, "cpu")
    kc, vc = x["k_cache"].clone(), x["v_cache"].clone()
    fn = cpu.decode_attention if c.T == 1 else dense_prefill
    check(x, fn(x["q"], x["k"], x["v"], kc, vc, x["input_pos"]), oracle(x), kc, vc)


def test_cpu_attention_checks_arguments_like_the_reference():
    x = make(Case(2, 0, 4, 2, 8, 16, f32), "cpu")
    with pytest.raises(ValueError, match="decode_attention takes one token"):
        cpu.decode_attention(**x)
    with pytest.raises(ValueError, match="query heads H=4 are not a multiple"):
        dense_prefill(**{**x, "k": x["k"][:, :1].repeat(1, 3, 1), "v": x["v"][:, :1].repeat(1, 3, 1),
                                 "k_cache": torch.zeros(3, 16, 8), "v_cache": torch.zeros(3, 16, 8)})


def test_cpu_attention_agrees_with_the_reference_over_chunk_edges():
    """Beyond the oracle: the reference's chunked online softmax and this dense one agree in float64."""
    c = Case(40, 500, 4, 2, 48, 1100, f64)
    x = make(c, "cpu")
    a = dense_prefill(*(x[n].clone() for n in ("q", "k", "v", "k_cache", "v_cache", "input_pos")))
    b = reference.prefill_attention(*(x[n].clone() for n in ("q", "k", "v", "k_cache", "v_cache", "input_pos")))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c,pads", pad_params((torch.float64, torch.float32)))
def test_cpu_attention_pads(c, pads):
    pads_match(c, pads, dense_prefill, "cpu", exact_to_unpadded=False)


@pytest.mark.parametrize("pos", [0, 1, 1099])
@pytest.mark.parametrize("dt", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_cpu_decode_pad(pos, dt):
    decode_pad_keeps_caches(Case(1, pos, 4, 2, 48, 1100, dt), cpu.decode_attention, "cpu")
