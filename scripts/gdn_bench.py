"""gdn-bench: tokens/s at batch 1 against the memory limit and against transformers, in one run, on one GPU.

    python scripts/gdn_bench.py [--models tiny,qwen3.5-2b,qwen3.5-35b-a3b-8l] [--out DIR] [--no-peer]
        [--max-seq-len N] [--prompts 128,1024,4096] [--positions 128,8192,32768,131072]
        [--quant none|int8|int4 [--group-size N]] [--random-weights SEED]
    python scripts/gdn_bench.py --merge A/bench.json B/bench.json --out DIR   (no GPU needed)

For each model (random weights made on the fly in Hugging Face layout by transformers, except `tiny`, the
bundled default model; or a checkpoint folder given by path): export time and artifact size, load time, time
to first token, prefill tokens/s at the --prompts lengths, decode tokens/s over 256 new tokens with and without the CUDA graph (and, with
--positions, from each given position of a long cache), peak GPU memory. The memory limit of a decode step is the bytes it must read (the weights a token uses - for MoE
only the routed and shared experts -, the recurrent and conv state, the KV cache in use) over the
device-to-device copy bandwidth measured in the same run. The peers are transformers' `generate` on the
same checkpoint in bf16 (flash-linear-attention's kernels when fla is installed): eager, and with its
static cache, which transformers compiles with torch.compile on a GPU by itself.
Writes DIR/bench.json, DIR/bench.png (when matplotlib is there) and prints a table. Timings: CUDA events,
medians. Artifacts and checkpoints are kept in DIR and reused by later runs; `--merge` combines the
bench.json of runs made separately (one model per device command) into one table, JSON and chart.

Shapes whose bf16 files would not fit the disk (RANDOM_ONLY: the full Qwen3.5-35B-A3B, about 70 GB) are exported
from their config alone: a folder with config.json and no weights, read through `RandomWeights`, which makes each
tensor on the GPU when the export's loader asks for it (ExportOptions.weights). `--random-weights SEED` does the
same for every model, and for a checkpoint folder named in --models that has no weights. Such models have no
transformers peer (there is no checkpoint to load it from).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gdn.export.errors import USER_ERRORS
from gdn.export.pipeline import DEFAULT_CHECKPOINT, ExportOptions, run_export
from gdn.export.progress import Progress
from gdn.export.quant import QuantError, parse_scheme
from gdn.runner import Runner, SamplingParams
from gdn.runner.api import DECODE_BLOCK
from gdn.runner.loop import DecodeLoop, prefill
from gdn.runner.prefill_graphs import PrefillGraphs

import timing  # scripts/ is on sys.path when run as a script
from random_weights import RandomWeights, hf_class

PROMPTS = (128, 1024, 4096)
NEW_TOKENS = 256
GREEDY = SamplingParams(temperature=0.0)
ROPE = {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25}
GDN_2048 = dict(hidden_size=2048, head_dim=256, num_key_value_heads=2, linear_num_key_heads=16,
                linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4,
                vocab_size=248320, rope_parameters=ROPE, max_position_embeddings=262144)
# name -> (transformers class, config class, config kwargs)
MODELS = {
    "tiny": None,
    "qwen3.5-2b": ("Qwen3_5ForCausalLM", "Qwen3_5TextConfig", dict(
        GDN_2048, num_hidden_layers=24, layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 6,
        num_attention_heads=8, linear_num_value_heads=16, intermediate_size=6144, tie_word_embeddings=True)),
    "qwen3.5-35b-a3b-8l": ("Qwen3_5MoeForCausalLM", "Qwen3_5MoeTextConfig", dict(
        GDN_2048, num_hidden_layers=8, layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 2,
        num_attention_heads=16, linear_num_value_heads=32, num_experts=256, num_experts_per_tok=8,
        moe_intermediate_size=512, shared_expert_intermediate_size=512, tie_word_embeddings=False)),
}
MODELS["qwen3.5-35b-a3b"] = (MODELS["qwen3.5-35b-a3b-8l"][0], MODELS["qwen3.5-35b-a3b-8l"][1], dict(
    MODELS["qwen3.5-35b-a3b-8l"][2], num_hidden_layers=40,
    layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 10))
# bf16 files larger than the GPU machine's disk: always exported from the config with RandomWeights
RANDOM_ONLY = {"qwen3.5-35b-a3b"}


@dataclass
class Result:
    model: str
    export_s: float | None = None
    artifact_bytes: int = 0
    load_s: float = 0.0
    ttft_ms: float = 0.0  # the Runner's first turns: prefill eager (before its bucket's graph is captured)
    ttft_ms_graph: float = 0.0  # the same prompt once its bucket's prefill graph replays
    prefill_tok_s: dict = field(default_factory=dict)  # eager prefill
    prefill_tok_s_graph: dict = field(default_factory=dict)  # through the prefill graphs (buckets up to the chunk)
    decode_tok_s_graph: float = 0.0  # blocks of DECODE_BLOCK steps per replay, as gdn-run decodes
    decode_tok_s_eager: float = 0.0
    decode_by_block: dict = field(default_factory=dict)  # steps per replay -> graph decode tok/s
    max_seq_len: int = 0
    decode_at: dict = field(default_factory=dict)  # position -> graph decode tok/s (--positions)
    limit_at: dict = field(default_factory=dict)  # position -> memory-limit tok/s there
    decode_bytes: int = 0
    limit_tok_s: float = 0.0
    loaded_gpu_bytes: int = 0
    peak_gpu_bytes: int = 0
    decode_profile: list = field(default_factory=list)
    peer: dict = field(default_factory=dict)
    peer_compiled: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def cuda_ms(fn, reps: int) -> float:
    """Median milliseconds of `fn()` over `reps` runs, no warm-up (the callers warm up themselves); host wall
    clock without a GPU, where only the CPU test of the peers runs."""
    if not torch.cuda.is_available():
        return timing.wall_ms(fn, reps)
    return timing.median_us(fn, iters=reps, warmup=0) / 1e3


def make_checkpoint(name: str, folder: Path) -> Path:
    if MODELS[name] is None:
        return DEFAULT_CHECKPOINT
    path = folder / f"ckpt-{name}"
    if (path / "config.json").exists():
        return path
    import transformers

    cls_name, cfg_name, kwargs = MODELS[name]
    cfg = getattr(transformers, cfg_name)(**kwargs)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = getattr(transformers, cls_name)(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    return path


def make_config(name: str, folder: Path) -> Path:
    """A folder with only the config.json of model `name` (no weights): the input of RandomWeights."""
    path = folder / f"config-{name}"
    if (path / "config.json").exists():
        return path
    import transformers

    cls_name, cfg_name, kwargs = MODELS[name]
    cfg = getattr(transformers, cfg_name)(**kwargs)
    cfg.architectures = [cls_name]
    cfg.dtype = torch.bfloat16
    cfg.save_pretrained(path)
    return path


@dataclass(frozen=True)
class ModelSource:
    """One --models entry: a name in MODELS or a checkpoint folder; `seed` set: random weights from its config."""

    name: str
    folder: Path | None = None  # None: made from MODELS[name] in --out
    seed: int | None = None

    @property
    def label(self) -> str:
        return (self.folder.name if self.folder is not None and self.name not in MODELS else self.name) + (
            "" if self.seed is None else f"-random{self.seed}")


def has_weights(folder: Path) -> bool:
    return (folder / "model.safetensors").exists() or (folder / "model.safetensors.index.json").exists()


def resolve_model(entry: str, seed: int | None) -> ModelSource:
    """ValueError (a one-line reason) for an entry that is neither a known name nor a folder with a config.json,
    and for a folder without weights when no --random-weights seed is given."""
    if entry in MODELS:
        if entry == "tiny":
            return ModelSource(entry, DEFAULT_CHECKPOINT, seed)
        return ModelSource(entry, None, 0 if seed is None and entry in RANDOM_ONLY else seed)
    folder = Path(entry)
    if not (folder / "config.json").is_file():
        raise ValueError(f"unknown model {entry!r}; expected one of {', '.join(MODELS)} or a folder with a config.json")
    if seed is None and not has_weights(folder):
        raise ValueError(f"{folder} has a config.json but no weights (model.safetensors or its index); pass "
                         "--random-weights SEED to bench its shape with random weights")
    if seed is not None:
        hf_class(folder)
    return ModelSource(entry, folder, seed)


def prepare(src: ModelSource, out: Path) -> tuple[Path, RandomWeights | None]:
    """-> (the folder the export reads config.json and the tokenizer from, the weight source or None)."""
    if src.seed is None:
        return (src.folder or make_checkpoint(src.name, out)), None
    folder = src.folder or make_config(src.name, out)
    return folder, RandomWeights(folder, src.seed, "cuda")


def matrix_bytes(numel: int, b: int, quant: dict | None) -> int:
    """Bytes of `numel` projection weights: b each, or (quantized) bits / 8 each plus one scale a group."""
    if quant is None:
        return b * numel
    scale = 4 if quant.get("scale_dtype") == "float32" else 2
    return numel * quant["bits"] // 8 + numel // quant["group_size"] * scale


def decode_bytes(cfg: dict, dtype: str, pos: int, state: int, quant: dict | None = None) -> int:
    """Bytes one decode step reads at position `pos` (cfg: the artifact's model config): the weights a token
    uses (the embedding: one row; MoE: router, k routed and the shared expert), the state, the KV cache in use.
    `quant`: the artifact's scheme (Metadata.quant), which covers every matrix; conv weights keep `dtype`."""
    H, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    b = 4 if dtype == "float32" else 2
    hd, nq, nkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    Hk, Hv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    K, Vd, W = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"], cfg["linear_conv_kernel_dim"]
    attn = H * 2 * nq * hd + 2 * H * nkv * hd + nq * hd * H  # q with its output gate, k, v, o
    gdn = H * (2 * Hk * K + 2 * Hv * Vd + 2 * Hv) + Hv * Vd * H  # in_proj, out_proj
    conv = (2 * Hk * K + Hv * Vd) * W
    moe = H * (cfg["num_experts"] + 1) + 3 * H * (cfg["num_experts_per_tok"] * cfg["moe_intermediate_size"]
                                                   + cfg["shared_expert_intermediate_size"])
    dense = 3 * H * cfg["intermediate_size"]
    n_full = cfg["layer_types"].count("full_attention")
    mlp = sum(moe if m else dense for m in cfg["moe_layers"])
    matrices = n_full * attn + (L - n_full) * gdn + mlp + V * H + H
    weights = matrix_bytes(matrices, b, quant) + b * (L - n_full) * conv
    kv = b * n_full * 2 * nkv * hd * pos
    return weights + kv + state


def state_bytes(runner: Runner) -> int:
    """Recurrent and conv state (the KV cache in use is counted by position in decode_bytes)."""
    sizes = {"float32": 4, "bfloat16": 2, "float16": 2}
    return sum(math.prod(s["shape"]) * sizes[s["dtype"]] for s in runner.meta.state if not s["name"].endswith("_cache"))


def start_greedy(runner: Runner, loop: DecodeLoop, prompt: list[int], at: int | None = None,
                 limit: int = NEW_TOKENS) -> None:
    """Prefill `prompt` from position 0 and start `loop` (greedy, its default sampler, no stop ids) on its first
    token for a turn of `limit` ids; `at`: decode from that position instead of the prompt's end."""
    loop.start(prefill(runner.methods, prompt, 0, runner.prefill_chunk), len(prompt) if at is None else at, limit)
    torch.cuda.synchronize()


def time_decode(runner: Runner, prompt: list[int], graph: bool, at: int | None = None, block: int = 1) -> float:
    """Tokens/s over NEW_TOKENS greedy ids after a prefill, streamed to the host as gdn-run does (blocks of
    `block` steps, each read back while the next runs); the first run warms up (and captures the graph). `at`:
    decode from that position instead of the prompt's end (the cache between holds what it holds; the attention
    reads positions 0..pos either way)."""
    loop = DecodeLoop(runner.methods, runner.vocab_size, cuda_graph=graph, block=block)

    def setup():
        start_greedy(runner, loop, prompt, at)

    def steps():
        assert sum(1 for _ in loop.tokens()) == NEW_TOKENS - 1

    us = timing.median_us(steps, iters=3, warmup=1, setup=setup)
    return (NEW_TOKENS - 1) / (us * 1e-6)


def profile_decode(runner: Runner, prompt: list[int], steps: int = 20, top: int = 12) -> list:
    """Where eager decode steps spend GPU time: the top kernels by total CUDA time, per step."""
    from torch.profiler import ProfilerActivity, profile

    loop = DecodeLoop(runner.methods, runner.vocab_size, cuda_graph=False)
    start_greedy(runner, loop, prompt, limit=steps + 3)
    tokens = loop.tokens()
    next(tokens)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            next(tokens)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.device_time_total for e in events)
    events.sort(key=lambda e: -e.device_time_total)
    rows = [{"kernel": e.key[:90], "us_per_step": e.device_time_total / steps, "calls_per_step": e.count / steps}
            for e in events[:top]]
    rows.append({"kernel": "all kernels", "us_per_step": total / steps,
                 "calls_per_step": sum(e.count for e in events) / steps})
    return rows


