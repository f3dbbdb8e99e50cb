"""The OpenAI-compatible HTTP API over one artifact (Starlette): `create_app(worker, model_name, api_key)`.

    POST /v1/chat/completions, POST /v1/completions   streaming (server-sent events) or not
    GET  /v1/models, GET /health

Handlers parse and check the request, queue a `Job` on the `Worker` (503 when its queue is full) and relay
its events; they never call into the model. A client that goes away, while its request waits or streams,
cancels the job, which stops at its next token. Every error is OpenAI's error body.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import AsyncIterator, Awaitable

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .errors import USER_ERRORS
from .openai_request import CompletionRequest, RequestError, parse_body, parse_request
from .openai_response import Reply, error_body, model_list, sse
from .stream import GenerationResult
from .worker import Event, Job, QueueFull, ShuttingDown, Worker

log = logging.getLogger("gdn.serve")


class ApiError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, kind, param, code)


class ClientGone(Exception):
    """The client disconnected before its response was ready."""


def create_app(worker: Worker, model_name: str, api_key: str | None = None) -> Starlette:
    """The ASGI app over a started worker."""
    api = Api(worker, model_name, api_key)
    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
    ]
    handlers = {ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error}
    return Starlette(routes=routes, exception_handlers=handlers)


class Api:
    def __init__(self, worker: Worker, model_name: str, api_key: str | None):
        self.worker, self.model_name, self.api_key = worker, model_name, api_key or None
        self.created = int(time.time())

    async def health(self, request: Request) -> Response:
        info = self.worker.info
        return JSONResponse({"status": "ok", "model": self.model_name, "max_seq_len": info.max_seq_len,
                             "device": info.device, **self.worker.status()})

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse(model_list(self.model_name, self.created))

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, chat: bool) -> Response:
        self._authorize(request)
        try:
            raw = await request.body()
        except ClientDisconnect:
            return Response(status_code=499)  # gone while sending the body
        req = self._parse(raw, chat)
        job = Job(req, asyncio.get_running_loop())
        try:
            self.worker.submit(job)
        except QueueFull as e:
            raise ApiError(503, str(e), "server_error", code="queue_full") from None
        watch = asyncio.ensure_future(_disconnected(request))
        streaming = False
        try:
            events = await _until(job.take(), watch)
            if events[0].kind == "error":
                raise _job_error(events[0].value, req)
            reply = Reply(chat, self.model_name, req.include_usage)
            if not req.stream:
                return JSONResponse(reply.whole(await _collect(job, req, watch, events[1:])))
            watch.cancel()  # the streaming response listens for the disconnect itself, and cancels on it
            streaming = True
            return StreamingResponse(_sse(job, reply, events[1:]), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"}, background=BackgroundTask(job.cancel))
        except ClientGone:
            return Response(status_code=499)  # nobody reads it
        finally:
            watch.cancel()
            if not streaming:
                job.cancel()  # no-op once it ended

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "no API key given: send it as the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")
        if not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "incorrect API key", code="invalid_api_key")

    def _parse(self, raw: bytes, chat: bool) -> CompletionRequest:
        try:
            req = parse_request(parse_body(raw), chat)
        except RequestError as e:
            raise ApiError(400, str(e), param=e.param) from None
        info = self.worker.info
        if req.stop and not info.has_tokenizer:
            raise ApiError(400, "stop strings need the artifact's tokenizer, and this artifact has none",
                           param="stop")
        if chat and not info.has_chat_template:
            raise ApiError(400, "this artifact has no chat template: use /v1/completions", param="messages")
        return req


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body was read before)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _until(events: Awaitable[list[Event]], watch: asyncio.Future) -> list[Event]:
    """The job's next events, or ClientGone when the client disconnects first."""
    task = asyncio.ensure_future(events)
    done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return task.result()
    task.cancel()
    raise ClientGone()


async def _collect(job: Job, req: CompletionRequest, watch: asyncio.Future, events: list[Event]) -> GenerationResult:
    while True:
        for event in events:
            if event.kind == "end":
                return event.value
            if event.kind == "error":
                raise _job_error(event.value, req)
        events = await _until(job.take(), watch)


async def _sse(job: Job, reply: Reply, events: list[Event]) -> AsyncIterator[bytes]:
    """The event stream: the opening chunk, text chunks (pieces that arrived together go as one), the closing
    chunk with finish_reason, the usage chunk when asked for, then [DONE]. Leaving early cancels the job."""
    try:
        first = reply.first_chunk()
        if first is not None:
            yield sse(first)
        while True:
            text = "".join(e.value for e in events if e.kind == "text")
            if text:
                yield sse(reply.text_chunk(text))
            last = next((e for e in events if e.kind != "text"), None)
            if last is not None and last.kind == "end":
                yield sse(reply.last_chunk(last.value))
                if reply.include_usage:
                    yield sse(reply.usage_chunk(last.value))
                yield sse("[DONE]")
                return
            if last is not None:
                yield sse(_job_error(last.value, job.request).body)
                return
            events = await job.take()
    finally:
        job.cancel()  # no-op once it ended


def _job_error(error: BaseException, req: CompletionRequest) -> ApiError:
    if isinstance(error, USER_ERRORS):
        return ApiError(400, str(error), param=req.history_field)
    if isinstance(error, ShuttingDown):
        return ApiError(503, str(error), "server_error", code="shutting_down")
    return ApiError(500, f"internal error: {type(error).__name__}: {error}", "server_error")


async def _api_error(request: Request, exc: ApiError) -> Response:
    return JSONResponse(exc.body, status_code=exc.status)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(error_body(message, kind), status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)
