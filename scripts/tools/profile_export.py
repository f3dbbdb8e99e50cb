"""Where does an export spend its time? Wall-clock timers around the lowering's steps (printed as each
ends, so a run cut off by a time limit still says how far it got), or cProfile with `--cprofile`.

When to use: an export got slower, or before working on export time. CUDA: the models are gdn_bench's. CPU
(`--backend cpu`): the bundled default model unless `--model` names a gdn_bench model; it also prints each
method's node count before lowering, the XNNPACK partitions and the ops left to the portable kernels.

`--components` (CPU): where the time goes per sublayer, at export and at run time. The executorch pip wheel is
built without the event tracer, so ETDump records nothing; instead each sublayer kind of the bundled model
(GDN, attention, MoE, the final norm + lm_head) is exported alone as a two-method program like the artifact's,
lowered by lower_cpu, and its methods timed in the runtime (prefill of 16 tokens, one decode step) on the runner's
thread pool ($GDN_CPU_THREADS, default 1). Multiply by the model's count of each kind for its share of a step.

    python scripts/tools/profile_export.py OUT_DIR [--backend cuda|cpu] [--model default|tiny|qwen3.5-2b|...]
        [--kernels reference|ops] [--dtype bf16|fp32] [--max-seq-len N] [--cprofile]
    python scripts/tools/profile_export.py OUT_DIR --backend cpu --components [--max-seq-len N]
"""

import argparse
import collections
import cProfile
import functools
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gdn.export.pipeline import DEFAULT_CHECKPOINT, ExportOptions, run_export  # noqa: E402
from gdn.export.progress import Progress  # noqa: E402

T0 = time.perf_counter()
CALLS: collections.Counter = collections.Counter()
SPENT: collections.Counter = collections.Counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def timed(owner, name: str, label: str, classmethod_: bool = False, quiet: bool = False) -> None:
    """quiet: summed per label (a step called once per partition) instead of printed per call."""
    fn = getattr(owner, name)
    raw = fn.__func__ if classmethod_ else fn
    static = isinstance(owner.__dict__.get(name) if isinstance(owner, type) else None, staticmethod)

    @functools.wraps(raw)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return raw(*args, **kwargs)
        finally:
            CALLS[label] += 1
            SPENT[label] += time.perf_counter() - t
            if not quiet:
                log(f"{label}: {time.perf_counter() - t:.1f}s")

    setattr(owner, name, classmethod(wrapper) if classmethod_ else staticmethod(wrapper) if static else wrapper)


def install_cuda_timers() -> None:
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


def install_cpu_timers() -> None:
    import executorch.exir.program._program as prog
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend
    from executorch.exir.passes.memory_planning_pass import MemoryPlanningPass

    import executorch.exir as exir
    import executorch.exir.passes.constant_prop_pass as const_prop

    timed(const_prop, "constant_prop_pass", "constant propagation (per method)")
    timed(torch.export.ExportedProgram, "run_decompositions", "run_decompositions (a re-trace)")
    timed(prog, "_generate_edge_program", "edge dialect (per method)")
    timed(prog, "_gen_edge_manager_for_partitioners", "to_edge, partitioner's path (decompositions + edge dialect)")
    timed(exir, "to_edge", "to_edge, one re-trace per method (decompositions + edge dialect)")
    timed(prog.EdgeProgramManager, "transform", "our edge passes")
    timed(XnnpackPartitioner, "partition", "XNNPACK partitioner (tagging)")
    timed(XnnpackBackend, "preprocess", "XNNPACK preprocess (per partition)", quiet=True)
    timed(prog.EdgeProgramManager, "to_backend", "to_backend (partition + preprocess + fuse)")
    timed(exir, "to_edge_transform_and_lower", "to_edge_transform_and_lower")
    timed(MemoryPlanningPass, "run", "memory planning (per method)")
    timed(prog.EdgeProgramManager, "to_executorch", "to_executorch (passes + memory planning)")
    timed(prog, "emit_program", "emit")


def count_nodes(programs) -> None:
    for name, ep in programs.items():
        ops = collections.Counter(str(n.target) for n in ep.graph.nodes if n.op == "call_function")
        top = ", ".join(f"{k.split('.')[-2] if '.' in k else k} {v}" for k, v in ops.most_common(12))
        log(f"{name}: {sum(ops.values())} call nodes before lowering; top: {top}")


def describe_lowered(et_program) -> None:
    """Per method: XNNPACK delegate calls and the ops left to the portable/optimized kernels."""
    for name in et_program.methods:
        gm = et_program.exported_program(name).graph_module
        ops = collections.Counter()
        for n in gm.graph.nodes:
            if n.op == "call_function":
                ops[getattr(n.target, "__name__", str(n.target))] += 1
        delegates = ops.pop("executorch_call_delegate", 0)
        rest = ", ".join(f"{k} {v}" for k, v in ops.most_common(15))
        log(f"{name}: {delegates} XNNPACK delegate calls, {sum(ops.values())} other calls; top: {rest}")


