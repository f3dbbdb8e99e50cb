"""Timing for every benchmark here: CUDA events and medians, graph replay, an L2 flush, per-kernel profiler
medians, and the two ceilings that "% of limit" divides by.

- Copy bandwidth: bytes read + written per second by an SM copy kernel (`torch.mul(src, 1.0, out=dst)`) replayed
  from a CUDA graph. Not `copy_`: inside a graph it becomes a memcpy node, which moves less than an SM kernel.
- Matmul rate: bf16 8192 x 8192 x 8192 `torch.mm` (cuBLAS), FLOP per second.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

L2_FLUSH_BYTES = 256 << 20  # larger than the L2 of any current NVIDIA GPU (H100: 50 MiB)
_flush_buffer: torch.Tensor | None = None


def flush_l2() -> None:
    """Evict L2 by reading a large buffer, which leaves clean lines, as a model's earlier weight reads do."""
    global _flush_buffer
    if _flush_buffer is None:
        _flush_buffer = torch.ones(L2_FLUSH_BYTES // 4, device="cuda")
    _flush_buffer.sum()


def median_us(fn: Callable[[], object], iters: int = 50, inner: int = 1, flush: bool = False, warmup: int = 3,
              setup: Callable[[], object] | None = None) -> float:
    """Median over `iters` samples of the mean device time of `inner` back-to-back calls, in microseconds,
    after `warmup` untimed calls. Before each sample, outside the timed region: setup(), then with `flush` an
    L2 flush."""
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        if setup is not None:
            setup()
        if flush:
            flush_l2()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / inner)
    return statistics.median(samples)


def wall_ms(fn: Callable[[], object], iters: int = 1) -> float:
    """Median host wall time in ms (for work that ends in a host read, or without a GPU)."""
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def graphed(fn: Callable[[int], object], calls: int = 1) -> Callable[[], None]:
    """Capture fn(0), ..., fn(calls - 1) into one CUDA graph (after one eager pass on a side stream, so lazy
    initialisation stays out of the capture); returns its replay. Capture also proves fn is capture-safe."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(calls):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    return graph.replay


@dataclass
class Timing:
    eager_us: float | None
    graph_us: float | None


def timed(fn: Callable[[], object], iters: int = 50, flush: bool = False, graph: bool = True,
          eager: bool = True) -> Timing:
    """Median us of fn eagerly and replayed from a CUDA graph."""
    eager_us = median_us(fn, iters, flush=flush) if eager else None
    graph_us = median_us(graphed(lambda _: fn()), iters, flush=flush) if graph else None
    return Timing(eager_us, graph_us)


def kernel_medians(fn: Callable[[], object], keep: Callable[[str], bool] = lambda name: True, calls: int = 20,
                   flush: bool = True) -> dict[str, float]:
    """Median device us per kernel name (torch profiler) over `calls` eager calls of fn; the flush's own
    reduction (a torch sum, "reduce_kernel") is left out, and so are kernels whose name `keep` refuses."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            if flush:
                flush_l2()
            fn()
            torch.cuda.synchronize()
    times: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and keep(e.name) and "reduce_kernel" not in e.name:
            times.setdefault(e.name, []).append(e.device_time)
    return {k: statistics.median(v) for k, v in times.items()}


def copy_bandwidth(nbytes: int = 1 << 30, rotate: int = 1) -> float:
    """Bytes read + written per second by the SM copy kernel, copies of `nbytes` rotating over `rotate`
    buffer pairs inside one graph (rotate past L2 to time small copies from memory)."""
    src = [torch.randn(nbytes // 4, device="cuda") for _ in range(rotate)]
    dst = [torch.empty(nbytes // 4, device="cuda") for _ in range(rotate)]
    replay = graphed(lambda i: torch.mul(src[i], 1.0, out=dst[i]), rotate)
    us = median_us(replay, iters=20, inner=5) / rotate
    return 2 * nbytes / (us * 1e-6)


def matmul_rate(n: int = 8192, dtype: torch.dtype = torch.bfloat16) -> float:
    """FLOP per second of an n x n x n `torch.mm` (cuBLAS), random operands."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    return 2 * n**3 / (median_us(lambda: torch.mm(a, b), iters=20) * 1e-6)


class Table:
    """Benchmark rows printed as they are measured (a cut-off run still reports what it had), and the numbers
    for a JSON file."""

    def __init__(self, width: int = 46) -> None:
        self.width = width
        self.results: dict[str, object] = {}

    def row(self, what: str, value: str, detail: str = "") -> None:
        print(f"{what:<{self.width}}  {value:>14}  {detail}", flush=True)

    def put(self, key: str, value: object) -> None:
        self.results[key] = value
