"""gdn-export's pipeline: checkpoint -> model -> methods -> lowered program -> artifact.

`plan` checks every option against the checkpoint before any heavy work; `run_export` then runs the stages:
load weights (checkpoint.py, into model.py's GDNForCausalLM), export prefill and decode (methods.py), lower and
compile (lower.py), write (artifact.py, with metadata.py's metadata and tokenizer inside the .pte).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gdn.runner.artifact import METADATA_KEY, TOKENIZER_KEY, Metadata

from .artifact import check_space, weights_bytes, write_artifact
from .checkpoint import SafetensorsDir, WeightSource, load_model
from .config import ModelConfig, load_config
from .errors import ExportError
from .lower import lower_cpu, lower_cuda
from .metadata import build_metadata, read_tokenizer_files
from .methods import export_methods
from .model import GDNForCausalLM
from .progress import Progress
from .quant import QuantScheme, check_divides, parse_scheme

DEFAULT_CHECKPOINT = Path(__file__).parent / "default_model"
# the reference chunked gated delta rule traces to plain ATen for one chunk of at most 64 tokens
REFERENCE_PREFILL_CHUNK = 64
DEFAULT_CUDA_PREFILL_CHUNK = 1024
DEFAULT_MAX_SEQ_LEN = 4096  # the bounded default of the CPU path and the reference kernels
KV_BUDGET_BYTES = 8 << 30  # CUDA (ops kernels): the default max_seq_len is the model's limit, capped to this KV cache
DEVICE_MEMORY_SHARE = 0.9  # an explicit --max-seq-len must leave weights + KV cache within this share of the GPU
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ExportOptions:
    output: Path
    checkpoint: Path = DEFAULT_CHECKPOINT
    backend: str = "auto"  # auto | cuda | cpu
    dtype: str | None = None  # fp32 | bf16; None: bf16 on CUDA, fp32 on CPU
    state_dtype: str | None = None  # None: the checkpoint's mamba_ssm_dtype, else fp32
    max_seq_len: int | None = None  # None: default_max_seq_len()
    max_prefill_chunk: int | None = None
    kernels: str = "auto"  # auto | ops | reference
    autotune: str = "decode"  # CUDA: methods whose GEMMs AOTInductor autotunes: all | decode | none
    quant: str = "none"  # none | int8 | int4: weight-only, group-wise (export/quant.py)
    group_size: int | None = None  # None: quant.DEFAULT_GROUP[bits]
    # benchmarks only (gdn_bench's random weights): the tensors come from this source, not checkpoint's
    # safetensors; config.json and the tokenizer still come from `checkpoint`
    weights: WeightSource | None = None


@dataclass
class ExportResult:
    path: Path
    data_path: Path | None
    meta: Metadata
    kernels: str
    sizes: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if backend not in ("cuda", "cpu"):
        raise ExportError(f"unknown backend {backend!r}; expected auto, cuda or cpu")
    if backend == "cuda" and not torch.cuda.is_available():
        raise ExportError("--backend cuda needs an NVIDIA GPU with CUDA, and none is available here")
    return backend


def choose_kernels(backend: str, requested: str) -> str:
    if requested not in ("auto", "ops", "reference"):
        raise ExportError(f"unknown kernel set {requested!r}; expected auto, ops or reference")
    if backend == "cpu":
        if requested == "ops":
            raise ExportError("--kernels ops is for CUDA; the CPU runtime executes the reference kernels")
        return "reference"
    return "ops" if requested == "auto" else requested


def _dtype(name: str | None, default: torch.dtype, flag: str) -> torch.dtype:
    if name is None:
        return default
    if name not in DTYPES:
        raise ExportError(f"unknown {flag} {name!r}; expected fp32 or bf16")
    return DTYPES[name]


def kv_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
    n_attn = sum(t == "full_attention" for t in cfg.layer_types)
    return n_attn * 2 * cfg.num_key_value_heads * cfg.head_dim * dtype.itemsize  # K and V


def default_max_seq_len(cfg: ModelConfig, kernels: str, dtype: torch.dtype) -> int:
    """The ops kernels attend over the positions in use, so their cache can span the model's limit (within
    KV_BUDGET_BYTES); the reference attention reads the whole cache every step, so it keeps a bounded default."""
    limit = cfg.max_position_embeddings
    if kernels != "ops":
        return min(DEFAULT_MAX_SEQ_LEN, limit)
    fits = KV_BUDGET_BYTES // kv_bytes_per_token(cfg, dtype) // 256 * 256
    return max(2, min(limit, fits))


def resolve_max_seq_len(cfg: ModelConfig, requested: int | None, kernels: str, dtype: torch.dtype, ckpt: Path,
                        source: WeightSource | None = None) -> int:
    if requested is None:
        return default_max_seq_len(cfg, kernels, dtype)
    limit = cfg.max_position_embeddings
    if requested < 2:
        raise ExportError(f"--max-seq-len must be at least 2, got {requested}")
    if requested > limit:
        raise ExportError(f"--max-seq-len {requested} exceeds the model's max_position_embeddings {limit}")
    if kernels == "ops":
        weights = SafetensorsDir(ckpt) if source is None else source
        need = weights.numel() * dtype.itemsize + requested * kv_bytes_per_token(cfg, dtype)
        if source is None:
            weights.close()
        have = int(torch.cuda.get_device_properties(0).total_memory * DEVICE_MEMORY_SHARE)
        if need > have:
            raise ExportError(f"--max-seq-len {requested} needs {need / 2**30:.1f} GiB of GPU memory for weights and "
                              f"KV cache, beyond {have / 2**30:.1f} GiB ({DEVICE_MEMORY_SHARE:.0%} of this GPU)")
    return requested


@dataclass(frozen=True)
class Plan:
    cfg: ModelConfig
    backend: str
    kernels: str
    dtype: torch.dtype
    state_dtype: torch.dtype
    max_seq_len: int
    max_prefill_chunk: int
    quant: QuantScheme | None = None


def resolve_quant(opts: ExportOptions, cfg: ModelConfig, kernels: str) -> QuantScheme | None:
    """The scheme, checked against the dtype, the kernels and every weight's input dimension (on a meta model)."""
    scheme = parse_scheme(opts.quant, opts.group_size)
    if scheme is None:
        return None
    if opts.dtype == "fp32":
        raise ExportError(f"--quant {opts.quant} cannot be combined with --dtype fp32: quantized weights keep "
                          f"bf16 scales and run bf16 activations (use --dtype bf16, the default with --quant)")
    if kernels == "ops" and scheme.group & (scheme.group - 1):
        raise ExportError(f"--group-size {scheme.group}: the CUDA kernels take power-of-two group sizes")
    with torch.device("meta"):
        check_divides(GDNForCausalLM(cfg, 2, kernels=kernels, quant=scheme), scheme)
    return scheme


