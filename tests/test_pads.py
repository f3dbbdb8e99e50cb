"""Pad tokens (input_pos -1) change no state: the eager model on the bundled default model and the tiny HF
checkpoints, and the CPU artifact through the ExecuTorch runtime.

A prompt of n real tokens padded up to the next power of two (the runner's prefill buckets), or by many pads, must
give the unpadded call's logits and leave every state buffer as the unpadded call does:
- bit-equal where the arithmetic is the same: the same padded call with other pad ids (any id, out of the
  vocabulary too), a decode no-op step (input_pos [-1]), a fresh prompt after another one, KV cache slots past
  the real tokens (never written);
- within TOL of the unpadded call otherwise: on the CPU a GEMM's rounding depends on its row count M (the BLAS
  picks its blocking by M: x[:3] @ w differs from (x @ w)[:3] in the last bit), so every projection of a real
  token can round differently with T = 128 rows than with 3. Measured here: at most 3e-6 on logits of size ~10.
"""

from __future__ import annotations

import pytest
import torch

from gdn.export.checkpoint import load_model
from runner_eager import DEFAULT_MODEL

LENGTHS = (1, 2, 15, 16, 17, 63, 64, 65)
MANY_PADS = ((1, 128), (3, 128), (17, 128), (33, 128))  # (real tokens, T)
TOL = dict(rtol=1e-4, atol=1e-5)  # fp32, the CPU GEMM's M-dependent rounding (module docstring)
MAX_SEQ = 320


def bucket(n: int) -> int:
    return 1 << (n - 1).bit_length()


