"""`gdn-run`: generate from an artifact written by `gdn-export`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .errors import USER_ERRORS, InputError


def _seconds_since_process_start() -> float | None:
    """From the kernel's record of this process's start (Linux); None elsewhere."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise InputError(f"--prompt-ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise InputError("--prompt-ids is empty")
    return ids


def _read_prompt(prompt: str | None, prompt_file: Path | None, prompt_ids: str | None, chat: bool):
    given = [name for name, v in (("--prompt", prompt), ("--prompt-file", prompt_file), ("--prompt-ids", prompt_ids))
             if v is not None]
    if len(given) != 1:
        raise InputError("give exactly one of --prompt, --prompt-file, --prompt-ids" +
                         (f" (got {', '.join(given)})" if given else ""))
    if prompt_ids is not None:
        if chat:
            raise InputError("--chat needs a text prompt (--prompt or --prompt-file), not --prompt-ids")
        return _parse_ids(prompt_ids)
    if prompt_file is not None:
        try:
            prompt = prompt_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read --prompt-file {str(prompt_file)!r}: {e}") from None
    if not prompt.strip():
        raise InputError("the prompt is empty")
    return prompt


def _stats_line(result, runner, ready_s: float | None) -> str:
    t = result.timings
    ready = f", process start to ready {ready_s:.2f} s" if ready_s is not None else ""
    g, p = result.graph, result.prefill_graph
    return (
        f"load {runner.load_s:.2f} s{ready} | prefill {t.prompt_tokens} tokens, {t.prefill_tokens_per_s:.1f} tok/s"
        f" | time to first token {t.prefill_s * 1e3:.1f} ms | decode {t.generated_tokens} tokens,"
        f" {t.decode_tokens_per_s:.1f} tok/s | decode path {result.decode_path} (eager calls"
        f" {g.get('eager_calls', 0)}, captures {g.get('captures', 0)}, replays {g.get('replays', 0)})"
        f" | prefill path {result.prefill_path} (eager calls {p.get('eager_calls', 0)}, captures"
        f" {p.get('captures', 0)}, replays {p.get('replays', 0)}) | weights {runner.meta.weights_label()}"
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model", type=click.Path(path_type=Path), default=Path("model.pte"), show_default=True,
              help="The .pte artifact written by gdn-export (its .ptd beside it).")
@click.option("--prompt", help="Prompt text.")
@click.option("--prompt-file", type=click.Path(path_type=Path, dir_okay=False), help="Read the prompt from a UTF-8 file.")
@click.option("--prompt-ids", help="Prompt as comma-separated token ids, e.g. 1,2,3 (prints ids without a tokenizer).")
@click.option("--max-new-tokens", type=int, default=None,
              help="Most tokens to generate [default: the artifact's generation default, else 256].")
@click.option("--temperature", type=float, default=None,
              help="0 is greedy [default: the artifact's generation default, else 0].")
@click.option("--top-k", type=int, default=None, help="Keep the k most likely tokens; 0 is off [default: artifact's].")
@click.option("--top-p", type=float, default=None, help="Nucleus cut in (0, 1]; 1 is off [default: artifact's].")
@click.option("--seed", type=int, default=None, help="Seed for sampling [default: a random one, shown by --json].")
@click.option("--chat", is_flag=True, help="Render the prompt as a user message through the artifact's chat template.")
@click.option("--cuda-graph/--no-cuda-graph", "cuda_graph", default=None,
              help="Replay decode (blocks of steps) and prefill (per length bucket) through captured CUDA graphs "
                   "[default: on for CUDA artifacts]. "
                   "CPU artifacts always decode eagerly: there --cuda-graph is ignored with a notice on stderr.")
@click.option("--stats", is_flag=True, help="Print load time, prefill and decode tokens/s, time to first token (stderr).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (ids, text, timings) instead of streaming.")
@click.option("--verbose", is_flag=True, help="Let the native runtime's informational log lines through (stderr).")
def command(model, prompt, prompt_file, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, chat,
            cuda_graph, stats, as_json, verbose):
    """Generate text (or token ids) from a gdn-export artifact."""
    prompt = _read_prompt(prompt, prompt_file, prompt_ids, chat)
    if max_new_tokens is not None and max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    from .api import Runner  # torch is imported here, after the cheap checks
    from .methods import NATIVE_LOGS_ENV

    if verbose:
        os.environ[NATIVE_LOGS_ENV] = "1"
    runner = Runner.load(model, cuda_graph=cuda_graph)
    ready_s = _seconds_since_process_start()
    if cuda_graph and runner.device.type != "cuda":
        click.echo("gdn-run: notice: --cuda-graph ignored: this is a CPU artifact, decode runs eagerly", err=True)
    sampling = runner.sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    stream = runner.stream(prompt, max_new_tokens=max_new_tokens, sampling=sampling, chat=chat)
    if as_json:
        result = stream.consume()
    else:
        result = _print_stream(stream, with_text=runner.tokenizer is not None)
    if result.stop_reason == "context_full":
        click.echo(f"gdn-run: notice: stopped because the context is full (max_seq_len {runner.max_seq_len})",
                   err=True)
    if as_json:
        out = {"model": str(model), "load_s": runner.load_s, "ready_s": ready_s, "quant": runner.meta.quant,
               **result.as_dict()}
        click.echo(json.dumps(out))  # ASCII-safe on any terminal encoding
    if stats:
        click.echo(_stats_line(result, runner, ready_s), err=True)
    runner.close()


def _print_stream(stream, with_text: bool):
    out = sys.stdout
    if hasattr(out, "reconfigure"):
        out.reconfigure(errors="replace")  # a non-UTF-8 terminal gets '?' rather than an exception
    for token_id, piece in stream.tokens():
        if with_text:
            out.write(piece)
        elif token_id >= 0:
            out.write(f"{token_id} ")
        out.flush()
    out.write("\n")
    out.flush()
    return stream.result


def run_command(cmd: click.Command, prog: str, argv: list[str] | None) -> None:
    """Run a click command as a program: a user error is one line and exit 2, an interrupt exit 130."""
    try:
        code = cmd.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.Abort:
        code = 130
    except click.ClickException as e:
        click.echo(f"{prog}: error: {e.format_message()}", err=True)
        code = 2
    except USER_ERRORS as e:
        click.echo(f"{prog}: error: {e}", err=True)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code or 0)


def main(argv: list[str] | None = None) -> None:
    run_command(command, "gdn-run", argv)


if __name__ == "__main__":
    main()