@dataclass(frozen=True)
class Build:
    """What gdn-bench exports: its ExportOptions beyond the output and the cache length."""

    label: str
    checkpoint: Path
    dtype: str = "bf16"
    quant: str = "none"
    group_size: int | None = None
    weights: RandomWeights | None = None

    def name(self, max_seq_len: int) -> str:
        quant = "" if self.quant == "none" else f"-{self.quant}" + (f"g{self.group_size}" if self.group_size else "")
        return f"{self.label}-{self.dtype}{quant}-s{max_seq_len}.pte"


def export_artifact(build: Build, folder: Path, max_seq_len: int) -> tuple[Path, float, bool]:
    """-> (artifact, export seconds, reused). An artifact already in `folder` is reused, with the export
    time measured when it was made (kept beside it)."""
    out = folder / build.name(max_seq_len)
    timing = out.with_suffix(".export_s")
    if out.exists() and timing.exists():
        return out, float(timing.read_text()), True
    t0 = time.perf_counter()
    run_export(ExportOptions(output=out, checkpoint=build.checkpoint, backend="cuda", dtype=build.dtype,
                             max_seq_len=max_seq_len, quant=build.quant, group_size=build.group_size,
                             weights=build.weights), Progress())
    seconds = time.perf_counter() - t0
    timing.write_text(f"{seconds:.1f}\n")
    return out, seconds, False


