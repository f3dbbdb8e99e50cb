"""An artifact's two methods, `prefill` and `decode`, behind one protocol: CPU programs through
`executorch.runtime`, CUDA programs through torch's AOTInductor runtime, side by side.

Both methods read and update the same state inside the program; a call with input_pos[0] == 0 starts a new
sequence (the reset happens on the device).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Protocol

import torch

from .artifact import METHODS, Artifact
from .errors import ArtifactError
from .flatbuf import Segment


class Methods(Protocol):
    device: torch.device

    def prefill(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """tokens [1, T] int64, input_pos [T] int64 (1 <= T <= max_prefill_chunk) -> logits [1, vocab]."""

    def decode(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """tokens [1, 1], input_pos [1] -> logits [1, vocab]."""

    def close(self) -> None:
        """Release the program (and on CUDA the GPU memory)."""


def load_methods(artifact: Artifact) -> Methods:
    if artifact.meta.backend == "cpu":
        return CpuMethods(artifact)
    if not torch.cuda.is_available():
        raise ArtifactError(f"{artifact.path} is a CUDA artifact but no CUDA GPU is available")
    return CudaMethods(artifact)


# the runtime logs these at INFO level to stderr whenever XNNPACK starts (cpuinfo's CPU detection)
NATIVE_NOISE = ("[cpuinfo_utils.cpp:", "[threadpool.cpp:")
NATIVE_LOGS_ENV = "GDN_NATIVE_LOGS"  # "1": let the native runtime's log lines through (gdn-run --verbose)


@contextmanager
def quiet_native_logs(enabled: bool) -> Iterator[None]:
    """Holds what native code writes to file descriptor 2 while the block runs, then writes it to stderr without
    the lines that start with NATIVE_NOISE, so errors and warnings still show; enabled False: a no-op."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not line.startswith(NATIVE_NOISE))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


# ExecuTorch's LLM custom ops (llama::update_cache, llama::custom_sdpa): the wheel ships their kernels in this
# library, which registers them with the runtime (and as torch ops) when loaded
LLM_OPS_LIBRARY = Path("extension") / "llm" / "custom_ops" / "libcustom_ops_aot_lib.so"
# custom_sdpa asks each call for a temp allocator, which the Python runtime does not give, says so, and uses the heap
LLM_OPS_NOISE = (b"No temp allocator provided",)
_LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                           ctypes.c_char_p, ctypes.c_size_t)


class _PalTable(ctypes.Structure):
    """executorch::runtime::PalImpl (runtime/platform/platform.h): null entries keep the default."""
    _fields_ = ([(n, ctypes.c_void_p) for n in ("init", "abort", "current_ticks", "ticks_to_ns_multiplier")]
                + [("emit_log_message", _LOG_FN), ("allocate", ctypes.c_void_p), ("free", ctypes.c_void_p),
                   ("source_filename", ctypes.c_char_p)])


@_LOG_FN
def _emit_log(timestamp, level, filename, function, line, message, length) -> None:
    text = ctypes.string_at(message, length)
    if not text.startswith(LLM_OPS_NOISE):
        name = (filename or b"?").rsplit(b"/", 1)[-1]
        os.write(2, b"%c executorch:%s:%d] %s\n" % (level, name, line, text))


@functools.cache
def load_llm_ops() -> None:
    """Load the LLM ops' kernels into this process (once). The library logs through its own copy of the runtime's
    platform layer: unless $GDN_NATIVE_LOGS is 1, its log hook drops the per-call LLM_OPS_NOISE line."""
    import executorch
    from executorch.extension.pybindings import portable_lib  # noqa: F401  (the runtime it registers into)

    path = Path(next(iter(executorch.__path__))) / LLM_OPS_LIBRARY
    if not path.exists():
        raise ArtifactError(f"the executorch install lacks {path.name}, the kernels of its LLM ops")
    torch.ops.load_library(str(path))
    if os.environ.get(NATIVE_LOGS_ENV) != "1":
        register = ctypes.CDLL(str(path))["_ZN10executorch7runtime12register_palENS0_7PalImplE"]
        register.argtypes, register.restype = [_PalTable], ctypes.c_bool
        register(_PalTable(emit_log_message=_emit_log, source_filename=b"gdn.runner.methods"))


CPU_THREADS_ENV = "GDN_CPU_THREADS"  # the runtime's thread pool size for CPU artifacts (default 1)