def pad_call(ids: torch.Tensor, start: int, T: int, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [1, n] at positions start .. start + n - 1, then T - n pads of token pad_id at position -1."""
    n = ids.shape[1]
    tokens = torch.cat([ids, torch.full((1, T - n), pad_id, dtype=torch.int64)], 1)
    return tokens, torch.cat([torch.arange(start, start + n), torch.full((T - n,), -1, dtype=torch.int64)])


def states(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_buffers().items()}


def assert_states(got: dict, want: dict, exact: bool, upto: int | None = None) -> None:
    """Every state buffer; KV caches only up to slot `upto` when given (slots past it hold another sequence)."""
    assert got.keys() == want.keys()
    for name in got:
        a, b = got[name], want[name]
        if upto is not None and name.endswith("_cache"):
            a, b = a[:, :upto], b[:, :upto]
        if exact:
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, **TOL, msg=name)


@pytest.fixture(scope="module")
def models(hf_checkpoints):
    """name -> a function making a fresh fp32 eager model."""
    paths = {"default": DEFAULT_MODEL, **{n: hf_checkpoints(n)[0] for n in ("qwen3_next", "qwen3_5")}}
    return lambda name, kernels="reference": load_model(paths[name], MAX_SEQ, kernels=kernels)


NAMES = ["default", "qwen3_next", "qwen3_5"]
CASES = [(n, bucket(n)) for n in LENGTHS] + list(MANY_PADS)


@pytest.mark.parametrize("n,T", CASES, ids=[f"n{n}-T{T}" for n, T in CASES])
@pytest.mark.parametrize("name", NAMES)
def test_padded_prefill_equals_unpadded(models, name, n, T):
    plain, padded, other = models(name), models(name), models(name)
    vocab = plain.cfg.vocab_size
    ids = torch.randint(0, vocab, (1, n))
    with torch.no_grad():
        want = plain.prefill(ids, torch.arange(n))
        got = padded.prefill(*pad_call(ids, 0, T))
        # other pad ids, out of the vocabulary too: the real rows see none of them
        tokens, pos = pad_call(ids, 0, T)
        tokens[0, n:] = torch.randint(-(10**9), 10**9, (T - n,))
        got_other = other.prefill(tokens, pos)
    assert torch.isfinite(got).all()
    assert torch.equal(got_other, got)
    assert_states(states(other), states(padded), exact=True)
    assert_states(states(padded), states(plain), exact=T == n)
    torch.testing.assert_close(got, want, rtol=0 if T == n else TOL["rtol"], atol=0 if T == n else TOL["atol"])
    for name_, cache in padded.state_buffers().items():
        if name_.endswith("_cache"):
            assert not cache[:, n:].any(), f"{name_}: a pad wrote a slot past the real tokens"


@pytest.mark.parametrize("name", NAMES)
def test_conversation_with_pads_equals_without(models, name):
    """Padded prefill at 0, padded prefill continuing at a non-zero start, decode with a no-op step between."""
    plain, padded = models(name), models(name)
    vocab = plain.cfg.vocab_size
    a, b, d = torch.randint(0, vocab, (1, 37)), torch.randint(0, vocab, (1, 17)), torch.randint(0, vocab, (3,))
    with torch.no_grad():
        want = [plain.prefill(a, torch.arange(37)), plain.prefill(b, torch.arange(37, 54))]
        got = [padded.prefill(*pad_call(a, 0, 64)), padded.prefill(*pad_call(b, 37, 32))]
        for i, tok in enumerate(d.tolist()):
            want.append(plain(torch.tensor([[tok]]), torch.tensor([54 + i])))
            got.append(padded(torch.tensor([[tok]]), torch.tensor([54 + i])))
            padded(torch.tensor([[7]]), torch.tensor([-1]))  # a no-op step after each
    for step, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, **TOL, msg=f"step {step}")
    assert_states(states(padded), states(plain), exact=False)


@pytest.mark.parametrize("kernels", ["reference", "ops"])
@pytest.mark.parametrize("name", NAMES)
def test_decode_noop_changes_nothing(models, name, kernels):
    """A decode step at input_pos -1 leaves every buffer bit-equal, and the next real step gives what it gives
    without the no-op."""
    with_noop, without = models(name, kernels), models(name, kernels)
    vocab = with_noop.cfg.vocab_size
    ids = torch.randint(0, vocab, (1, 20))
    with torch.no_grad():
        for m in (with_noop, without):
            m.prefill(ids, torch.arange(20))
            m(torch.tensor([[5]]), torch.tensor([20]))
        before = states(with_noop)
        noop = with_noop(torch.tensor([[10**9]]), torch.tensor([-1]))  # any id
        assert torch.isfinite(noop).all()
        assert_states(states(with_noop), before, exact=True)
        got = with_noop(torch.tensor([[6]]), torch.tensor([21]))
        want = without(torch.tensor([[6]]), torch.tensor([21]))
    assert torch.equal(got, want)
    assert_states(states(with_noop), states(without), exact=True)


def test_decode_noop_first_call_changes_nothing(models):
    """A no-op as the very first call of a fresh model (zero state, no real token yet)."""
    m = models("default")
    before = states(m)
    with torch.no_grad():
        assert torch.isfinite(m(torch.tensor([[3]]), torch.tensor([-1]))).all()
    assert_states(states(m), before, exact=True)


@pytest.mark.parametrize("name", NAMES)
def test_no_state_bleeds_between_padded_prompts(models, name):
    """A padded prompt at 0 after another conversation equals it on a fresh model, bit for bit (the KV caches up
    to its last token: the slots past it hold the earlier conversation, masked by position)."""
    used, fresh = models(name), models(name)
    vocab = used.cfg.vocab_size
    first, second = torch.randint(0, vocab, (1, 50)), torch.randint(0, vocab, (1, 17))
    with torch.no_grad():
        used.prefill(*pad_call(first, 0, 64))
        used(torch.tensor([[4]]), torch.tensor([50]))
        got = used.prefill(*pad_call(second, 0, 32))
        want = fresh.prefill(*pad_call(second, 0, 32))
    assert torch.equal(got, want)
    assert_states(states(used), states(fresh), exact=True, upto=17)


@pytest.mark.parametrize("name", ["qwen3_next", "qwen3_5"])
def test_ops_kernel_set_on_cpu_with_pads(models, name):
    """kernels="ops" (the registered ops, with the optional count of gdn::causal_conv1d; on CPU tensors their
    reference kernels): the padded prefill as the unpadded one."""
    plain, padded = models(name, "ops"), models(name, "ops")
    ids = torch.randint(0, plain.cfg.vocab_size, (1, 17))
    with torch.no_grad():
        want, got = plain.prefill(ids, torch.arange(17)), padded.prefill(*pad_call(ids, 0, 32))
    torch.testing.assert_close(got, want, **TOL)
    assert_states(states(padded), states(plain), exact=False)


# ---------------------------------------------------------------- the CUDA kernel set (the lead's H100 run)

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("n,T", [(1, 1), (15, 16), (17, 32), (65, 128), (3, 128), (1000, 1024)],
                         ids=["n1-T1", "n15-T16", "n17-T32", "n65-T128", "n3-T128", "n1000-T1024"])
def test_ops_padded_prefill_cuda(n, T, dtype):
    """The Triton kernels, eager on the GPU: garbage pads and a no-op decode bit-exact; against the unpadded call
    within the rounding of cuBLAS at another M (relative RMS 1e-2 bf16, 1e-4 fp32 over logits and each state)."""
    def fresh():
        return load_model(DEFAULT_MODEL, 2048, dtype, torch.float32, "ops", device="cuda")

    plain, padded, other = fresh(), fresh(), fresh()
    ids = torch.randint(0, plain.cfg.vocab_size, (1, n), device="cuda")
    with torch.no_grad():
        want = plain.prefill(ids, torch.arange(n, device="cuda"))
        tokens, pos = (t.cuda() for t in pad_call(ids.cpu(), 0, T))
        got = padded.prefill(tokens, pos)
        tokens[0, n:] = 10**9
        assert torch.equal(other.prefill(tokens, pos), got)
        assert_states(states(other), states(padded), exact=True)
        tol = 1e-2 if dtype == torch.bfloat16 else 1e-4
        for g, w in [(got, want), *zip(states(padded).values(), states(plain).values())]:
            err = ((g.double() - w.double()).norm() / w.double().norm().clamp_min(1e-30)).item()
            assert err < tol, err
        before = states(padded)
        padded(torch.tensor([[3]], device="cuda"), torch.tensor([-1], device="cuda"))
        assert_states(states(padded), before, exact=True)


@pytest.mark.cuda
@pytest.mark.slow
def test_aoti_prefill_with_pads_cuda():
    """The prefill method exported (dynamic T) and compiled by AOTInductor as artifacts are, its state in the
    compiled program's buffers, fed padded calls (a prompt, a continuation, many pads) beside the same program fed
    the calls without pads, and two eager models likewise, call by call (so the state each carries is checked):
    - pads change nothing: padded against unpadded, compiled and eager, within 1e-2 (bf16: only the real rows'
      tiles may differ, e.g. the attention's last key tile, and a flipped bf16 rounding carries through layers);
    - the compiled padded program differs from the eager padded model by no more than compilation alone does
      (compiled against eager without pads; bf16 Inductor fusions round differently from eager), plus 1e-2."""
    from torch.export import Dim, export

    from aoti_util import compile_and_load
    from gdn.export.methods import PrefillMethod

    def fresh():
        return load_model(DEFAULT_MODEL, 512, torch.bfloat16, torch.float32, "ops", device="cuda")

    def program():
        t = Dim("T", min=1, max=256)
        args = (torch.zeros(1, 2, dtype=torch.int64, device="cuda"), torch.arange(2, device="cuda"))
        ep = export(PrefillMethod(fresh()), args, dynamic_shapes=({1: t}, {0: t}), strict=True)
        return compile_and_load(ep)[0]

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    padded_prog, plain_prog, eager_padded, eager_plain = program(), program(), fresh(), fresh()
    vocab = eager_padded.cfg.vocab_size
    start = 0
    for n, T in ((37, 64), (17, 32), (1, 128), (100, 128)):
        ids = torch.randint(0, vocab, (1, n), device="cuda")
        tokens, pos = (t.cuda() for t in pad_call(ids.cpu(), start, T, pad_id=10**9))
        plain_pos = torch.arange(start, start + n, device="cuda")
        with torch.no_grad():
            e_pad, e_plain = eager_padded.prefill(tokens, pos), eager_plain.prefill(ids, plain_pos)
        c_pad, c_plain = padded_prog(tokens, pos), plain_prog(ids, plain_pos)
        errs = {"compiled pads": rel(c_pad, c_plain), "eager pads": rel(e_pad, e_plain),
                "compiled vs eager": rel(c_pad, e_pad), "compiled vs eager, no pads": rel(c_plain, e_plain)}
        print(f"n={n} T={T}: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
        assert errs["compiled pads"] < 1e-2 and errs["eager pads"] < 1e-2, (n, T, errs)
        assert errs["compiled vs eager"] < errs["compiled vs eager, no pads"] + 1e-2, (n, T, errs)
        start += n


# ---------------------------------------------------------------- the CPU artifact

@pytest.mark.slow
def test_cpu_artifact_prefill_with_pads(cpu_artifacts):
    """The exported prefill of the bundled default model (16-token bound) through the ExecuTorch runtime: a
    prompt padded to the bound, continued by a padded chunk and decoded, with a no-op step, equals the unpadded
    calls on the artifact (logits within TOL, then greedy tokens equal)."""
    from gdn.runner.artifact import Artifact
    from gdn.runner.methods import load_methods

    art = Artifact.open(cpu_artifacts["default"][1])
    chunk = art.meta.max_prefill_chunk
    plain, padded = load_methods(art), load_methods(art)
    a, b = torch.randint(0, art.meta.vocab_size, (1, 11)), torch.randint(0, art.meta.vocab_size, (1, 3))
    want = [plain.prefill(a, torch.arange(11)), plain.prefill(b, torch.arange(11, 14))]
    got = [padded.prefill(*pad_call(a, 0, chunk)), padded.prefill(*pad_call(b, 11, 4))]
    for i in range(6):
        tok = int(want[-1].argmax(-1))
        assert tok == int(got[-1].argmax(-1)), f"step {i}"
        want.append(plain.decode(torch.tensor([[tok]]), torch.tensor([14 + i])))
        padded.decode(torch.tensor([[tok]]), torch.tensor([-1]))  # a no-op first: nothing changes
        got.append(padded.decode(torch.tensor([[tok]]), torch.tensor([14 + i])))
    for step, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, **TOL, msg=f"step {step}")
