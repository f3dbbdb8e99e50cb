"""Where does a CUDA export spend its time? Wall-clock timers around the lowering's steps (printed as each
ends, so a run cut off by a time limit still says how far it got), or cProfile with `--cprofile`.

When to use: an export got slower, or before working on export time; the models are gdn_bench's.

    python scripts/tools/profile_export.py OUT_DIR [--model tiny|qwen3.5-2b|...] [--kernels reference|ops]
"""

import argparse
import cProfile
import functools
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gdn.export.pipeline import ExportOptions, run_export  # noqa: E402
from gdn.export.progress import Progress  # noqa: E402
from gdn_bench import make_checkpoint  # noqa: E402

T0 = time.perf_counter()


def timed(owner, name: str, label: str, classmethod_: bool = False) -> None:
    fn = getattr(owner, name)
    raw = fn.__func__ if classmethod_ else fn

    @functools.wraps(raw)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return raw(*args, **kwargs)
        finally:
            now = time.perf_counter()
            print(f"[{now - T0:7.1f}s] {label}: {now - t:.1f}s", file=sys.stderr, flush=True)

    setattr(owner, name, classmethod(wrapper) if classmethod_ else wrapper)


def install_timers() -> None:
    import executorch.backends.aoti.aoti_backend as aoti
    from executorch.backends.cuda.cuda_backend import CudaBackend
    from executorch.exir.program._program import EdgeProgramManager

    import executorch.exir as exir

    timed(torch.export.ExportedProgram, "run_decompositions", "run_decompositions")
    timed(torch.export.ExportedProgram, "module", "ExportedProgram.module")
    timed(aoti, "move_to_device_pass", "move_to_device_pass")
    timed(torch._inductor, "aot_compile", "inductor.aot_compile")
    timed(torch._inductor.cpp_builder.CppBuilder, "build", "C++ build")
    timed(CudaBackend, "preprocess", "CudaBackend.preprocess", classmethod_=True)
    timed(EdgeProgramManager, "to_executorch", "to_executorch")
    timed(exir, "to_edge_transform_and_lower", "to_edge_transform_and_lower")


ap = argparse.ArgumentParser()
ap.add_argument("out", type=Path)
ap.add_argument("--model", default="tiny")
ap.add_argument("--kernels", default="reference")
ap.add_argument("--dtype", default="bf16")
ap.add_argument("--max-seq-len", type=int, default=None)
ap.add_argument("--autotune", choices=["decode", "all", "none"], default="decode")
ap.add_argument("--cprofile", action="store_true")
args = ap.parse_args()
args.out.mkdir(parents=True, exist_ok=True)

ckpt = make_checkpoint(args.model, args.out)
print(f"[{time.perf_counter() - T0:7.1f}s] checkpoint {ckpt}", file=sys.stderr, flush=True)
install_timers()
opts = ExportOptions(output=args.out / f"{args.model}-{args.dtype}.pte", checkpoint=ckpt, backend="cuda",
                     dtype=args.dtype, kernels=args.kernels, autotune=args.autotune, max_seq_len=args.max_seq_len)
prof = cProfile.Profile() if args.cprofile else None
t0 = time.perf_counter()
if prof:
    prof.enable()
res = run_export(opts, Progress())
if prof:
    prof.disable()
    prof.dump_stats(args.out / f"{args.model}.prof")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
print(f"total {time.perf_counter() - t0:.1f}s stages {res.timings} sizes {res.sizes}", file=sys.stderr)
print(torch._dynamo.utils.compile_times(repr="str"), file=sys.stderr)
