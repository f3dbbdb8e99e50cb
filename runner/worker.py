"""The server's model worker: one thread that loads the Runner, owns it (and on CUDA its context and graphs)
and runs queued requests one at a time, in arrival order.

The asyncio side only submits `Job`s and awaits their events; it never calls into the model. Each job's
events come back through the event loop's thread-safe call: "start" (the request was accepted: its prompt is
tokenized and fits), "text" pieces (streaming requests only), then "end" with the GenerationResult, or
"error" with the exception. A job cancelled by its client stops at its next token, or is skipped if still
queued.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from .errors import USER_ERRORS
from .openai_request import CompletionRequest
from .stream import GenerationResult, TextStream

log = logging.getLogger("gdn.serve")


class QueueFull(Exception):
    """The bounded queue holds its maximum of waiting requests."""


class ShuttingDown(Exception):
    """The worker stopped before it ran the request."""


@dataclass(frozen=True)
class Event:
    kind: str  # "start" | "text" | "end" | "error"
    value: Any = None


@dataclass(frozen=True)
class ModelInfo:
    """What the asyncio side may know about the model: plain values read once, in the worker thread."""

    max_seq_len: int
    vocab_size: int
    device: str
    has_tokenizer: bool
    has_chat_template: bool


class Job:
    """One request's work and its way back. Built on the event loop's thread; `emit` is called from the
    worker's."""

    def __init__(self, request: CompletionRequest, loop: asyncio.AbstractEventLoop):
        self.request = request
        self.cancelled = threading.Event()
        self._loop = loop
        self._events: deque[Event] = deque()
        self._ready = asyncio.Event()

    def emit(self, kind: str, value: Any = None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._push, Event(kind, value))
        except RuntimeError:  # the event loop is closed: nobody waits for this job any more
            self.cancelled.set()

    async def take(self) -> list[Event]:
        """Every event that arrived since the last call (at least one)."""
        await self._ready.wait()
        self._ready.clear()
        events = list(self._events)
        self._events.clear()
        return events

    def cancel(self) -> None:
        self.cancelled.set()

    def _push(self, event: Event) -> None:
        self._events.append(event)
        self._ready.set()


class Worker:
    """`start()` loads the model in the worker thread (and raises its load error); `submit(job)` queues a
    job or raises QueueFull; `stop()` answers the waiting jobs with ShuttingDown and ends the thread."""

    def __init__(self, load: Callable[[], Any], max_queue: int):
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.max_queue = max_queue
        self.info: ModelInfo | None = None
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "rejected": 0, "generated_tokens": 0}
        self.decode_path: str | None = None  # of the last completed request
        self._load = load
        self._queue: queue.Queue[Job | None] = queue.Queue(max_queue)
        self._thread = threading.Thread(target=self._main, name="gdn-worker", daemon=True)
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self._current: Job | None = None

    def start(self) -> ModelInfo:
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            raise self._load_error
        return self.info

    def submit(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.counts["rejected"] += 1
            raise QueueFull(f"the request queue is full ({self.max_queue} waiting); retry later") from None

    def status(self) -> dict:
        return {"queued": self._queue.qsize(), "running": int(self._current is not None), **self.counts,
                "decode_path": self.decode_path}

    def stop(self, timeout: float = 30.0) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.emit("error", ShuttingDown("the server is shutting down"))
        if self._current is not None:
            self._current.cancel()
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _main(self) -> None:
        try:
            runner = self._load()
            self.info = ModelInfo(runner.max_seq_len, runner.vocab_size, str(runner.device),
                                  runner.tokenizer is not None, runner.chat_template is not None)
        except BaseException as e:  # handed to start(), in the thread that called it
            self._load_error = e
            self._loaded.set()
            return
        self._loaded.set()
        session = runner.session()  # the last conversation, kept for prefix reuse
        try:
            while (job := self._queue.get()) is not None:
                self._current = job
                try:
                    self._serve(session, job)
                finally:
                    self._current = None
        finally:
            runner.close()

    def _serve(self, session: Any, job: Job) -> None:
        if job.cancelled.is_set():
            self.counts["cancelled"] += 1
            return
        r = job.request
        try:
            stream = session.resume(r.history, **r.runner_options())
            job.emit("start")
            result = self._generate(job, stream)
        except USER_ERRORS as e:  # raised before any work: a prompt that does not fit, a template that fails
            job.emit("error", e)
            return
        except Exception as e:  # never the worker's end: this request fails, the next one runs
            log.exception("request failed")
            self.counts["failed"] += 1
            job.emit("error", e)
            return
        if result is None:
            self.counts["cancelled"] += 1
        else:
            self.counts["completed"] += 1
            self.decode_path = result.decode_path
            job.emit("end", result)

    def _generate(self, job: Job, stream: TextStream) -> GenerationResult | None:
        """Run the turn, sending text pieces to a streaming client; None when the client went away."""
        send = job.request.stream
        for token, piece in stream.tokens():
            self.counts["generated_tokens"] += token >= 0
            if job.cancelled.is_set():
                stream.close()  # the state keeps what ran
                return None
            if piece and send:
                job.emit("text", piece)
        return stream.result