class Sublayer(torch.nn.Module):
    """One sublayer of `model` on a hidden state x [T, H] (its input projection included)."""

    def __init__(self, model, kind: str, decode: bool):
        super().__init__()
        self.model, self.kind, self.decode = model, kind, decode
        self.layer = next(layer for layer in model.layers if {"gdn": layer.is_linear, "attention": not layer.is_linear,
                                                              "moe": layer.is_moe, "head": True}[kind])

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        layer, m = self.layer, self.model
        if self.kind == "gdn":
            return layer.linear_attn(layer.linear_attn.in_proj(x), input_pos[:1] == 0, self.decode)
        if self.kind == "attention":
            cos, sin = m.rotary(input_pos, x.dtype)
            return layer.self_attn(layer.self_attn.qkv_proj(x), input_pos, cos, sin, self.decode)
        if self.kind == "moe":
            return layer.mlp(x, layer.mlp.router_shared(x), self.decode)
        return m.kernel_set.norm_gemv(x[-1:], x[-1:], m.norm.weight, m.norm.eps, m.lm_head.weight)[0]


def profile_components(max_seq_len: int) -> None:
    import statistics

    from executorch.runtime import Runtime, Verification

    from gdn.export.checkpoint import load_model
    from gdn.export.lower import lower_cpu
    from gdn.runner.methods import cpu_threads, load_llm_ops, set_cpu_threads

    set_cpu_threads(cpu_threads())  # the runner's pool ($GDN_CPU_THREADS), before any program loads
    load_llm_ops()
    model = load_model(DEFAULT_CHECKPOINT, max_seq_len, torch.float32, torch.float32, "reference", "cpu")
    layers = model.layers
    counts = {"gdn": sum(la.is_linear for la in layers), "attention": sum(not la.is_linear for la in layers),
              "moe": sum(la.is_moe for la in layers), "head": 1}
    H, T = model.cfg.hidden_size, torch.export.Dim("T", min=1, max=64)
    for kind, n in counts.items():
        if n == 0:
            continue
        t0 = time.perf_counter()
        with torch.no_grad():
            progs = {"prefill": torch.export.export(Sublayer(model, kind, False), (torch.randn(2, H), torch.arange(2)),
                                                    dynamic_shapes=({0: T}, {0: T}), strict=True),
                     "decode": torch.export.export(Sublayer(model, kind, True), (torch.randn(1, H), torch.arange(1)),
                                                   strict=True)}
            t1 = time.perf_counter()
            et = lower_cpu(progs, {})
        t2 = time.perf_counter()
        program = Runtime.get().load_program(et.buffer, verification=Verification.Minimal)
        prefill, decode = program.load_method("prefill"), program.load_method("decode")
        x = torch.randn(16, H)

        def ms(fn, reps: int) -> float:
            fn()
            runs = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - t)
            return statistics.median(runs) * 1e3

        pre = ms(lambda: prefill.execute((x, torch.arange(16))), 7)
        dec = ms(lambda: decode.execute((x[:1], torch.tensor([16]))), 31)
        calls = {m: sum(str(nd.target).endswith("call_delegate") for nd in et.exported_program(m).graph.nodes)
                 for m in ("prefill", "decode")}
        log(f"{kind} x{n}: export {t1 - t0:.1f}s, lower {t2 - t1:.1f}s, XNNPACK calls {calls} | prefill 16 tokens "
            f"{pre:.2f} ms, decode {dec:.3f} ms (x{n}: {pre * n:.1f} / {dec * n:.2f} ms)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--backend", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--model", default=None, help="a gdn_bench model; default: tiny (CUDA), the bundled model (CPU)")
    ap.add_argument("--kernels", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--max-seq-len", type=int, default=None)
    ap.add_argument("--autotune", choices=["decode", "all", "none"], default="decode")
    ap.add_argument("--cprofile", action="store_true")
    ap.add_argument("--components", action="store_true", help="CPU: per-sublayer export and runtime cost")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cpu = args.backend == "cpu"
    if args.components:
        profile_components(args.max_seq_len or 2048)
        return
    model = args.model or ("default" if cpu else "tiny")
    if model == "default":
        ckpt = DEFAULT_CHECKPOINT
    else:
        from gdn_bench import make_checkpoint

        ckpt = make_checkpoint(model, args.out)
    log(f"checkpoint {ckpt}")
    install_cpu_timers() if cpu else install_cuda_timers()
    dtype = args.dtype or ("fp32" if cpu else "bf16")
    kernels = args.kernels or ("reference" if cpu else "auto")
    opts = ExportOptions(output=args.out / f"{model}-{dtype}.pte", checkpoint=ckpt, backend=args.backend,
                         dtype=dtype, kernels=kernels, autotune=args.autotune, max_seq_len=args.max_seq_len)
    if cpu:
        watch_lowering()
    prof = cProfile.Profile() if args.cprofile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    res = run_export(opts, Progress())
    if prof:
        prof.disable()
        prof.dump_stats(args.out / f"{model}.prof")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
    log(f"total {time.perf_counter() - t0:.1f}s stages {res.timings} sizes {res.sizes}")
    for label in SPENT:
        if CALLS[label] > 1:
            log(f"  sum {label}: {SPENT[label]:.1f}s over {CALLS[label]} calls")
    if not cpu:
        print(torch._dynamo.utils.compile_times(repr="str"), file=sys.stderr)


def watch_lowering() -> None:
    """Wrap lower_cpu to print node counts before and the partitioning after."""
    import gdn.export.pipeline as pipeline

    lower = pipeline.lower_cpu

    def wrapped(programs, named):
        count_nodes(programs)
        et = lower(programs, named)
        describe_lowered(et)
        return et

    pipeline.lower_cpu = wrapped


if __name__ == "__main__":
    main()
