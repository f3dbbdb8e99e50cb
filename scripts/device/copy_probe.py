"""Device-to-device copy bandwidth four ways (1 GiB, CUDA events, medians): torch's `copy_` eager and
inside a CUDA graph, and an SM copy kernel (x * 1) eager and graphed. Inside a graph `copy_` becomes a
memcpy node; on the H100 (2026-11-22) that node moved 2420 GB/s against 2960-2984 for the other three,
which is why the benchmarks' memory limit uses the SM copy kernel.

    python scripts/device/copy_probe.py
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_gdn import graphed, timed  # noqa: E402

N = 1 << 30


def main() -> None:
    src = torch.randn(N // 4, device="cuda")
    dst = torch.empty_like(src)
    copy = lambda i=0: dst.copy_(src)
    kernel = lambda i=0: torch.mul(src, 1.0, out=dst)
    print(torch.cuda.get_device_name(0), torch.__version__)
    for name, fn in (("copy_ eager", copy), ("copy_ graphed (memcpy node)", graphed(copy, 1)),
                     ("SM copy kernel eager", kernel), ("SM copy kernel graphed", graphed(kernel, 1))):
        us = timed(fn, reps=20, inner=1)
        print(f"{name:30s} {us:8.1f} us {2 * N / us / 1e3:6.0f} GB/s (read + write)")


if __name__ == "__main__":
    main()