def time_prefill(runner: Runner, ids: list[int], prompts: list[int], r: Result) -> None:
    """Prefill tok/s from position 0, eager and through the prefill graphs (after one warmup call and the
    capture): median of 3 runs; 1 run from 16k tokens up, where one run takes seconds."""
    graphs = PrefillGraphs(runner.methods, runner.prefill_chunk, cuda_graph=True, warmup=1)
    for n in prompts:
        if n + NEW_TOKENS < runner.max_seq_len:
            runs = 3 if n < 16384 else 1
            ms = cuda_ms(lambda: prefill(runner.methods, ids[:n], 0, runner.prefill_chunk), runs)
            r.prefill_tok_s[n] = n / (ms / 1e3)
            for _ in range(2):
                graphs(ids[:n], 0)
            r.prefill_tok_s_graph[n] = n / (cuda_ms(lambda: graphs(ids[:n], 0), runs) / 1e3)


def bench_ours(build: Build, folder: Path, max_seq_len: int, r: Result, prompts: list[int],
               positions: list[int]) -> None:
    out, r.export_s, reused = export_artifact(build, folder, max_seq_len)
    if reused:
        r.notes.append("artifact from an earlier run in the same folder (export time measured then)")
    r.artifact_bytes = sum(p.stat().st_size for p in (out, out.with_suffix(".ptd")) if p.exists())
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    free0 = torch.cuda.mem_get_info()[0]
    t0 = time.perf_counter()
    runner = Runner.load(out)
    r.load_s = time.perf_counter() - t0
    torch.cuda.synchronize()
    # the containers allocate weights and state outside torch's allocator: count device-wide
    r.loaded_gpu_bytes = free0 - torch.cuda.mem_get_info()[0]
    reserved0 = torch.cuda.memory_reserved()
    vocab = runner.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (max(prompts + [128]),), generator=g).tolist()
    r.max_seq_len = runner.max_seq_len
    time_prefill(runner, ids, prompts, r)
    def ttft_ms() -> float:
        return runner.generate(ids[:128], max_new_tokens=1, sampling=GREEDY).timings.prefill_s * 1e3

    r.ttft_ms = statistics.median(ttft_ms() for _ in range(3))  # the Runner's 3 warmup calls of bucket 128
    ttft_ms()  # the capture
    r.ttft_ms_graph = statistics.median(ttft_ms() for _ in range(3))
    r.decode_tok_s_eager = time_decode(runner, ids[:128], graph=False)
    for k in sorted({1, DECODE_BLOCK, 2 * DECODE_BLOCK}):
        r.decode_by_block[k] = time_decode(runner, ids[:128], graph=True, block=k)
    r.decode_tok_s_graph = r.decode_by_block[DECODE_BLOCK]
    state = state_bytes(runner)
    for pos in positions:
        if pos + NEW_TOKENS < runner.max_seq_len:
            r.decode_at[pos] = time_decode(runner, ids[:128], graph=True, at=pos, block=DECODE_BLOCK)
            r.limit_at[pos] = decode_bytes(runner.meta.config, runner.meta.dtype, pos + NEW_TOKENS // 2, state,
                                           runner.meta.quant)
    r.peak_gpu_bytes = r.loaded_gpu_bytes - reserved0 + torch.cuda.max_memory_reserved()
    r.decode_profile = profile_decode(runner, ids[:128])
    r.decode_bytes = decode_bytes(runner.meta.config, runner.meta.dtype, 128 + NEW_TOKENS // 2, state,
                                  runner.meta.quant)
    runner.close()


