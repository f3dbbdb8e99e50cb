"""Launch helper for the MoE Triton kernels: traced launches inside `triton_op`, plain ones when interpreted."""

from __future__ import annotations

from typing import Any

import torch
from triton.runtime.jit import JITFunction

from ..gated_delta_rule.launch import INTERPRETED  # noqa: F401 (the MoE kernels' launchers take it from here)


def launch(kernel: Any) -> Any:
    """`wrap_triton(kernel)` so torch.export / AOTInductor see the kernel; the bare kernel under
    TRITON_INTERPRET=1, where `triton.jit` returns an InterpretedFunction that `wrap_triton` rejects."""
    if isinstance(kernel, JITFunction):
        return torch.library.wrap_triton(kernel)
    return kernel


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