def plan(opts: ExportOptions) -> Plan:
    """Check every option against the checkpoint before any heavy work."""
    ckpt = Path(opts.checkpoint)
    if not ckpt.is_dir():
        what = "the bundled default model" if ckpt == DEFAULT_CHECKPOINT else "checkpoint"
        raise ExportError(f"{what} directory {ckpt} does not exist")
    cfg = load_config(ckpt)
    if opts.weights is None:
        SafetensorsDir(ckpt).close()  # the weight files exist and open, before any stage starts
    backend = resolve_backend(opts.backend)
    kernels = choose_kernels(backend, opts.kernels)
    quant = resolve_quant(opts, cfg, kernels)
    default_dtype = torch.bfloat16 if backend == "cuda" or quant is not None else torch.float32
    dtype = _dtype(opts.dtype, default_dtype, "--dtype")
    state_default = DTYPES.get(cfg.ssm_state_dtype or "float32", torch.float32)
    state_dtype = _dtype(opts.state_dtype, state_default, "--state-dtype")
    max_seq_len = resolve_max_seq_len(cfg, opts.max_seq_len, kernels, dtype, ckpt, opts.weights)
    bound = REFERENCE_PREFILL_CHUNK if kernels == "reference" else max_seq_len
    default_chunk = REFERENCE_PREFILL_CHUNK if kernels == "reference" else DEFAULT_CUDA_PREFILL_CHUNK
    chunk = min(opts.max_prefill_chunk or default_chunk, bound, max_seq_len)
    if opts.max_prefill_chunk is not None and opts.max_prefill_chunk < 1:
        raise ExportError(f"--max-prefill-chunk must be at least 1, got {opts.max_prefill_chunk}")
    if opts.max_prefill_chunk is not None and opts.max_prefill_chunk > bound:
        raise ExportError(f"--max-prefill-chunk {opts.max_prefill_chunk} exceeds {bound}, the bound of the {kernels} kernels")
    return Plan(cfg, backend, kernels, dtype, state_dtype, max_seq_len, chunk, quant)