def bench_peer(ckpt: Path, r: Result, vocab: int, new_tokens: int = NEW_TOKENS, device: str = "cuda") -> None:
    """transformers generate, bf16, same weights: eager into r.peer, then with its static cache (which it
    compiles itself on a GPU) into r.peer_compiled. Each is best effort: a failure is recorded, not raised."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16).to(device).eval()
    # transformers takes fla's kernels when it can import fla (the attribute or the module-level hook,
    # depending on the version); the reference PyTorch path otherwise
    gdn = next((m for m in model.modules() if hasattr(m, "chunk_gated_delta_rule")), None)
    fla = ("fla" in gdn.chunk_gated_delta_rule.__module__) if gdn is not None else "fla.ops" in sys.modules
    ids = torch.randint(3, vocab, (1, 128), device=device, generator=torch.Generator(device).manual_seed(1))
    name = f"transformers {transformers.__version__} bf16" + (" + fla" if fla else " (no fla)")
    try:
        r.peer = {"name": f"{name}, eager", **time_generate(model, ids, new_tokens, [4], {})}
    except Exception as e:  # noqa: BLE001
        r.peer = {"error": f"{type(e).__name__}: {e}"[:300]}
    try:
        import torch._dynamo as dynamo  # binds `dynamo` only: `import torch._dynamo` would make torch a local here

        dynamo.reset()
        # one cache size for every call (the longest first), so the compiled step is not recompiled per length
        kw = {"cache_implementation": "static", "max_cache_len": ids.shape[1] + new_tokens}
        t0 = time.perf_counter()
        timed = time_generate(model, ids, new_tokens, [new_tokens, new_tokens, 1], kw)
        compiled = dynamo.utils.counters["stats"]["unique_graphs"] > 0
        r.peer_compiled = {"name": f"{name}, static cache" + (" + torch.compile" if compiled else " (not compiled)"),
                           "warmup_and_timing_s": time.perf_counter() - t0, **timed}
    except Exception as e:  # noqa: BLE001
        r.peer_compiled = {"error": f"{type(e).__name__}: {e}"[:300]}


def time_generate(model, ids: torch.Tensor, new_tokens: int, warmup: list[int], kw: dict) -> dict:
    """TTFT (1 new token) and decode tokens/s ((n - 1) tokens over the extra time of n), CUDA events."""

    def gen(n):
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                           pad_token_id=0, **kw)

    for n in warmup:
        gen(n)
    t1 = cuda_ms(lambda: gen(1), 3)
    tn = cuda_ms(lambda: gen(new_tokens), 2)
    return {"ttft_ms": t1, "decode_tok_s": (new_tokens - 1) / ((tn - t1) / 1e3), "new_tokens": new_tokens}


def environment() -> dict:
    import triton

    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        driver = "unknown"
    return {"device": torch.cuda.get_device_name(), "driver": driver, "torch": torch.__version__,
            "triton": triton.__version__, "python": platform.python_version()}


def table(results: list[Result], bw: float) -> str:
    prompts = sorted({n for r in results for n in r.prefill_tok_s}) or list(PROMPTS)
    rows = [f"copy bandwidth {bw / 1e9:.0f} GB/s (read + write)",
            f"{'model':20} {'export s':>8} {'size MB':>8} {'load s':>6} {'TTFT ms':>8} "
            + " ".join(f"{'pre' + str(n):>8}" for n in prompts)
            + f" {'dec graph':>9} {'dec eager':>9} {'limit':>7} {'%limit':>6} {'peer':>7} {'x peer':>6}"
            + f" {'compiled':>8} {'x comp':>6} {'peak GB':>7}"]
    for r in results:
        pre = " ".join(f"{r.prefill_tok_s.get(n, float('nan')):8.0f}" for n in prompts)
        peer = r.peer.get("decode_tok_s", float("nan"))
        comp = r.peer_compiled.get("decode_tok_s", float("nan"))
        rows.append(f"{r.model:20} {r.export_s or float('nan'):8.1f} {r.artifact_bytes / 1e6:8.1f} {r.load_s:6.2f} "
                    f"{r.ttft_ms:8.2f} {pre} {r.decode_tok_s_graph:9.1f} {r.decode_tok_s_eager:9.1f} "
                    f"{r.limit_tok_s:7.0f} {100 * r.decode_tok_s_graph / r.limit_tok_s:5.1f}% {peer:7.1f} "
                    f"{r.decode_tok_s_graph / peer:6.1f} {comp:8.1f} {r.decode_tok_s_graph / comp:6.1f} "
                    f"{r.peak_gpu_bytes / 1e9 if r.peak_gpu_bytes else float('nan'):7.2f}")
    for r in results:
        graphed = " ".join(f"{n}: {v:.0f}" for n, v in sorted(r.prefill_tok_s_graph.items()))
        rows.append(f"{r.model}: time to first token (128 tokens) {r.ttft_ms:.2f} ms eager, {r.ttft_ms_graph:.2f} ms "
                    f"graphed; prefill tok/s graphed {graphed}")
        blocks = ", ".join(f"{k}: {v:.1f}" for k, v in sorted(r.decode_by_block.items()))
        rows.append(f"{r.model}: graph decode tok/s by steps per replay {blocks}")
        for pos, tok_s in sorted(r.decode_at.items()):
            limit = bw / r.limit_at[pos]
            rows.append(f"{r.model} (max_seq_len {r.max_seq_len}) decode at position {pos}: {tok_s:.1f} tok/s, "
                        f"limit {limit:.0f}, {100 * tok_s / limit:.1f}%")
    return "\n".join(rows)


def chart(results: list[Result], path: Path, device: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [r.model for r in results]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(7, 4))
    w = 0.16
    bars = [("memory limit", [r.limit_tok_s for r in results]),
            ("gdn, CUDA graph", [r.decode_tok_s_graph for r in results]),
            ("gdn, eager", [r.decode_tok_s_eager for r in results]),
            ("transformers", [r.peer.get("decode_tok_s", 0) for r in results]),
            ("transformers, static cache", [r.peer_compiled.get("decode_tok_s", 0) for r in results])]
    for j, (label, values) in enumerate(bars):
        ax.bar([i + (j - 2) * w for i in x], values, w, label=label)
    ax.set_xticks(list(x), names)
    ax.set_yscale("log")
    ax.set_ylabel("decode tokens/s, batch 1")
    ax.set_title(f"decode on {device}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def load_results(paths: list[Path]) -> tuple[dict, float, list[Result]]:
    """Results of earlier runs on one device; the copy bandwidth is each run's own (limit_tok_s keeps it)."""
    reports = [json.loads(p.read_text()) for p in paths]
    devices = {r["environment"]["device"] for r in reports}
    if len(devices) != 1:
        raise ValueError(f"results from different devices: {sorted(devices)}")
    known = set(Result.__dataclass_fields__)
    results = []
    for rep in reports:
        for row in rep["results"]:
            r = Result(**{k: v for k, v in row.items() if k in known})
            r.prefill_tok_s = {int(k): v for k, v in r.prefill_tok_s.items()}
            r.prefill_tok_s_graph = {int(k): v for k, v in r.prefill_tok_s_graph.items()}
            r.decode_at = {int(k): v for k, v in r.decode_at.items()}
            r.limit_at = {int(k): v for k, v in r.limit_at.items()}
            r.decode_by_block = {int(k): v for k, v in r.decode_by_block.items()}
            if "loaded_gpu_bytes" not in row:  # runs before the device-wide count measured torch's allocator only
                r.peak_gpu_bytes = 0
                r.notes.append("GPU memory not measured")
            results.append(r)
    return reports[0]["environment"], statistics.median(r["copy_bandwidth_Bps"] for r in reports), results


