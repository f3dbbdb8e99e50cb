"""Tokenizer wrapper, UTF-8-safe streaming detokenizer and chat template rendering."""

import random

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from gdn.runner.tokenizer import REPLACEMENT, ChatTemplate, StreamDecoder, TemplateError, Tokenizer

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "café crème brûlée naïve façade",
    "日本語のテキストと中文文本",
    "emoji 🙂🚀 and more 🙂 text",
    "Ελληνικά και русский текст",
]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]


@pytest.fixture(scope="module")
def byte_bpe() -> Tokenizer:
    """A real byte-level BPE with a vocabulary so small that most non-ASCII characters span tokens."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    return Tokenizer(tok.to_str())


def stream(tok: Tokenizer, ids: list[int]) -> tuple[list[str], str]:
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    return pieces, dec.flush()


def test_multibyte_characters_split_across_tokens_stream_whole(byte_bpe):
    text = "naïve 日本語 🙂🚀 русский café 中文"
    ids = byte_bpe.encode(text)
    assert byte_bpe.decode(ids) == text
    split = [i for i in ids if REPLACEMENT in byte_bpe.decode([i])]
    assert split, "the test needs tokens that hold part of a character"
    pieces, tail = stream(byte_bpe, ids)
    assert "".join(pieces) + tail == text and tail == ""
    assert all(REPLACEMENT not in p for p in pieces)
    assert "" in pieces  # some tokens had to wait for the rest of their character


def test_random_texts_stream_to_the_full_decode(byte_bpe):
    alphabet = "ab é日🙂ж "
    for _ in range(20):
        text = "".join(random.choice(alphabet) for _ in range(random.randint(1, 40)))
        ids = byte_bpe.encode(text)
        pieces, tail = stream(byte_bpe, ids)
        assert "".join(pieces) + tail == byte_bpe.decode(ids) == text


def test_incomplete_character_at_the_end_comes_out_on_flush(byte_bpe):
    ids = byte_bpe.encode("ok 🚀")
    cut = next(n for n in range(len(ids), 0, -1) if byte_bpe.decode(ids[:n]).endswith(REPLACEMENT))
    pieces, tail = stream(byte_bpe, ids[:cut])
    assert "".join(pieces) + tail == byte_bpe.decode(ids[:cut])
    assert "".join(pieces).startswith("ok") and REPLACEMENT not in "".join(pieces) and tail.endswith(REPLACEMENT)


def test_special_tokens_in_text_are_single_ids_and_skipped_on_decode(byte_bpe):
    ids = byte_bpe.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == byte_bpe.token_to_id("<|im_start|>") and ids[-1] == byte_bpe.token_to_id("<|im_end|>")
    assert byte_bpe.decode(ids) == "user\nhi"
    assert byte_bpe.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>"


CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chatml_template_renders_like_hugging_face():
    t = ChatTemplate(CHATML, eos_token="<|im_end|>")
    msgs = [{"role": "user", "content": "Héllo 🙂"}, {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": "Again"}]
    want = ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHéllo 🙂<|im_end|>\n"
            "<|im_start|>assistant\nHi<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n")
    assert t.render(msgs) == want
    assert t.render(msgs, add_generation_prompt=False) == want[: -len("<|im_start|>assistant\n")]


def test_template_helpers_tojson_namespace_loopcontrols_and_raise():
    src = (
        "{%- set ns = namespace(n=0) -%}{%- for m in messages -%}{%- if m.role == 'tool' %}{% break %}{% endif -%}"
        "{%- set ns.n = ns.n + 1 -%}{{ m | tojson }}{%- endfor -%}|{{ ns.n }}|{{ bos_token }}"
        "{%- if messages | length > 3 %}{{ raise_exception('too many: ' ~ messages | length) }}{% endif %}"
    )
    t = ChatTemplate(src, bos_token="<s>")
    out = t.render([{"role": "user", "content": "é<b>"}, {"role": "tool", "content": "x"}])
    assert out == '{"role": "user", "content": "é<b>"}|1|<s>'
    with pytest.raises(TemplateError, match="too many: 4"):
        t.render([{"role": "user", "content": "a"}] * 4)


def test_broken_template_is_a_template_error():
    with pytest.raises(TemplateError, match="does not parse"):
        ChatTemplate("{% for m in messages %}")
