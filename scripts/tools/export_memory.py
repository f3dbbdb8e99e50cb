"""Peak host memory (RSS) of each stage of a CPU export, in one process: use it to find where an export holds
copies of the weights.

    python scripts/tools/export_memory.py OUT.pte [--checkpoint DIR] [--dtype fp32|bf16] [--quant none|int8|int4]

Stages as gdn-export runs them: imports, load weights, torch.export of prefill and decode, the lowering (constant
propagation, to_edge + XNNPACK, to_executorch), and the write. For each: RSS before, the peak during (Linux's
VmHWM, reset before the stage through /proc/self/clear_refs), RSS after, in MiB; and the peak above the
post-import baseline over the model's weight bytes. Linux only.
"""

from __future__ import annotations

import argparse
import gc
import sys
from contextlib import contextmanager
from pathlib import Path


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


ROWS: list[tuple[str, int, int, int]] = []


@contextmanager
def stage(name: str):
    gc.collect()
    _reset_peak()
    before = _status("VmRSS")
    yield
    ROWS.append((name, before, _status("VmHWM"), _status("VmRSS")))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("output", type=Path)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--quant", default="none")
    ap.add_argument("--max-seq-len", type=int, default=64)
    args = ap.parse_args(argv)
    with stage("imports"):
        import torch

        from gdn.export.artifact import weights_bytes, write_artifact
        from gdn.export.checkpoint import load_model
        from gdn.export.lower import lower_cpu
        from gdn.export.methods import export_methods
        from gdn.export.pipeline import DEFAULT_CHECKPOINT, ExportOptions, plan
        from gdn.export.progress import Progress
    opts = ExportOptions(output=args.output, checkpoint=args.checkpoint or DEFAULT_CHECKPOINT, backend="cpu",
                         dtype=args.dtype, max_seq_len=args.max_seq_len, quant=args.quant)
    p = plan(opts)
    base = _status("VmRSS")
    with stage("load weights"):
        model = load_model(opts.checkpoint, p.max_seq_len, p.dtype, p.state_dtype, p.kernels, "cpu", p.quant)
    weights = weights_bytes(model)
    with stage("torch.export prefill + decode"):
        programs = export_methods(model, p.max_prefill_chunk, Progress(quiet=True))
    with stage("lower (constant prop, to_edge + XNNPACK, to_executorch)"):
        program = lower_cpu(programs, {"gdn.metadata": b"{}"})
    with stage("write"):
        write_artifact(program, args.output.absolute(), with_data=False)
    mib = 2**20
    print(f"weights {weights / mib:.1f} MiB ({str(p.dtype)[6:]}, quant {args.quant}); baseline after imports "
          f"{base / mib:.0f} MiB")
    print("| stage | RSS before MiB | peak MiB | RSS after MiB | (peak - baseline) / weights |")
    print("|---|---|---|---|---|")
    for name, before, peak, after in ROWS:
        ratio = (peak - base) / weights if name != "imports" else float("nan")
        print(f"| {name} | {before / mib:.0f} | {peak / mib:.0f} | {after / mib:.0f} | {ratio:.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
