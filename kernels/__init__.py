"""Our kernels, one folder per op (reference, Triton kernel, registration), and the kernel sets the model
chooses from (`sets.py`).

Only the import as `gdn.kernels` defines the `torch.ops.gdn.*` ops. The repository root on `sys.path`
(`python -m pytest`, `PYTHONPATH=.`) also makes this folder importable as a top-level `kernels`, and
transformers imports `kernels` while it looks for Hugging Face's package of that name. A second copy of the
op modules would define every op again: torch then destroys the first definition, and the op handles
already taken from it dangle (random `vector::reserve`, `bad_alloc` and segfaults while tracing).
"""

from __future__ import annotations

PACKAGE = "gdn.kernels"


def require_package_import(module: str) -> None:
    """Called by each op module before it registers its ops: refuse a copy imported under another name."""
    if not module.startswith(PACKAGE + "."):
        raise ImportError(f"{module} would register the torch.ops.gdn ops a second time; import {PACKAGE} instead")


if __name__ == PACKAGE:
    from .sets import KERNEL_SETS, OPS, REFERENCE, KernelSet

    __all__ = ["KERNEL_SETS", "OPS", "REFERENCE", "KernelSet"]