def write_report(results: list[Result], env: dict, bw: float, out: Path) -> None:
    report = {"environment": env, "copy_bandwidth_Bps": bw, "results": [asdict(r) for r in results]}
    (out / "bench.json").write_text(json.dumps(report, indent=1))
    print(table(results, bw))
    for r in results:
        if r.decode_profile:
            print(f"{r.model}: eager decode, GPU time per step by kernel")
            print("\n".join(f"  {p['us_per_step']:9.1f} us  {p['calls_per_step']:6.1f} calls  {p['kernel']}"
                            for p in r.decode_profile))
    if chart(results, out / "bench.png", env["device"]):
        print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,qwen3.5-2b,qwen3.5-35b-a3b-8l",
                    help=f"comma-separated: {', '.join(MODELS)}, or checkpoint folders (a config.json, a tokenizer "
                         "optional; no weights needs --random-weights)")
    ap.add_argument("--out", type=Path, default=Path("bench"))
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="our artifact's dtype (the peer runs bf16)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--max-seq-len", type=int, default=None,
                    help="the artifacts' KV cache (default: the longest prompt plus the decoded tokens; 512 for tiny)")
    ap.add_argument("--prompts", default=",".join(map(str, PROMPTS)), help="prefill lengths to time, from position 0")
    ap.add_argument("--positions", default="",
                    help="also time graph decode from these positions (e.g. 128,8192,32768,131072), each beside "
                         "its memory limit there")
    ap.add_argument("--peer-tokens", type=int, default=NEW_TOKENS,
                    help="new tokens per timed transformers generate (fewer keeps slow peers within a device command)")
    ap.add_argument("--export-only", action="store_true",
                    help="make the checkpoints and artifacts in --out and stop (a later run reuses them)")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="JSON", help="combine earlier runs' bench.json files")
    ap.add_argument("--quant", default="none", help="gdn-export --quant of our artifacts: none, int8 or int4")
    ap.add_argument("--group-size", type=int, default=None, help="gdn-export --group-size (with --quant)")
    ap.add_argument("--random-weights", type=int, default=None, metavar="SEED",
                    help="export every model from its config alone, each tensor made from SEED when the export "
                         f"loads it (benchmarks only; always on, seed 0, for {', '.join(sorted(RANDOM_ONLY))})")
    args = ap.parse_args(argv)
    if args.merge:
        missing = [p for p in args.merge if not p.is_file()]
        if missing:
            print(f"gdn-bench: error: no such file {missing[0]}", file=sys.stderr)
            return 2
        try:
            env, bw, results = load_results(args.merge)
        except (ValueError, KeyError, TypeError) as e:
            print(f"gdn-bench: error: cannot merge: {e}", file=sys.stderr)
            return 2
        args.out.mkdir(parents=True, exist_ok=True)
        write_report(results, env, bw, args.out)
        return 0
    try:
        sources, prompts, positions = check_args(args)
    except ValueError as e:
        print(f"gdn-bench: error: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gdn-bench: error: needs an NVIDIA GPU", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, sources, prompts, positions)
    except USER_ERRORS as e:  # an export refused for a reason the user can act on
        print(f"gdn-bench: error: {e}", file=sys.stderr)
        return 2


