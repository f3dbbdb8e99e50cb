"""Programmatic dependent launch (PDL, sm_90+) for the one-token kernels: a kernel launched with it may start
while the one before it in the stream drains, and loads its weights before waiting for that kernel's output.

A kernel's `pdl` setting: "off", the plain kernel; "on", the PDL form of the kernel, launched with the
attribute; "serial", the same PDL form launched in plain stream order, where the grid steps are no-ops: the order the
race tests compare "on" against. In artifacts, AOTInductor launches the kernels compiled with GDC with PDL
(gdn.export.aoti_pdl).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch._higher_order_ops.triton_kernel_wrap as triton_kernel_wrap
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from .launch import INTERPRETED

MODES = ("off", "on", "serial")


def traced(t: torch.Tensor) -> bool:
    """Whether a kernel launch with `t` among its arguments is being traced (export) rather than run."""
    return isinstance(t, (FakeTensor, FunctionalTensor))


def pdl_args(mode: str, like: torch.Tensor) -> dict:
    """Kernel arguments for `mode`: PDL (constexpr, the PDL form), GDC (constexpr, emit the grid-dependency
    instructions; the interpreter has none) and, for "on" launched by Triton on a GPU, the launch option.
    Launches traced for export (`like`, one of the kernel's tensors, is fake) carry no launch option:
    AOTInductor artifacts launch the kernels compiled with GDC with the attribute (gdn.export.aoti_pdl)."""
    if mode not in MODES:
        raise ValueError(f"pdl must be one of {MODES}, got {mode!r}")
    gdc = mode != "off" and not INTERPRETED
    args = {"PDL": mode != "off", "GDC": gdc}
    if mode == "on" and gdc and not traced(like):
        args["launch_pdl"] = True
    return args


def _stores_as_without_gdc(identify):
    """torch's mutation analysis of a traced Triton kernel (torch 2.11) gives up on inline assembly that is not
    pure, which is how Triton writes griddepcontrol, and then takes every tensor argument as written: the export
    clones them all before the launch (the expert weights too), each alias of one tensor into its own copy, and
    the artifact reads ids the router never wrote (an illegal address on the H100). GDC gates only the
    grid-dependency steps, so the kernel compiled with GDC off stores to exactly the same arguments."""

    @functools.wraps(identify)
    def identify_mutated_tensors(kernel: Any, kwargs: dict, *args: Any) -> list[str]:
        if kwargs.get("GDC") is True:
            kwargs = {**kwargs, "GDC": False}
        return identify(kernel, kwargs, *args)

    identify_mutated_tensors.without_gdc = True
    return identify_mutated_tensors


if not getattr(triton_kernel_wrap.identify_mutated_tensors, "without_gdc", False):
    triton_kernel_wrap.identify_mutated_tensors = _stores_as_without_gdc(triton_kernel_wrap.identify_mutated_tensors)


@triton.jit
def grid_wait(GDC: tl.constexpr):
    """Block until the previous kernel in the stream has finished and its writes are visible. A PDL kernel
    may start early, so every read of an earlier kernel's output and every write must come after this;
    before it, only weights (and outputs that an earlier kernel's wait already covered)."""
    if GDC:
        gdc_wait()


@triton.jit
def grid_release(GDC: tl.constexpr):
    """Let the next kernel in the stream start once every program of this one has passed here."""
    if GDC:
        gdc_launch_dependents()
