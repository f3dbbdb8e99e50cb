import os

import pytest
import torch

# Tests marked `interpret` run Triton kernels on CPU tensors through Triton's interpreter, which has to be
# chosen (TRITON_INTERPRET=1) before any kernel is defined, for the whole process. torch.export of the
# triton_ops needs the real, compiled kernels, so scripts/test.sh runs the two groups in two processes.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    gpu = torch.cuda.is_available()
    no_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU")
    no_interp = pytest.mark.skip(reason="Triton on CPU tensors: run with TRITON_INTERPRET=1 (scripts/test.sh does)")
    on_gpu = pytest.mark.skip(reason="interpreter test; the GPU runs the real shapes")
    for item in items:
        if "cuda" in item.keywords and not gpu:
            item.add_marker(no_gpu)
        if "interpret" in item.keywords:
            if gpu:
                item.add_marker(on_gpu)
            elif not INTERPRET:
                item.add_marker(no_interp)


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """name -> (directory of a saved tiny transformers checkpoint, the transformers model)."""
    from hf_tiny import save

    cache = {}

    def get(name: str):
        if name not in cache:
            path = tmp_path_factory.mktemp(name)
            cache[name] = (path, save(name, path))
        return cache[name]

    return get
