"""`gdn-serve`: the OpenAI-compatible HTTP server over one artifact (needs the `serve` extra)."""

from __future__ import annotations

import importlib
import os
import socket
from pathlib import Path

import click

from .cli import run_command
from .errors import InputError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
BACKLOG = 2048  # uvicorn's default


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (port 0: a free one), made before the slow model load so that a bad
    address fails at once; connections wait in its backlog until the server accepts them."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def _uvicorn():
    """uvicorn, once it and Starlette are known to be installed."""
    try:
        importlib.import_module("starlette")
        return importlib.import_module("uvicorn")
    except ImportError as e:
        raise click.ClickException(f"gdn-serve needs the serve extra (pip install 'gdn[serve]'): {e}") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model", type=click.Path(path_type=Path), default=Path("model.pte"), show_default=True,
              help="The .pte artifact written by gdn-export (its .ptd beside it).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 serves every interface.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
@click.option("--api-key", envvar="GDN_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on /v1 requests [default: $GDN_API_KEY, else none].")
@click.option("--max-queue", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most requests waiting behind the running one; more are answered 503.")
@click.option("--cuda-graph/--no-cuda-graph", "cuda_graph", default=None,
              help="Replay each decode step through a captured CUDA graph [default: on for CUDA artifacts].")
@click.option("--model-name", default=None, help="The model id of responses and /v1/models [default: the file name "
                                                  "without .pte].")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
@click.option("--verbose", is_flag=True, help="Let the native runtime's informational log lines through (stderr).")
def command(model, host, port, api_key, max_queue, cuda_graph, model_name, log_level, verbose):
    """Serve a gdn-export artifact over an OpenAI-compatible HTTP API."""
    uvicorn = _uvicorn()
    sock = bind(host, port)
    from .api import Runner  # torch is imported here, after the cheap checks
    from .methods import NATIVE_LOGS_ENV
    from .server import create_app
    from .worker import Worker

    if verbose:
        os.environ[NATIVE_LOGS_ENV] = "1"

    worker = Worker(lambda: Runner.load(model, cuda_graph=cuda_graph), max_queue)
    try:
        info = worker.start()
    except BaseException:
        sock.close()
        raise
    if cuda_graph and info.device == "cpu":
        click.echo("gdn-serve: notice: --cuda-graph ignored: this is a CPU artifact, decode runs eagerly", err=True)
    name = model_name or model.stem
    app = create_app(worker, name, api_key)
    bound_host, bound_port = sock.getsockname()[:2]
    click.echo(f"gdn-serve: serving {name!r} ({info.device}, max_seq_len {info.max_seq_len}) on "
               f"http://{_url_host(bound_host)}:{bound_port}/v1" + (" with an API key" if api_key else ""), err=True)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5, backlog=BACKLOG)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        worker.stop()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def main(argv: list[str] | None = None) -> None:
    run_command(command, "gdn-serve", argv)


if __name__ == "__main__":
    main()
