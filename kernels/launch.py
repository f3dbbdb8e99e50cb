"""Launching our Triton kernels from inside `torch.library.triton_op` bodies, also under Triton's interpreter
(TRITON_INTERPRET=1, which CI uses to run them on CPU tensors), and small helpers every op folder shares."""

from __future__ import annotations

import os
from typing import Any

import torch
import triton.language as tl
from torch._subclasses.fake_tensor import FakeTensor
from triton.runtime.jit import JITFunction


def _interpreter_scalar_index() -> None:
    """Triton 3.6's interpreter turns scalar kernel args into 1-element arrays and `int()`s them for
    `range(n)`; NumPy >= 2.4 refuses `int()` of a 1-d array, so index through `.item()` instead."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_gdn_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._gdn_patched = True
    interpreter._patch_lang_tensor = patched


def _interpreter_bf16_rounding() -> None:
    """Triton 3.6's interpreter casts float32 to bfloat16 by truncation (twice the GPU's error, all of one
    sign); cast through torch instead, which rounds to nearest even as the GPU does."""
    import numpy as np
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    original = builder.cast_impl
    if getattr(original, "_gdn_patched", False):
        return

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            x = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32))
            return interpreter.TensorHandle(x.to(torch.bfloat16).view(torch.uint16).numpy(), tl.bfloat16)
        return original(self, src, dst_type)

    cast_impl._gdn_patched = True
    builder.cast_impl = cast_impl


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

if INTERPRETED:
    _interpreter_scalar_index()
    _interpreter_bf16_rounding()


class _Interpreted:
    """An interpreted kernel that skips launches on fake tensors (shape propagation while tracing)."""

    def __init__(self, kernel: Any):
        self.kernel = kernel

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            if not any(isinstance(a, FakeTensor) for a in args):
                self.kernel[grid](*args, **kwargs)

        return run


def launcher(kernel: Any) -> Any:
    """`wrap_triton(kernel)` so export/AOTInductor see the kernel; under TRITON_INTERPRET=1 `triton.jit`
    yields an InterpretedFunction, which `wrap_triton` rejects, so launch it directly."""
    if isinstance(kernel, JITFunction):
        return torch.library.wrap_triton(kernel)
    return _Interpreted(kernel)


def dense(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Contiguous inputs for kernels that take row strides: the strides become constants of the compiled
    kernel call, and ExecuTorch's edge dialect turns the model's views (slices of one projection) into dense
    copies before AOTInductor runs, so only dense inputs have the same strides in both."""
    return tuple(t.contiguous() for t in tensors)


def inner_contiguous(x: torch.Tensor) -> torch.Tensor:
    """Kernels take row strides but assume a unit stride in the last dim (a static property)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
