"""Response bodies in OpenAI's schema: completions and chat completions, whole or as stream chunks, the model
list and the error body."""

from __future__ import annotations

import json
import time
import uuid

from .stream import GenerationResult

OWNER = "gdn"


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def finish_reason(result: GenerationResult) -> str:
    """"stop" for a stop token or string, "length" for max_tokens or a full context."""
    return "stop" if result.stop_reason in ("stop_token", "stop_string") else "length"


def usage(result: GenerationResult) -> dict:
    prompt, completion = len(result.prompt_ids), len(result.generated_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": result.reused_tokens}}


def model_list(name: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": OWNER}]}


def sse(data: dict | str) -> bytes:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


class Reply:
    """The bodies of one response: a chat completion or a text completion, whole or in chunks."""

    def __init__(self, chat: bool, model: str, include_usage: bool = False):
        self.chat, self.model, self.include_usage = chat, model, include_usage
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def whole(self, result: GenerationResult) -> dict:
        text = result.text or ""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                      "logprobs": None, "finish_reason": finish_reason(result)}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason(result)}
        return {**self._head(""), "choices": [choice], "usage": usage(result)}

    def first_chunk(self) -> dict | None:
        """A chat stream opens with the assistant's role; a text stream has no such chunk."""
        return self._chunk({"role": "assistant", "content": ""}, None) if self.chat else None

    def text_chunk(self, text: str) -> dict:
        return self._chunk({"content": text} if self.chat else text, None)

    def last_chunk(self, result: GenerationResult) -> dict:
        return self._chunk({} if self.chat else "", finish_reason(result))

    def usage_chunk(self, result: GenerationResult) -> dict:
        return {**self._head(".chunk"), "choices": [], "usage": usage(result)}

    def _head(self, suffix: str) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind + (suffix if self.chat else ""), "created": self.created,
                "model": self.model}

    def _chunk(self, content: dict | str, finish: str | None) -> dict:
        if self.chat:
            choice = {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish}
        body = {**self._head(".chunk"), "choices": [choice]}
        if self.include_usage:
            body["usage"] = None
        return body
