"""The body of an OpenAI-style completion request, checked field by field into a `CompletionRequest`.

Every problem is a `RequestError` whose message names the field (and `param` is that field), which the
server answers with a 400 in OpenAI's error schema. Nothing here touches the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .stops import MAX_STOP_STRINGS

ROLES = ("system", "developer", "user", "assistant")
# fields a client may send that this server does not implement: each is accepted only at its neutral value
NEUTRAL = {"best_of": (None, 1), "echo": (None, False), "suffix": (None, ""), "logprobs": (None, False),
           "top_logprobs": (None, 0), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
           "logit_bias": (None, {}), "tools": (None, []), "functions": (None, []), "tool_choice": (None, "none")}


class RequestError(ValueError):
    """A bad request: `param` names the field (None for the body as a whole)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class CompletionRequest:
    chat: bool  # /v1/chat/completions (messages) or /v1/completions (prompt)
    messages: list[dict] | None = None  # [{"role", "content": str}]
    prompt: str | list[int] | None = None  # text or token ids
    max_tokens: int | None = None  # None: the artifact's default, bounded by the context
    temperature: float | None = None  # None: the artifact's generation default
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    user: str | None = None

    @property
    def history_field(self) -> str:
        return "messages" if self.chat else "prompt"

    @property
    def history(self) -> list[dict] | str | list[int]:
        return self.messages if self.chat else self.prompt

    def runner_options(self) -> dict:
        """Keyword options for `Session.resume` / `Runner.stream`."""
        return dict(max_new_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                    top_k=self.top_k, seed=self.seed, stop=self.stop)


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {_kind(body)}")
    return body


def parse_request(body: dict, chat: bool) -> CompletionRequest:
    """A checked request from a decoded JSON body, for /v1/chat/completions (chat) or /v1/completions."""
    _optional(body, "model", str)
    _check_neutral(body)
    n = _integer(body, "n", 1)
    if n not in (None, 1):
        raise RequestError(f"n must be 1 (this server generates one choice per request), got {n}", "n")
    stream = bool(_optional(body, "stream", bool))
    return CompletionRequest(
        chat=chat,
        messages=_messages(body) if chat else None,
        prompt=None if chat else _prompt(body),
        max_tokens=_max_tokens(body, chat),
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0, low_open=True),
        top_k=_integer(body, "top_k", 0),
        seed=_integer(body, "seed", None),
        stop=_stop(body),
        stream=stream,
        include_usage=_include_usage(body, stream),
        user=_optional(body, "user", str),
    )


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _optional(body: dict, name: str, kind: type, where: str = "") -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise RequestError(f"{where}{name} must be {_kind(kind())}, got {_kind(value)}", where + name)
    return value


def _integer(body: dict, name: str, low: int | None) -> int | None:
    value = body.get(name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON writers that print 16 as 16.0
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise RequestError(f"{name} must be an integer, got {_kind(value)}", name)
    if value is not None and low is not None and value < low:
        raise RequestError(f"{name} must be >= {low}, got {value}", name)
    return value


def _number(body: dict, name: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise RequestError(f"{name} must be a number, got {_kind(value)}", name)
    if not (math.isfinite(value) and (low < value if low_open else low <= value) and value <= high):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise RequestError(f"{name} must be in {interval}, got {value}", name)
    return float(value)


def _max_tokens(body: dict, chat: bool) -> int | None:
    name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    return _integer(body, name, 1)


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise RequestError(f"messages must be an array of messages, got {_kind(messages)}", "messages")
    if not messages:
        raise RequestError("messages must not be empty", "messages")
    return [_message(m, f"messages[{i}]") for i, m in enumerate(messages)]


def _message(message: Any, where: str) -> dict:
    if not isinstance(message, dict):
        raise RequestError(f"{where} must be an object, got {_kind(message)}", where)
    role = message.get("role")
    if role not in ROLES:
        raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
    for name in ("tool_calls", "function_call"):
        if message.get(name):
            raise RequestError(f"{where}.{name}: tool calls are not supported", f"{where}.{name}")
    return {"role": role, "content": _content(message.get("content"), f"{where}.content")}


def _content(content: Any, where: str) -> str:
    """A string, or an array of text parts (joined)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(f"{where} must be a string or an array of text parts, got {_kind(content)}", where)
    texts = []
    for i, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            kind = part.get("type") if isinstance(part, dict) else _kind(part)
            raise RequestError(f"{where}[{i}] must be a text part ({{'type': 'text', 'text': ...}}), got {kind!r}",
                               f"{where}[{i}]")
        texts.append(part["text"])
    return "".join(texts)


def _prompt(body: dict) -> str | list[int]:
    """A string or token ids; a batch of one prompt is unwrapped, larger batches are refused."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise RequestError("prompt must not be empty", "prompt")
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        raise RequestError(f"prompt: one prompt per request, got a batch of {len(prompt)}", "prompt")
    if isinstance(prompt, list) and not prompt:
        raise RequestError("prompt must not be empty", "prompt")
    raise RequestError(f"prompt must be a string or an array of token ids, got {_kind(prompt)}", "prompt")


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise RequestError(f"stop must be a string or an array of strings, got {_kind(stop)}", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise RequestError(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", "stop")
    if not all(stops):
        raise RequestError("stop strings must not be empty", "stop")
    return tuple(stops)


def _include_usage(body: dict, stream: bool) -> bool:
    options = _optional(body, "stream_options", dict)
    if options is None:
        return False
    if not stream:
        raise RequestError("stream_options is only allowed when stream is true", "stream_options")
    return bool(_optional(options, "include_usage", bool, "stream_options."))


def _check_neutral(body: dict) -> None:
    for name, neutral in NEUTRAL.items():
        if name in body and body[name] not in neutral:
            raise RequestError(f"{name} is not supported by this server (got {body[name]!r})", name)
