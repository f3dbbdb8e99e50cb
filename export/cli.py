"""`gdn-export [OUTPUT.pte]`: export a checkpoint (default: the bundled model) to one ExecuTorch artifact."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import click

from .errors import USER_ERRORS
from .pipeline import DEFAULT_CHECKPOINT, ExportOptions, run_export
from .progress import Progress


def _quiet_libraries() -> None:
    """torch.export / ExecuTorch log and warn a lot about internals a user cannot act on."""
    warnings.filterwarnings("ignore")
    for name in ("torch", "executorch", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("output", default="model.pte", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Hugging Face checkpoint directory (default: the bundled model).")
@click.option("--backend", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="auto picks CUDA when a GPU is present.")
@click.option("--dtype", type=click.Choice(["bf16", "fp32"]), default=None, help="Weights and activations (default: bf16 on CUDA, fp32 on CPU).")
@click.option("--state-dtype", type=click.Choice(["fp32", "bf16"]), default=None,
              help="Recurrent GDN state (default: the checkpoint's mamba_ssm_dtype, else fp32).")
@click.option("--max-seq-len", type=int, default=None, help="KV-cache length (default on CUDA: the model's max_position_embeddings, capped to an 8 GiB KV cache; "
                   "CPU and reference kernels: min(4096, max_position_embeddings)).")
@click.option("--max-prefill-chunk", type=int, default=None,
              help="Largest prefill length per call (CPU and reference kernels: at most 64).")
@click.option("--kernels", type=click.Choice(["auto", "ops", "reference"]), default="auto", show_default=True,
              help="CUDA kernels: ops (our Triton ops; what auto picks) or reference (plain ATen, prefill chunk <= 64).")
@click.option("--autotune", type=click.Choice(["decode", "all", "none"]), default="decode", show_default=True,
              help="CUDA: the methods whose GEMMs AOTInductor autotunes (faster kernels, longer export).")
@click.option("--quant", default="none", show_default=True,
              help="Weight-only quantization: none, int8 or int4 (group-wise, symmetric; implies --dtype bf16).")
@click.option("--group-size", type=int, default=None,
              help="Input columns per quantization scale (default: 64 for int8, 32 for int4); must divide every weight's input dimension.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--verbose", "-v", is_flag=True, help="Show library logs and details.")
def main(output, checkpoint, backend, dtype, state_dtype, max_seq_len, max_prefill_chunk, kernels, autotune, quant,
         group_size, quiet, verbose):
    """Export a Gated-DeltaNet checkpoint to OUTPUT (.pte, plus a .ptd beside it for CUDA)."""
    if not verbose:
        _quiet_libraries()
    opts = ExportOptions(output=output, checkpoint=checkpoint or DEFAULT_CHECKPOINT, backend=backend, dtype=dtype,
                         state_dtype=state_dtype, max_seq_len=max_seq_len, max_prefill_chunk=max_prefill_chunk,
                         kernels=kernels, autotune=autotune, quant=quant, group_size=group_size)
    progress = Progress(quiet=quiet, verbose=verbose)
    try:
        result = run_export(opts, progress)
    except USER_ERRORS as e:
        click.echo(f"gdn-export: error: {e}", err=True)
        sys.exit(2)
    if not quiet:
        click.echo(f"gdn-export: {result.path} ready in {progress.elapsed():.1f}s", err=True)


if __name__ == "__main__":
    main()