def check_args(args: argparse.Namespace) -> tuple[list[ModelSource], list[int], list[int]]:
    """Everything that needs no GPU, before any work: ValueError (one line) on bad input."""
    try:
        prompts = [int(n) for n in args.prompts.split(",") if n]
        positions = [int(n) for n in args.positions.split(",") if n]
    except ValueError:
        raise ValueError("--prompts and --positions take comma-separated integers") from None
    try:
        parse_scheme(args.quant, args.group_size)
    except QuantError as e:
        raise ValueError(str(e)) from None
    if args.quant != "none" and args.dtype == "fp32":
        raise ValueError(f"--quant {args.quant} runs bf16 activations; it cannot be combined with --dtype fp32")
    return [resolve_model(n, args.random_weights) for n in args.models.split(",")], prompts, positions


def run(args: argparse.Namespace, sources: list[ModelSource], prompts: list[int], positions: list[int]) -> int:
    bw = timing.copy_bandwidth()  # bytes/s, read + write
    results = []
    for src in sources:
        ckpt, weights = prepare(src, args.out)
        build = Build(src.label, ckpt, args.dtype, args.quant, args.group_size, weights)
        r = Result(src.label + ("" if args.quant == "none" else f"-{args.quant}"))
        max_seq = args.max_seq_len or (512 if src.name == "tiny" else max(prompts) + NEW_TOKENS + 64)
        if args.export_only:
            path, seconds, reused = export_artifact(build, args.out, max_seq)
            print(f"{r.model}: {path} ({'reused' if reused else f'exported in {seconds:.1f} s'})", flush=True)
            continue
        bench_ours(build, args.out, max_seq, r, prompts, positions)
        r.notes.append(f"gdn {args.dtype}" + ("" if args.quant == "none" else f", weights {args.quant}"))
        r.limit_tok_s = bw / r.decode_bytes
        if weights is not None:
            r.notes.append(f"random weights, seed {src.seed}, made while exporting; no checkpoint, so no peer")
        elif not args.no_peer:
            try:
                vocab = json.loads((ckpt / "config.json").read_text()).get("vocab_size", 512)
                bench_peer(ckpt, r, vocab, args.peer_tokens)
            except Exception as e:  # the peer is best effort: say why it did not run
                r.peer = {"error": f"{type(e).__name__}: {e}"[:300]}
        results.append(r)
        print(table([r], bw), flush=True)
    if results:
        write_report(results, environment(), bw, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
