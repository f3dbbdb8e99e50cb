"""Device-to-device copy bandwidth four ways (1 GiB, CUDA events, medians of 20): torch's `copy_` eager and
inside a CUDA graph, and an SM copy kernel (x * 1) eager and graphed. Inside a graph `copy_` becomes a
memcpy node; on the H100 (2026-11-22) that node moved 2420 GB/s against 2960-2984 for the other three,
which is why the benchmarks' memory limit uses the SM copy kernel.

    python scripts/device/copy_probe.py
"""

import statistics

import torch

N = 1 << 30


def median_us(fn, n: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times)


def graphed(fn):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def main() -> None:
    src = torch.randn(N // 4, device="cuda")
    dst = torch.empty_like(src)
    copy = lambda: dst.copy_(src)
    kernel = lambda: torch.mul(src, 1.0, out=dst)
    print(torch.cuda.get_device_name(0), torch.__version__)
    for name, fn in (("copy_ eager", copy), ("copy_ graphed (memcpy node)", graphed(copy)),
                     ("SM copy kernel eager", kernel), ("SM copy kernel graphed", graphed(kernel))):
        us = median_us(fn)
        print(f"{name:30s} {us:8.1f} us {2 * N / us / 1e3:6.0f} GB/s (read + write)")


if __name__ == "__main__":
    main()
