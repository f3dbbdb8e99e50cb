"""Programmatic dependent launch (PDL, sm_90+) for the one-token kernels: a kernel launched with it may start
while the one before it in the stream drains, and loads its weights before waiting for that kernel's output.

A kernel's `pdl` setting: "off", the plain kernel; "on", the PDL form of the kernel, launched with the
attribute; "serial", the same PDL form launched in plain stream order, where the grid steps are no-ops. That
is how AOTInductor's launcher runs it, and the order the race tests compare "on" against.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from .gated_delta_rule.launch import INTERPRETED

MODES = ("off", "on", "serial")


def pdl_args(mode: str) -> dict:
    """Kernel arguments for `mode`: PDL (constexpr, the PDL form where a kernel has one; the router and
    kernel 1 only wait and release), GDC (constexpr, emit the grid-dependency
    instructions; the interpreter has none) and, for "on" on a GPU, Triton's launch option (eager launches
    only: torch's tracing of Triton launches sets num_warps and num_stages apart, not launch_pdl)."""
    if mode not in MODES:
        raise ValueError(f"pdl must be one of {MODES}, got {mode!r}")
    gdc = mode != "off" and not INTERPRETED
    args = {"PDL": mode != "off", "GDC": gdc}
    if mode == "on" and gdc:
        args["launch_pdl"] = True
    return args


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
