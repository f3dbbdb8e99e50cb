"""The device sampler: settings validation, distribution, top-k / top-p cuts, seeded reproducibility."""

import pytest
import torch

from gdn.runner.sampling import Sampler, SamplingError, SamplingParams, uniform_noise


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=-0.1), dict(temperature=float("nan")), dict(temperature=float("inf")), dict(top_p=0.0),
     dict(top_p=1.5), dict(top_p=-0.2), dict(top_k=-1)],
    ids=["neg_temp", "nan_temp", "inf_temp", "top_p_0", "top_p_1.5", "top_p_neg", "top_k_neg"],
)
def test_invalid_settings_raise_one_line(kwargs):
    with pytest.raises(SamplingError) as e:
        SamplingParams(**kwargs)
    assert "\n" not in str(e.value) and str(next(iter(kwargs.values()))) in str(e.value)


def draw(sampler: Sampler, logits: torch.Tensor, n: int) -> list[int]:
    return [int(sampler(logits)) for _ in range(n)]


def test_greedy_is_argmax():
    logits = torch.randn(1, 1000)
    got = Sampler(SamplingParams(), 1000, torch.device("cpu"))(logits)
    assert got.shape == (1,) and got.dtype == torch.int64 and int(got) == int(logits.argmax())


def test_noise_is_uniform_and_depends_on_seed_and_counter():
    n = 200_000
    seed, counter = torch.tensor([1234]), torch.tensor([7])
    u = uniform_noise(seed, counter, n)
    assert u.dtype == torch.float32 and float(u.min()) > 0 and float(u.max()) < 1
    counts = torch.histc(u, bins=50, min=0, max=1)
    expected = n / 50
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 120, chi2  # 49 degrees of freedom: p < 1e-6 beyond ~110
    assert abs(float(u.mean()) - 0.5) < 0.005
    other_seed = uniform_noise(torch.tensor([1235]), counter, n)
    other_step = uniform_noise(seed, torch.tensor([8]), n)
    assert float((u == other_seed).float().mean()) < 0.01 and float((u == other_step).float().mean()) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([u, other_step]))[0, 1])) < 0.02


def frequencies(tokens: list[int], vocab: int) -> torch.Tensor:
    return torch.bincount(torch.tensor(tokens), minlength=vocab).double() / len(tokens)


def test_temperature_sampling_follows_softmax():
    vocab, n, temp = 12, 6000, 0.7
    logits = torch.randn(1, vocab) * 1.5
    s = Sampler(SamplingParams(temperature=temp, seed=int(torch.randint(0, 2**31, ()))), vocab, torch.device("cpu"))
    p = torch.softmax(logits[0].double() / temp, -1)
    freq = frequencies(draw(s, logits, n), vocab)
    sigma = (p * (1 - p) / n).sqrt()
    assert bool(((freq - p).abs() <= 5 * sigma + 1e-3).all()), (freq, p)


def test_top_k_and_top_p_keep_only_their_tokens_with_renormalised_mass():
    vocab, n = 20, 4000
    logits = torch.randn(1, vocab)
    order = logits[0].argsort(descending=True)
    s = Sampler(SamplingParams(temperature=1.0, top_k=5, seed=3), vocab, torch.device("cpu"))
    freq = frequencies(draw(s, logits, n), vocab)
    top5 = order[:5]
    assert bool((freq[order[5:]] == 0).all()), freq  # every draw among the top 5 (a float sum of 5 shares can miss 1.0)
    p = torch.softmax(logits[0, top5].double(), -1)
    assert float((freq[top5] - p).abs().max()) < 5 * float((p * (1 - p) / n).sqrt().max()) + 1e-3
    probs = torch.softmax(logits[0].double(), -1)[order]
    top_p = float(probs[:3].sum()) - 1e-4  # the first three tokens hold just over this mass
    s = Sampler(SamplingParams(temperature=1.0, top_p=top_p, seed=4), vocab, torch.device("cpu"))
    freq = frequencies(draw(s, logits, n), vocab)
    assert bool((freq[order[3:]] == 0).all()) and bool((freq[order[:3]] > 0).all()), freq


def test_same_seed_same_tokens_other_seed_other_tokens():
    vocab = 300
    logits = torch.randn(1, vocab)
    params = SamplingParams(temperature=1.3, top_k=50, top_p=0.9, seed=11)
    a = draw(Sampler(params, vocab, torch.device("cpu")), logits, 64)
    b = draw(Sampler(params, vocab, torch.device("cpu")), logits, 64)
    c = draw(Sampler(SamplingParams(temperature=1.3, top_k=50, top_p=0.9, seed=12), vocab, torch.device("cpu")),
             logits, 64)
    assert a == b and a != c and len(set(a)) > 5


def test_update_in_place_keeps_buffers_and_restarts_the_draws():
    vocab = 64
    logits = torch.randn(1, vocab)
    s = Sampler(SamplingParams(temperature=1.0, seed=5), vocab, torch.device("cpu"))
    ptrs = [t.data_ptr() for t in (s.temperature, s.top_p, s.seed, s.counter)]
    first = draw(s, logits, 16)
    s.update(SamplingParams(temperature=1.0, seed=5))
    assert draw(s, logits, 16) == first
    assert [t.data_ptr() for t in (s.temperature, s.top_p, s.seed, s.counter)] == ptrs
    assert not s.compatible(SamplingParams(temperature=0.0))
    with pytest.raises(ValueError):
        s.update(SamplingParams(temperature=1.0, top_k=3))


@pytest.mark.cuda
def test_cuda_draws_equal_cpu_draws():
    vocab = 5000
    logits = torch.randn(1, vocab)
    params = SamplingParams(temperature=0.9, top_k=100, top_p=0.8, seed=21)
    cpu = draw(Sampler(params, vocab, torch.device("cpu")), logits, 32)
    gpu = draw(Sampler(params, vocab, torch.device("cuda")), logits.cuda(), 32)
    assert cpu == gpu
