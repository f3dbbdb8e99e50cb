"""AOTInductor in tests: compile an ExportedProgram the way the ExecuTorch CUDA backend does (kernels
embedded, libtorch not linked, weights in a separate blob) and load it in-process as the runner loads an
artifact's methods, with gdn.export's PDL launches. Packages loaded with `torch._inductor.aoti_load_package`,
or their libraries through the container runner, segfaulted on the H100 machines (torch 2.11, even a two-op
module); this path loads."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.export import ExportedProgram
from torch.utils import _pytree as pytree

from gdn.export.aoti_pdl import LAUNCH_PDL, pdl_launches
from gdn.runner.methods import make_libtorch_global

OPTIONS = {
    "aot_inductor.embed_kernel_binary": True,
    "aot_inductor.link_libtorch": False,
    "aot_inductor.package": True,
    "aot_inductor.package_constants_in_so": False,
    "aot_inductor.package_constants_on_disk_format": "binary_blob",
}


def compile_and_load(ep: ExportedProgram) -> tuple[Callable[..., object], str]:
    """-> (callable with the program's signature, the generated C++ sources)."""
    # the placeholders' fake values carry the symbolic (dynamic) dims, as the ExecuTorch backend passes them
    user = set(ep.graph_signature.user_inputs)
    fake = tuple(n.meta["val"] for n in ep.graph.nodes if n.op == "placeholder" and n.name in user)
    with torch.no_grad(), pdl_launches():
        paths = [Path(p) for p in torch._inductor.aot_compile(ep.module(), fake, options=OPTIONS)]
    (so,) = [p for p in paths if p.name.endswith(".wrapper.so")]
    (blob,) = [p for p in paths if p.name.endswith(".wrapper_weights.blob")]
    # this compile's sources only: the cache directory can hold an earlier compile's
    stem = so.name.split(".")[0]
    cpp = {p for p in paths if p.suffix == ".cpp"} | set(so.parent.glob(f"{stem}*.cpp"))
    src = "\n".join(p.read_text(errors="replace") for p in sorted(cpp))
    make_libtorch_global()
    runner = torch._C._aoti.AOTIModelContainerRunnerCuda(str(so), 1, "cuda", "", True)
    runner.update_constant_buffer_from_blob(str(blob))
    out_spec = ep.call_spec.out_spec

    def call(*args, **kwargs):
        outs = runner.run(pytree.tree_leaves((args, kwargs)))
        return pytree.tree_unflatten(outs, out_spec)

    call.runner = runner
    return call, src


def pdl_launch_sites(src: str) -> int:
    """Calls of launchKernelPdl in generated C++ (one per launcher of a kernel compiled with GDC)."""
    return src.count(LAUNCH_PDL) - src.count("void " + LAUNCH_PDL)