@functools.cache
def set_cpu_threads(threads: int) -> int:
    """Size the runtime's one thread pool (XNNPACK and the kernels share it), once per process and before any
    program loads: a delegate keeps the pool it started with. One thread by default: on two cores, every sublayer
    of the bundled model ran faster on one (a step's ops are microseconds long; waking a second thread per op costs
    more than it saves; scripts/bench_cpu.py --gdn-threads measures others)."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)
    return threads


def cpu_threads() -> int:
    value = os.environ.get(CPU_THREADS_ENV, "1")
    if not value.isdigit() or int(value) < 1:
        raise ArtifactError(f"${CPU_THREADS_ENV} must be a positive whole number, got {value!r}")
    return int(value)


class CpuMethods:
    """The two methods through the executorch pip wheel's runtime; the program is memory-mapped by it. The
    mutable state lives in one memory arena that the two methods share. The runtime's informational log lines
    at load are hidden unless $GDN_NATIVE_LOGS is 1 (quiet_native_logs). ExecuTorch's LLM ops, which float32
    programs call for attention, are loaded first (load_llm_ops); the thread pool gets $GDN_CPU_THREADS threads
    (set_cpu_threads)."""

    def __init__(self, artifact: Artifact):
        from executorch.runtime import Runtime, Verification

        self.device = torch.device("cpu")
        load_llm_ops()
        threads = cpu_threads()
        try:
            with quiet_native_logs(os.environ.get(NATIVE_LOGS_ENV) != "1"):
                set_cpu_threads(threads)
                program = Runtime.get().load_program(artifact.path, verification=Verification.Minimal)
                self._prefill = program.load_method("prefill")
                self._decode = program.load_method("decode")
        except RuntimeError as e:
            raise ArtifactError(f"executorch cannot load {artifact.path}: {e}") from None
        self._program = program

    def prefill(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self._prefill.execute((tokens, input_pos))[0]

    def decode(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self._decode.execute((tokens, input_pos))[0]

    def close(self) -> None:
        self._prefill = self._decode = self._program = None


class CudaMethods:
    """Each method's AOTInductor library (`<method>_so_blob` in the .pte) in a container of torch's AOTInductor
    runtime. Weights (`<method>_weights_blob` in the .ptd) and the mutable state load once, into the `prefill`
    container; `decode` is pointed at the same tensors, so GPU memory holds one copy and both methods update one
    state. Containers run single-threaded: the thread-safe run records a completion event per call, which fails
    every run once a run has been captured into a CUDA graph ("invalid argument"); the single-threaded run has
    no event, no lock and less host work."""

    BACKEND_ID = "CudaBackend"

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

    def prefill(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self._run("prefill", tokens, input_pos)

    def decode(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self._run("decode", tokens, input_pos)

    def close(self) -> None:
        self._runners = {}

    def constants(self, method: str) -> dict[str, torch.Tensor]:
        """The constants (weights and state) a method's container uses, by original FQN."""
        return dict(self._runners[method].extract_constants_map(False))

    def _run(self, method: str, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        args = (tokens, input_pos)
        return self._runners[method].run([args[i] for i in self._order[method]])[0]

    def _load_library(self, method: str, tmp: Path):
        seg = self.artifact.layout.named_data.get(f"{method}_so_blob")
        if seg is None:
            raise ArtifactError(f"{self.artifact.path} has no library for {method!r} ({method}_so_blob)")
        so = tmp / f"{method}.so"
        copy_segment(self.artifact.path, seg, so)
        try:
            # (library, model instances, device, cubin dir, run single-threaded)
            return torch._C._aoti.AOTIModelContainerRunnerCuda(str(so), 1, "cuda", "", True)
        except RuntimeError as e:
            raise ArtifactError(f"cannot load the {method!r} library of {self.artifact.path}: {e}") from None

    def _load_weights(self, method: str, tmp: Path) -> None:
        blob = tmp / f"{method}.weights"
        copy_segment(self.artifact.data_path, self.artifact.data_named[f"{method}_weights_blob"], blob)
        self._runners[method].update_constant_buffer_from_blob(str(blob))
        blob.unlink()

    def _share(self, owner: str, others: tuple[str, ...]) -> None:
        """Point the other containers at the owner's constants (weights and state), matched by original FQN
        (extract_constants_map keys them so; update_constant_buffer takes the container's internal names)."""
        tensors = self.constants(owner)
        for method in others:
            runner = self._runners[method]
            wanted = runner.get_constant_names_to_original_fqns()
            missing = sorted(fqn for fqn in wanted.values() if fqn not in tensors)
            if missing:
                raise ArtifactError(f"{self.artifact.path}: {method!r} needs constants that {owner!r} lacks: {missing[:3]}")
            runner.update_constant_buffer({name: tensors[fqn] for name, fqn in wanted.items()}, False, False, True)


def input_order(artifact: Artifact, method: str) -> list[int]:
    """Method-argument indices in the order the CUDA delegate takes them (its call's arguments in the plan)."""
    calls = artifact.layout.delegate_inputs[method]
    ids = artifact.layout.delegate_ids[method]
    if len(calls) != 1 or ids[0] != CudaMethods.BACKEND_ID:
        raise ArtifactError(f"{artifact.path}: method {method!r} is not one {CudaMethods.BACKEND_ID} delegate call (found {ids})")
    order = [i for i in calls[0] if i >= 0]
    if sorted(order) != list(range(artifact.layout.method_inputs[method])):
        raise ArtifactError(f"{artifact.path}: the {method!r} delegate does not take each method input once: {calls[0]}")
    return order


def make_libtorch_global() -> None:
    """The libraries are built without linking libtorch: its symbols must be globally visible."""
    lib = Path(torch.__file__).parent / "lib"
    for name in ("libc10.so", "libc10_cuda.so", "libtorch_cpu.so", "libtorch_cuda.so", "libtorch.so"):
        if (lib / name).exists():
            ctypes.CDLL(str(lib / name), mode=ctypes.RTLD_GLOBAL)


def copy_segment(path: Path, seg: Segment, dst: Path) -> None:
    """A byte range of `path` into the file `dst`, copied by the kernel (never through Python memory)."""
    with open(path, "rb") as src, open(dst, "wb") as out:
        done = 0
        while done < seg.size:
            try:
                n = os.copy_file_range(src.fileno(), out.fileno(), seg.size - done, seg.offset + done)
            except OSError:
                n = os.sendfile(out.fileno(), src.fileno(), seg.offset + done, seg.size - done)
            if n <= 0:
                raise ArtifactError(f"short read copying a {seg.size}-byte blob from {path}")
            done += n
