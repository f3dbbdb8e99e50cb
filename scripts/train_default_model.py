"""Train the bundled default model: a tiny Qwen3.5-MoE (GDN and full-attention layers, routed experts with a
shared expert) on the prose of Rust's documentation, and write it in Hugging Face layout.

    python scripts/train_default_model.py [--out DIR] [--steps N] [--rust-docs HTML_DIR]

Seeded; CPU, two threads. Steps: corpus (scripts/rust_docs_corpus.py) -> byte-level BPE tokenizer trained
on the training split -> AdamW on random CONTEXT-token windows through `GDNForCausalLM`'s own modules
(scripts/lm_training.py) -> config.json, model.safetensors (bfloat16, per-expert keys as transformers'
save_pretrained writes them), tokenizer.json, tokenizer_config.json (ChatML template),
generation_config.json, training.json. The held-out loss is measured on the written checkpoint.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_training import initialise, save_weights, train_logits  # noqa: E402
from rust_docs_corpus import API, Section, docs_dir, docs_version, read_sections  # noqa: E402

from gdn.export.checkpoint import load_model  # noqa: E402
from gdn.export.config import parse_config  # noqa: E402
from gdn.export.model import GDNForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261122
THREADS = 2
VOCAB = 4096
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HELD_OUT = 0.02  # share of sections kept out of training (and out of the tokenizer)
CHAT_SHARE = 0.33  # share of training book sections also seen as a ChatML exchange
CONTEXT, BATCH, STEPS = 512, 8, 1700
LR, MIN_LR, WARMUP, WEIGHT_DECAY, CLIP, BALANCE = 2e-3, 2e-4, 100, 0.1, 1.0, 0.01
EVAL_EVERY = 250
ARCH = dict(
    hidden_size=192, num_hidden_layers=6, layer_types=["linear_attention", "linear_attention", "full_attention"] * 2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=48,
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=48, linear_value_head_dim=48,
    linear_conv_kernel_dim=4, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=192,
    shared_expert_intermediate_size=192, max_position_embeddings=2048, tie_word_embeddings=True,
)


def config(vocab_size: int, eos: list[int], arch: dict = ARCH) -> dict:
    return {
        "architectures": ["Qwen3_5MoeForCausalLM"],
        "model_type": "qwen3_5_moe_text",
        "vocab_size": vocab_size,
        **arch,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        "mamba_ssm_dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": eos,
        "dtype": "bfloat16",
    }


def split(sections: list[Section]) -> tuple[list[Section], list[Section]]:
    order = list(range(len(sections)))
    random.Random(SEED).shuffle(order)
    held = set(order[: max(1, int(HELD_OUT * len(sections)))])
    return [s for i, s in enumerate(sections) if i not in held], [s for i, s in enumerate(sections) if i in held]


def plain(section: Section) -> str:
    return "\n".join([section.heading, *section.paragraphs])


def chat(section: Section) -> str:
    """The section as one ChatML exchange: its heading asked, its first paragraph answered."""
    return (f"<|im_start|>user\n{section.heading}<|im_end|>\n"
            f"<|im_start|>assistant\n{section.paragraphs[0]}<|im_end|>\n")


def train_tokenizer(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def stream(tok: Tokenizer, docs: list[str]) -> torch.Tensor:
    """Documents joined by <|endoftext|>, one int64 token stream."""
    eot = tok.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids += enc.ids + [eot]
    return torch.tensor(ids)


def lr_at(step: int, steps: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    t = (step - WARMUP) / max(1, steps - WARMUP)
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * t))


@torch.no_grad()
def held_out_loss(model: GDNForCausalLM, tokens: torch.Tensor, context: int = CONTEXT) -> float:
    """Mean next-token loss over consecutive non-overlapping windows of `context` tokens."""
    n = (tokens.numel() - 1) // context
    x = tokens[: n * context].view(n, context)
    y = tokens[1 : n * context + 1].view(n, context)
    total = 0.0
    for i in range(0, n, BATCH):
        logits, _ = train_logits(model, x[i : i + BATCH])
        total += F.cross_entropy(logits.flatten(0, 1).float(), y[i : i + BATCH].flatten(), reduction="sum").item()
    return total / (n * context)


def train(model: GDNForCausalLM, data: torch.Tensor, held: torch.Tensor, steps: int, log: list) -> None:
    gen = torch.Generator().manual_seed(SEED)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.95), eps=1e-8)
    start = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps)
        at = torch.randint(0, data.numel() - CONTEXT - 1, (BATCH,), generator=gen)
        window = torch.stack([data[i : i + CONTEXT + 1] for i in at.tolist()])  # [B, CONTEXT + 1]
        logits, balance = train_logits(model, window[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        (loss + BALANCE * balance).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        if (step + 1) % EVAL_EVERY == 0 or step + 1 == steps:
            model.eval()
            held_loss = held_out_loss(model, held)
            model.train()
            log.append({"step": step + 1, "seconds": round(time.time() - start, 1), "train_loss": round(loss.item(), 4),
                        "held_out_loss": round(held_loss, 4), "balance": round(balance.item(), 4)})
            print(json.dumps(log[-1]), flush=True)


@torch.no_grad()
def generate(model: GDNForCausalLM, tok: Tokenizer, prompt: str, n: int, temperature: float, seed: int) -> str:
    """The inference forward (prefill, then one token per call), greedy at temperature 0, else top-k 40."""
    gen = torch.Generator().manual_seed(seed)
    ids = tok.encode(prompt).ids
    logits = model.prefill(torch.tensor([ids]), torch.arange(len(ids)))
    out = []
    for i in range(n):
        if temperature == 0:
            nxt = int(logits.argmax(-1))
        else:
            top = torch.topk(logits[0].float() / temperature, 40)
            nxt = int(top.indices[torch.multinomial(top.values.softmax(-1), 1, generator=gen)])
        if nxt in (0, 2):
            break
        out.append(nxt)
        logits = model(torch.tensor([[nxt]]), torch.tensor([len(ids) + i]))
    return tok.decode(out)


def write_files(out: Path, tok: Tokenizer, cfg: dict, model: GDNForCausalLM) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    eos = cfg["eos_token_id"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "bos_token": None, "chat_template": CHAT_TEMPLATE}, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({
        "do_sample": True, "temperature": 0.7, "top_k": 40, "top_p": 0.95, "eos_token_id": eos}, indent=2) + "\n")
    save_weights(model, out / "model.safetensors", torch.bfloat16)


def keep_freed_memory() -> None:
    """glibc: serve big blocks from the heap and never trim it; otherwise every step's large temporaries
    are fresh mmaps and page faults cost ~12% of a step on two cores."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-4, 0)  # M_MMAP_MAX
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "export" / "default_model")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--rust-docs", type=Path, default=None, help="share/doc/rust/html (default: rustc's sysroot)")
    args = ap.parse_args(argv)
    t0 = time.time()
    keep_freed_memory()
    torch.manual_seed(SEED)
    torch.set_num_threads(THREADS)
    html = docs_dir(args.rust_docs)
    sections = read_sections(html)
    train_sections, held_sections = split(sections)
    corpus_sha = hashlib.sha256("\n\n".join(plain(s) for s in sections).encode()).hexdigest()
    tok = train_tokenizer([plain(s) for s in train_sections])
    rng = random.Random(SEED)
    docs = [plain(s) for s in train_sections]
    docs += [chat(s) for s in train_sections if s.book != API and rng.random() < CHAT_SHARE]
    rng.shuffle(docs)
    data, held = stream(tok, docs), stream(tok, [plain(s) for s in held_sections])
    held_bytes = sum(len(plain(s).encode()) + 1 for s in held_sections)
    print(f"corpus {html}: {len(sections)} sections, sha256 {corpus_sha[:16]}; train {data.numel()} tokens, "
          f"held out {held.numel()} tokens ({time.time() - t0:.0f} s)", flush=True)

    eos = [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
    cfg = config(tok.get_vocab_size(), eos)
    model = GDNForCausalLM(parse_config(cfg), max_seq_len=8)
    initialise(model, torch.Generator().manual_seed(SEED))
    log: list[dict] = []
    t_train = time.time()
    train(model, data, held, args.steps, log)
    train_seconds = time.time() - t_train

    write_files(args.out, tok, cfg, model)
    shipped = load_model(args.out, max_seq_len=64)
    loss = held_out_loss(shipped, held)
    samples = {p: {"greedy": generate(shipped, tok, p, 48, 0.0, SEED),
                   "sampled": generate(shipped, tok, p, 48, 0.7, SEED)} for p in ("The compiler", "A trait is")}
    report = {
        "corpus": {"source": "Rust documentation (rust-docs component): the books' print.html and std's API pages",
                   "version": docs_version(html), "sections": len(sections),
                   "sha256": corpus_sha, "train_tokens": data.numel(), "held_out_tokens": held.numel()},
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": args.steps, "batch": BATCH, "context": CONTEXT, "threads": THREADS,
        "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - t0, 1),
        "held_out_loss": round(loss, 4), "held_out_perplexity": round(math.exp(loss), 2),
        "held_out_loss_context_2048": round(held_out_loss(shipped, held, 2048), 4),
        "held_out_bits_per_byte": round(loss * held.numel() / held_bytes / math.log(2), 4),
        "log": log, "samples": samples,
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "log"}, indent=2))


if __name__ == "__main__":
    main()
