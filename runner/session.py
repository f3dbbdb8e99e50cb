"""A conversation on a Runner: its token ids (and chat messages, or text) kept between turns.

Each turn sends the whole sequence so far plus the new input; the runner prefills only the tokens its state
lacks when the state holds a prefix of that sequence (this session's previous turn, unless another sequence
ran meanwhile), else the whole sequence from position 0, which resets the state. `resume` takes a whole
conversation as a client resends it (an HTTP server's request) and continues the session when it extends it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from .errors import InputError
from .stream import GenerationResult, TextStream

if TYPE_CHECKING:
    from .api import Runner

Prompt = str | Sequence[int]


def user_message(prompt: Prompt) -> dict:
    if not isinstance(prompt, str):
        raise InputError("chat needs a text prompt, not token ids")
    if not prompt.strip():
        raise InputError("the prompt is empty")
    return {"role": "user", "content": prompt}


class Session:
    """Multi-turn generation on a runner; create it with `runner.session()`."""

    def __init__(self, runner: Runner):
        self._runner = runner
        self._ids: list[int] = []  # the sequence so far: prompts and replies, the last reply token included
        self.messages: list[dict] = []  # chat turns so far, while the sequence is a chat
        self._text: str | None = ""  # prompts and replies as text, while every turn was text (else None)

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    def reset(self) -> None:
        self._ids, self.messages, self._text = [], [], ""

    def stream(self, prompt: Prompt, *, chat: bool = False, **options) -> TextStream:
        """Continue the sequence with `prompt` (text or ids); with chat=True, add it as a user message rendered
        through the chat template (text only). Options as for `Runner.stream`."""
        if chat:
            return self.stream_chat([user_message(prompt)], **options)
        ids = self._ids + self._runner.encode(prompt, first=not self._ids)
        text = self._text + prompt if isinstance(prompt, str) and self._text is not None else None
        return self._turn(ids, None, text, options)

    def stream_chat(self, messages: Sequence[dict], **options) -> TextStream:
        """Continue the conversation with one or more messages ({"role", "content"} dicts of any role),
        rendered through the chat template, and generate the assistant's reply."""
        new = [dict(m) for m in messages]
        if not new:
            raise InputError("no messages to add")
        return self._turn(self._chat_ids(new), self.messages + new, None, options)

    def resume(self, history: str | Sequence[dict] | Sequence[int], **options) -> TextStream:
        """Generate after a whole conversation resent by a client: chat messages, text, or token ids.

        When `history` extends this session's conversation (its messages and replies, or its prompts and
        replies as text), only the new part joins the session's ids, which keep each reply's tokens as they
        were generated; otherwise the session starts again from `history`. Either way the runner prefills only
        what its state lacks."""
        if isinstance(history, str):
            known = self._text
            ended = bool(self._ids) and self._ids[-1] in self._runner.stop_ids  # the text does not show it
            if known and len(history) > len(known) and history.startswith(known) and not ended:
                return self.stream(history[len(known) :], **options)
            self.reset()
            return self.stream(history, **options)
        if history and all(isinstance(m, dict) for m in history):
            messages = [dict(m) for m in history]
            n = len(self.messages)
            if n and len(messages) > n and messages[:n] == self.messages:
                return self.stream_chat(messages[n:], **options)
            self.reset()
            return self.stream_chat(messages, **options)
        self.reset()
        return self.stream(history, **options)

    def generate(self, prompt: Prompt, **kwargs) -> GenerationResult:
        return self.stream(prompt, **kwargs).consume()

    def _turn(self, ids: list[int], messages: list[dict] | None, text: str | None, options: dict) -> TextStream:
        return self._runner._turn(ids, reuse=True, on_end=lambda result: self._record(result, messages, text),
                                  **options)

    def _chat_ids(self, new: list[dict]) -> list[int]:
        """The sequence for the next chat turn: the ids so far (as generated, not re-tokenized), the template's
        end of the last turn and the new messages. When the template renders earlier turns differently once a
        new one follows, the whole conversation is rendered again (and prefilled from position 0)."""
        r = self._runner
        if not self.messages:
            return r.encode_chat(new)
        before = r.render_chat(self.messages[:-1], add_generation_prompt=True)
        after = r.render_chat(self.messages, add_generation_prompt=False)
        nxt = r.render_chat(self.messages + new, add_generation_prompt=True)
        head = before + self.messages[-1]["content"]
        if not (after.startswith(head) and nxt.startswith(after)):
            return r.encode_chat(self.messages + new)
        bridge = after[len(head) :]  # e.g. "<|im_end|>\n"
        last = r.tokenizer.id_to_token(self._ids[-1]) if self._ids and self._ids[-1] in r.stop_ids else None
        if last and bridge.startswith(last):
            bridge = bridge[len(last) :]  # the stop token that ended the reply is already in the sequence
        return self._ids + r.tokenizer.encode(bridge + nxt[len(after) :])

    def _record(self, result: GenerationResult, messages: list[dict] | None, text: str | None) -> None:
        """Book a turn that produced tokens (also one closed early): the sequence, and the chat messages or the
        text. The reply is booked whole, also when a stop string cut the text the caller saw: the state holds
        all of it."""
        if not result.generated_ids:
            return
        self._ids = result.prompt_ids + result.generated_ids
        reply = self._runner.text(result.generated_ids) or ""
        if messages is not None:
            self.messages, self._text = messages + [{"role": "assistant", "content": reply}], None
        else:
            self.messages, self._text = [], (text + reply if text is not None else None)
