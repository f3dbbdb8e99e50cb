"""Accuracy of `gdn-export --quant` on the bundled default model, eager on the CPU (no export):

    python scripts/quant_accuracy.py [--groups 32,64] [--steps 256] [--windows 4] [--rust-docs HTML_DIR]

For bf16 and for int8 / int4 at each group size: the held-out perplexity (the default model's held-out split of
the Rust documentation, measured as scripts/train_default_model.py measures it: 512-token windows, batched,
teacher-forced) and the top-1 agreement with bf16 over `--steps` teacher-forced decode steps (the model's own
one-token path: the quantized mat-vecs of the reference kernel set), over `--windows` held-out windows.

The perplexity runs the batched training forward on a bf16 model whose quantized weights are replaced by their
dequantisation (what the quantized model's prefill path multiplies with). Default groups: the powers of two
from 32 that divide every quantized weight's input dimension.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rust_docs_corpus import docs_dir, read_sections  # noqa: E402
from train_default_model import held_out_loss, plain, split, stream  # noqa: E402

from gdn.export.artifact import tensor_bytes  # noqa: E402
from gdn.export.checkpoint import load_model  # noqa: E402
from gdn.export.pipeline import DEFAULT_CHECKPOINT  # noqa: E402
from gdn.export.quant import QuantLinear, QuantScheme, quant_target  # noqa: E402

CONFIGS = (("int8", 8), ("int4", 4))


def held_out_tokens(rust_docs: Path | None) -> torch.Tensor:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(DEFAULT_CHECKPOINT / "tokenizer.json"))
    _, held = split(read_sections(docs_dir(rust_docs)))
    return stream(tok, [plain(s) for s in held])


def load(scheme: QuantScheme | None, max_seq_len: int):
    return load_model(DEFAULT_CHECKPOINT, max_seq_len, torch.bfloat16, torch.float32, "reference", quant=scheme)


@torch.no_grad()
def dequantized_copy(quantized, max_seq_len: int):
    """A bf16 model (plain modules) holding the quantized model's dequantized weights."""
    dense = load(None, max_seq_len)
    params = dict(dense.named_parameters())
    for name, p in params.items():
        target = quant_target(quantized, name)
        if target is not None:
            p.copy_(target.dequantize().view(p.shape))
    return dense


@torch.no_grad()
def decode_top1(model, windows: torch.Tensor) -> torch.Tensor:
    """windows [W, S] -> argmax ids [W, S]: each window fed a token at a time through the one-token path."""
    out = torch.empty_like(windows)
    for w, row in enumerate(windows):
        for t in range(row.numel()):
            out[w, t] = model(row[t].view(1, 1), torch.tensor([t])).argmax(-1)
    return out


def groups_that_fit(model) -> list[int]:
    dims = {m.shape[-1] for m in model.modules() if isinstance(m, QuantLinear)}
    return [g for g in (32, 64, 128, 256) if all(d % g == 0 for d in dims)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", default=None, help="comma-separated group sizes (default: the powers of two that fit)")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--rust-docs", type=Path, default=None, help="share/doc/rust/html (default: rustc's sysroot)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.time()
    held = held_out_tokens(args.rust_docs)
    stride = held.numel() // args.windows
    windows = torch.stack([held[i * stride : i * stride + args.steps] for i in range(args.windows)])
    base = load(None, args.steps)
    groups = [int(g) for g in args.groups.split(",")] if args.groups else groups_that_fit(load(QuantScheme(8, 32), 2))
    print(f"held-out tokens {held.numel()}; agreement over {args.windows} x {args.steps} decode steps; "
          f"groups {groups}", file=sys.stderr, flush=True)
    base_loss, base_top1 = held_out_loss(base, held), decode_top1(base, windows)
    rows = [("bf16", "-", base_loss, 1.0, weight_bytes(base))]
    for name, bits in CONFIGS:
        for g in groups:
            qm = load(QuantScheme(bits, g), args.steps)
            loss = held_out_loss(dequantized_copy(qm, 64), held)
            agree = (decode_top1(qm, windows) == base_top1).float().mean().item()
            rows.append((name, str(g), loss, agree, weight_bytes(qm)))
            print(f"  {name} g{g}: loss {loss:.4f}, agreement {agree:.4f} ({time.time() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    print_table(rows, base_loss)


def weight_bytes(model) -> int:
    return tensor_bytes(model.parameters())


def print_table(rows, base_loss: float) -> None:
    print("| weights | group | held-out perplexity | vs bf16 | top-1 agreement with bf16 | weight bytes |")
    print("|---|---|---|---|---|---|")
    for name, g, loss, agree, nbytes in rows:
        ppl, rel = math.exp(loss), math.exp(loss - base_loss) - 1
        print(f"| {name} | {g} | {ppl:.3f} | {rel:+.2%} | {agree:.2%} | {nbytes / 2**20:.2f} MiB |")


if __name__ == "__main__":
    main()
