"""Stage display for the exporter: one line per stage with the elapsed time, on stderr."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator, TextIO


class Progress:
    def __init__(self, quiet: bool = False, verbose: bool = False, stream: TextIO | None = None):
        self.quiet, self.verbose = quiet, verbose
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(f"[{self.elapsed():7.1f}s] {text}", file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._say(f"{name} ...")
        t0 = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t0
        self._say(f"{name} done in {self.timings[name]:.1f}s")

    def info(self, text: str) -> None:
        self._say(text)

    def detail(self, text: str) -> None:
        if self.verbose:
            self._say(text)
