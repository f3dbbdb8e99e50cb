"""A conversation that keeps the model state between turns and prefills only the new tokens.

The runner holds one model state; a session owns it from its last turn until another session (or a
plain `Runner.generate`) runs. A turn whose tokens extend what the state holds prefills only the new
tokens; otherwise (another session ran meanwhile, or the chat template re-rendered an earlier turn
differently) the session prefills its whole history from position 0, which resets the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generator, Iterator, Sequence

from .generate import Generation, InputError, Timings, check_fits, generate_ids
from .sampling import SamplingParams
from .tokenizer import StreamDecoder

if TYPE_CHECKING:
    from .api import Runner

Prompt = str | Sequence[int]


@dataclass
class GenerationResult:
    prompt_ids: list[int]  # the ids of this turn's input (the whole rendered conversation for chat)
    generated_ids: list[int]  # the stop token, when one ended the turn, is the last id
    text: str | None  # decoded generated ids without the stop token; None without a tokenizer
    stop_reason: str
    sampling: SamplingParams
    prefilled_tokens: int  # tokens this turn ran through prefill
    reused_tokens: int  # tokens whose state was kept from the previous turn
    decode_path: str  # "cuda_graph" | "warmup" (not captured yet) | "eager"; `graph` has the counts
    graph: dict = field(default_factory=dict)  # counters of the decode step's state machine
    timings: Timings = field(default_factory=Timings)

    def as_dict(self) -> dict:
        s = self.sampling
        return {
            "prompt_ids": self.prompt_ids,
            "generated_ids": self.generated_ids,
            "text": self.text,
            "stop_reason": self.stop_reason,
            "sampling": {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "seed": s.seed},
            "prefilled_tokens": self.prefilled_tokens,
            "reused_tokens": self.reused_tokens,
            "decode_path": self.decode_path,
            "graph": self.graph,
            "timings": self.timings.as_dict(),
        }


class TextStream(Iterator[str]):
    """Text pieces as tokens arrive (never a split UTF-8 character); `.result` once exhausted.

    `tokens()` iterates (token id, text piece) pairs instead; a final piece of text left in the
    detokenizer comes as id -1. Closing it early ends the turn (the state keeps what ran)."""

    def __init__(self, pairs: Generator[tuple[int, str], None, GenerationResult]):
        self._pairs = pairs
        self.result: GenerationResult | None = None

    def tokens(self) -> Iterator[tuple[int, str]]:
        while True:
            try:
                yield next(self._pairs)
            except StopIteration as stop:
                self.result = stop.value
                return

    def __next__(self) -> str:
        try:
            return next(self._pairs)[1]
        except StopIteration as stop:
            self.result = stop.value
            raise

    def close(self) -> None:
        self._pairs.close()

    def consume(self) -> GenerationResult:
        for _ in self.tokens():
            pass
        return self.result


class Session:
    """Multi-turn generation on a runner; create it with `runner.session()`."""

    def __init__(self, runner: Runner):
        self._runner = runner
        self._ids: list[int] = []  # the sequence so far: what the state holds, then maybe one unfed token
        self._fed = 0  # how many of _ids the state holds
        self.messages: list[dict] = []  # chat turns so far

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    def reset(self) -> None:
        self._ids, self._fed, self.messages = [], 0, []

    def stream(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int | None = None,
        sampling: SamplingParams | None = None,
        chat: bool = False,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> TextStream:
        """Continue the sequence with `prompt` (text or ids); with chat=True, add it as a user message
        rendered through the chat template (text only). Sampling: `sampling`, else the given
        temperature / top_k / top_p / seed over the artifact's generation defaults."""
        r = self._runner
        if chat:
            if not isinstance(prompt, str):
                raise InputError("chat needs a text prompt, not token ids")
            if not prompt.strip():
                raise InputError("the prompt is empty")
            message = {"role": "user", "content": prompt}
            full = self._chat_ids(message)
        else:
            message = None
            new = r.encode(prompt, first=not self._ids)
            full = self._ids + new
        params = sampling or r.sampling(temperature, top_k, top_p, seed)
        steps = r.default_max_new_tokens() if max_new_tokens is None else max_new_tokens
        if steps < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {steps}")
        return TextStream(self._turn(full, steps, params, message))

    def generate(self, prompt: Prompt, **kwargs) -> GenerationResult:
        return self.stream(prompt, **kwargs).consume()

    def _chat_ids(self, message: dict) -> list[int]:
        """The sequence for the next chat turn: the ids so far (as generated, not re-tokenized), the
        template's end of the last turn and the new message. When the template renders earlier turns
        differently once a new one follows, the whole conversation is rendered and prefilled again."""
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

    def _record(self, prompt: list[int], generated: list[int], message: dict | None) -> str | None:
        """Book a turn: the sequence, what the state holds (all but the last generated id), the chat
        messages; -> the reply text (without stop tokens)."""
        r = self._runner
        text = r.tokenizer.decode([t for t in generated if t not in r.stop_ids]) if r.tokenizer else None
        if generated:
            self._ids, self._fed = prompt + generated, len(prompt) + len(generated) - 1
            r.owner = self
            if message is not None:
                self.messages += [message, {"role": "assistant", "content": text or ""}]
        return text

    def _turn(
        self, full: list[int], steps: int, params: SamplingParams, message: dict | None
    ) -> Generator[tuple[int, str], None, GenerationResult]:
        r = self._runner
        keep = r.owner is self and len(full) > self._fed and full[: len(self._ids)] == self._ids
        start = self._fed if keep else 0
        gen = Generation(prompt_ids=full[start:], start_pos=start)
        check_fits(len(gen.prompt_ids), start, r.max_seq_len)
        with r.acquire():
            loop = r.decode_loop(params, reset_counter=not keep)
            r.owner = None  # unknown state until the turn's bookkeeping is done
            decoder = StreamDecoder(r.tokenizer) if r.tokenizer else None
            stop_ids = r.stop_ids
            try:
                for tok in generate_ids(
                    loop, gen, max_new_tokens=steps, stop_ids=stop_ids,
                    max_seq_len=r.max_seq_len, prefill_chunk=r.prefill_chunk,
                ):
                    piece = decoder.push(tok) if decoder and tok not in stop_ids else ""
                    yield tok, piece
                if decoder:
                    tail = decoder.flush()
                    if tail:
                        yield -1, tail
            finally:  # also when the stream is closed early: the state holds what ran
                text = self._record(full[:start] + gen.prompt_ids, gen.generated_ids, message)
        return GenerationResult(
            prompt_ids=full, generated_ids=gen.generated_ids, text=text, stop_reason=gen.stop_reason,
            sampling=params, prefilled_tokens=len(gen.prompt_ids), reused_tokens=start,
            decode_path=loop.path, graph=vars(loop.graph.counters).copy(), timings=gen.timings,
        )
