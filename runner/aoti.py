"""Run a CUDA artifact in-process: each method's AOTInductor library through torch's AOTInductor runtime.

The `.pte` holds one shared library per method (`<method>_so_blob`), the `.ptd` the weights blob
(`<method>_weights_blob`). Weights and the mutable state are loaded once, into the `prefill` container;
`decode` is pointed at the same tensors, so GPU memory holds one copy and both methods update one state.
The delegate's input order is read from the program's execution plan (the delegate call's arguments).
Containers run single-threaded: the thread-safe run records a completion event per call, and once a run
has been captured into a CUDA graph that event fails every later run, eager or captured ("invalid
argument", measured on the H100); the single-threaded run has no event, no lock and less host work.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .artifact import METHODS, Artifact, ArtifactError
from .flatbuf import Segment

BACKEND_ID = "CudaBackend"
_LIBTORCH = ("libc10.so", "libc10_cuda.so", "libtorch_cpu.so", "libtorch_cuda.so", "libtorch.so")


def make_libtorch_global() -> None:
    """The libraries are built without linking libtorch: its symbols must be globally visible."""
    lib = Path(torch.__file__).parent / "lib"
    for name in _LIBTORCH:
        if (lib / name).exists():
            ctypes.CDLL(str(lib / name), mode=ctypes.RTLD_GLOBAL)


def input_order(artifact: Artifact, method: str) -> list[int]:
    """Method-argument indices in the order the CUDA delegate takes them."""
    calls = artifact.layout.delegate_inputs[method]
    ids = artifact.layout.delegate_ids[method]
    if len(calls) != 1 or ids[0] != BACKEND_ID:
        raise ArtifactError(f"{artifact.path}: method {method!r} is not one {BACKEND_ID} delegate call (found {ids})")
    order = [i for i in calls[0] if i >= 0]
    n = artifact.layout.method_inputs[method]
    if sorted(order) != list(range(n)):
        raise ArtifactError(f"{artifact.path}: the {method!r} delegate does not take each method input once: {calls[0]}")
    return order


def _copy_range(src: int, dst: int, seg: Segment) -> None:
    """Kernel-side copy of a byte range between files (never through Python memory)."""
    done = 0
    while done < seg.size:
        try:
            n = os.copy_file_range(src, dst, seg.size - done, seg.offset + done)
        except OSError:
            n = os.sendfile(dst, src, seg.offset + done, seg.size - done)
        if n <= 0:
            raise ArtifactError(f"short read copying a {seg.size}-byte blob")
        done += n


class CudaMethods:
    def __init__(self, artifact: Artifact):
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.artifact = artifact
        self._order = {m: input_order(artifact, m) for m in METHODS}
        make_libtorch_global()
        tmp = Path(tempfile.mkdtemp(prefix="gdn-aoti-"))
        try:
            self._runners = {m: self._load_library(m, tmp) for m in METHODS}
            self._load_weights(METHODS[0], tmp)
            self._share(METHODS[0], METHODS[1:])
        finally:
            # dlopen keeps the mapped libraries; nothing in the folder is needed after loading
            shutil.rmtree(tmp, ignore_errors=True)

    def _load_library(self, method: str, tmp: Path):
        seg = self.artifact.layout.named_data.get(f"{method}_so_blob")
        if seg is None:
            raise ArtifactError(f"{self.artifact.path} has no library for {method!r} ({method}_so_blob)")
        so = tmp / f"{method}.so"
        with open(self.artifact.path, "rb") as src, open(so, "wb") as dst:
            _copy_range(src.fileno(), dst.fileno(), seg)
        try:
            # (library, model instances, device, cubin dir, run single-threaded)
            return torch._C._aoti.AOTIModelContainerRunnerCuda(str(so), 1, "cuda", "", True)
        except RuntimeError as e:
            raise ArtifactError(f"cannot load the {method!r} library of {self.artifact.path}: {e}") from None

    def _load_weights(self, method: str, tmp: Path) -> None:
        seg = self.artifact.data_named[f"{method}_weights_blob"]
        blob = tmp / f"{method}.weights"
        with open(self.artifact.data_path, "rb") as src, open(blob, "wb") as dst:
            _copy_range(src.fileno(), dst.fileno(), seg)
        self._runners[method].update_constant_buffer_from_blob(str(blob))
        blob.unlink()

    def _share(self, owner: str, others: tuple[str, ...]) -> None:
        """Point the other containers at the owner's constants (weights and state), matched by original FQN."""
        tensors = self.constants(owner)
        for method in others:
            runner = self._runners[method]
            wanted = runner.get_constant_names_to_original_fqns()
            missing = sorted(fqn for fqn in wanted.values() if fqn not in tensors)
            if missing:
                raise ArtifactError(f"{self.artifact.path}: {method!r} needs constants that {owner!r} lacks: {missing[:3]}")
            runner.update_constant_buffer({name: tensors[fqn] for name, fqn in wanted.items()}, False, False, True)

    def constants(self, method: str) -> dict[str, torch.Tensor]:
        """The constants (weights and state) a method's container uses, by original FQN (the container's
        extract_constants_map already keys them so; update_constant_buffer takes its internal names)."""
        return dict(self._runners[method].extract_constants_map(False))

    def _run(self, method: str, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        args = (tokens, input_pos)
        outs = self._runners[method].run([args[i] for i in self._order[method]])
        return outs[0]

    def prefill(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self._run("prefill", tokens, input_pos)

    def decode(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self._run("decode", tokens, input_pos)

    def close(self) -> None:
        self._runners = {}
