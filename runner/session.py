"""A conversation on a Runner: its token ids (and chat messages) kept between turns.

Each turn sends the whole sequence so far plus the new input; the runner prefills only the tokens its state
lacks when the state holds a prefix of that sequence (this session's previous turn, unless another sequence
ran meanwhile), else the whole sequence from position 0, which resets the state.
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
        self.messages: list[dict] = []  # chat turns so far

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    def reset(self) -> None:
        self._ids, self.messages = [], []

    def stream(self, prompt: Prompt, *, chat: bool = False, **options) -> TextStream:
        """Continue the sequence with `prompt` (text or ids); with chat=True, add it as a user message rendered
        through the chat template (text only). Options as for `Runner.stream`."""
        if chat:
            message = user_message(prompt)
            ids = self._chat_ids(message)
        else:
            message = None
            ids = self._ids + self._runner.encode(prompt, first=not self._ids)
        return self._runner._turn(ids, reuse=True, on_end=lambda result: self._record(result, message), **options)

    def generate(self, prompt: Prompt, **kwargs) -> GenerationResult:
        return self.stream(prompt, **kwargs).consume()

    def _chat_ids(self, message: dict) -> list[int]:
        """The sequence for the next chat turn: the ids so far (as generated, not re-tokenized), the template's
        end of the last turn and the new message. When the template renders earlier turns differently once a
        new one follows, the whole conversation is rendered again (and prefilled from position 0)."""
        r = self._runner
        if not self.messages:
            return r.encode_chat([message])
        before = r.render_chat(self.messages[:-1], add_generation_prompt=True)
        after = r.render_chat(self.messages, add_generation_prompt=False)
        nxt = r.render_chat(self.messages + [message], add_generation_prompt=True)
        head = before + self.messages[-1]["content"]
        if not (after.startswith(head) and nxt.startswith(after)):
            return r.encode_chat(self.messages + [message])
        bridge = after[len(head) :]  # e.g. "<|im_end|>\n"
        last = r.tokenizer.id_to_token(self._ids[-1]) if self._ids and self._ids[-1] in r.stop_ids else None
        if last and bridge.startswith(last):
            bridge = bridge[len(last) :]  # the stop token that ended the reply is already in the sequence
        return self._ids + r.tokenizer.encode(bridge + nxt[len(after) :])

    def _record(self, result: GenerationResult, message: dict | None) -> None:
        """Book a turn that produced tokens (also one closed early): the sequence and the chat messages."""
        if not result.generated_ids:
            return
        self._ids = result.prompt_ids + result.generated_ids
        if message is not None:
            reply = self._runner.text(result.generated_ids) or ""
            self.messages += [message, {"role": "assistant", "content": reply}]
