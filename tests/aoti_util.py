"""AOTInductor in tests: compile an ExportedProgram to a package, then load its library in-process through
the container runner, as the runner loads artifact methods. `torch._inductor.aoti_load_package` segfaulted
on the H100 machines (torch 2.11, even for a two-op module); the container runner does not."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable

import torch
from torch.export import ExportedProgram
from torch.utils import _pytree as pytree


def compile_and_load(ep: ExportedProgram, workdir: Path) -> tuple[Callable[..., object], str]:
    """-> (callable with the program's signature, the generated C++ wrapper source)."""
    pkg = torch._inductor.aoti_compile_and_package(ep, package_path=str(workdir / "model.pt2"))
    unpacked = workdir / "unpacked"
    with zipfile.ZipFile(pkg) as z:
        z.extractall(unpacked)
    (so,) = [p for p in unpacked.rglob("*.so")]
    src = "\n".join(p.read_text(errors="replace") for p in sorted(unpacked.rglob("*.cpp")))
    runner = torch._C._aoti.AOTIModelContainerRunnerCuda(str(so), 1, "cuda", str(so.parent))
    out_spec = ep.call_spec.out_spec

    def call(*args, **kwargs):
        outs = runner.run(pytree.tree_leaves((args, kwargs)))
        return pytree.tree_unflatten(outs, out_spec)

    call.runner = runner
    return call, src