def run_export(opts: ExportOptions, progress: Progress | None = None) -> ExportResult:
    progress = progress or Progress(quiet=True)
    output = Path(opts.output).absolute()
    if output.suffix != ".pte":
        raise ExportError(f"output {output} must end in .pte")
    if not output.parent.is_dir():
        raise ExportError(f"output folder {output.parent} does not exist")
    if not os.access(output.parent, os.W_OK):
        raise ExportError(f"output folder {output.parent} is not writable")
    p = plan(opts)
    weights = "" if p.quant is None else f", weights {p.quant.name} group {p.quant.group}"
    progress.info(f"{p.cfg.family}: {p.cfg.num_hidden_layers} layers, backend {p.backend}, kernels {p.kernels}, "
                  f"dtype {str(p.dtype)[6:]}{weights}, max_seq_len {p.max_seq_len}, prefill chunk {p.max_prefill_chunk}")
    files = read_tokenizer_files(Path(opts.checkpoint))
    if files.tokenizer_json is None:
        progress.info("no tokenizer.json in the checkpoint: the artifact takes token ids")
    with progress.stage("load weights"):
        # CUDA exports trace on the GPU they compile for (the reference kernels too: on CPU tensors they would
        # trace into the CPU runtime's LLM ops); CPU exports on the CPU
        device = "cuda" if p.backend == "cuda" else "cpu"
        model = load_model(opts.checkpoint, p.max_seq_len, p.dtype, p.state_dtype, p.kernels, device, p.quant,
                           opts.weights)
    check_space(output.parent, int(weights_bytes(model) * 1.1) + (1 << 20))
    meta = build_metadata(p.cfg, model, files, p.backend, p.max_prefill_chunk, p.dtype, p.state_dtype, p.quant)
    named = {METADATA_KEY: meta.to_json().encode("utf-8")}
    if files.tokenizer_json is not None:
        named[TOKENIZER_KEY] = files.tokenizer_json.encode("utf-8")
    programs = export_methods(model, p.max_prefill_chunk, progress)
    with progress.stage(f"lower and compile prefill + decode ({p.backend})"):
        if p.backend == "cuda":
            try:
                et_program = lower_cuda(programs, named, autotune=opts.autotune)
            except RuntimeError as e:
                if "missing fallback kernels" not in str(e):
                    raise
                ops = ", ".join(line.strip(" -") for line in str(e).splitlines() if line.strip().startswith("- "))
                other = "reference" if p.kernels == "ops" else "ops"
                raise ExportError(f"the ExecuTorch CUDA backend has no kernel for {ops} (kernels {p.kernels}); "
                                  f"try --kernels {other}") from None
        else:
            et_program = lower_cpu(programs, named)
    with progress.stage("write"):
        path, data_path = write_artifact(et_program, output, with_data=p.backend == "cuda")
    sizes = {path.name: path.stat().st_size}
    if data_path is not None:
        sizes[data_path.name] = data_path.stat().st_size
    progress.info("wrote " + ", ".join(f"{n} ({s / 2**20:.1f} MiB)" for n, s in sizes.items()))
    return ExportResult(path, data_path, meta, p.kernels, sizes, dict(progress.timings))
