"""The attention ops inside compiled programs: the artifact's two methods, AOTInductor-compiled as the CUDA backend
does, never copy a whole KV cache and never allocate anything that spans the cache length (no [T, S] scores), and
they match the eager model at positions across a long cache."""

from __future__ import annotations

import re

import pytest
import torch

from aoti_util import compile_and_load
from gdn.export.checkpoint import load_model
from gdn.export.methods import export_methods
from gdn.export.progress import Progress

pytestmark = [pytest.mark.slow, pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]

S = 1000  # a cache length no other dimension of the test models has


def allocations(src: str) -> list[tuple[int, ...]]:
    """Shapes of the buffers the generated C++ allocates (aoti_torch_empty_strided over an int array)."""
    arrays = {m[1]: tuple(int(x) for x in re.findall(r"-?\d+", m[2]))
              for m in re.finditer(r"int_array_(\d+)\[\]\s*=\s*\{([^}]*)\}", src)}
    return [arrays[m[1]] for m in re.finditer(r"empty_strided\(\s*\d+,\s*int_array_(\d+)", src) if m[1] in arrays]


@pytest.mark.parametrize("method", ["prefill", "decode"])
def test_compiled_methods_never_span_the_cache(method, hf_checkpoints):
    path, _ = hf_checkpoints("qwen3_5")
    model = load_model(path, max_seq_len=S, kernels="ops", device="cuda")
    ep = export_methods(model, 64, Progress(quiet=True))[method]
    compiled, src = compile_and_load(ep)
    shapes = allocations(src)
    assert shapes, "found no allocations in the generated C++ (the pattern is stale)"
    assert not [s for s in shapes if S in s], f"allocations spanning the cache length {S}: {shapes}"
    assert "aoti_torch_copy_" not in src, "the compiled program copies a buffer"
    eager = load_model(path, max_seq_len=S, kernels="ops", device="cuda")
    T = 37 if method == "prefill" else 1
    for start in (0, 500, S - T):  # both see the same calls, so their caches and states stay equal
        ids = torch.randint(0, 160, (1, T), device="cuda")
        pos = torch.arange(start, start + T, device="cuda")
        want = eager.prefill(ids, pos) if method == "prefill" else eager(ids, pos)
        got = compiled(ids, pos)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
