"""Benchmark of the attention kernels that gdn::prefill_attention and gdn::decode_attention ship, on one CUDA device.

Qwen3.5-2B's attention: H 8, Hkv 2, D 256, bf16. Times are medians of CUDA-graph replays (scripts/timing.py).

- prefill: the attention kernel alone (`triton_prefill.attend`, the chunk already in the cache) for a 4,096-token
  chunk with no prefix and with a 28,672-token prefix, in TFLOP/s of causal FLOPs (4 D H per visible query-key
  pair), against F.scaled_dot_product_attention on the flash backend in the same run: no prefix with is_causal,
  the prefix with a lower-right causal mask (torch.nn.attention.bias.causal_lower_right), GQA by enable_gqa
  (k and v expanded to H heads where the flash backend refuses it; the table says which). The whole op (cache
  write + attention) beside it, and how far the two outputs are apart.
- decode: the decode op (its split kernel, which also writes the new token, and the combine kernel) captured once
  and replayed at positions 1k, 8k, 32k, 128k and 256k (the last position) of a 262,144-position cache, L2
  flushed before each replay: GB/s of KV read (positions in use x Hkv x D x 2 tensors x 2 bytes) against the
  SM copy bandwidth of 1 GiB, and the profiler's per-kernel medians. "alone": one call per replay (the graph's
  start in the time); "chained": the 2B's 6 attention layers' calls, each over its own cache, back to back in
  one graph as a decode step runs them, time per call.
- --configs: the same measurements for a few other tile configurations of each kernel (the ops ship one per
  shape class; this is how to pick it).
- --registers (no GPU needed): each configuration's kernel compiled for sm_90 by Triton, its registers per thread,
  spill stack and shared memory (cuobjdump -res-usage), for the query groups of the Qwen3.5 family.

Usage: python scripts/bench_attention.py [--only prefill|decode ...] [--configs] [--registers] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from gdn.kernels.attention import triton_decode, triton_prefill
from gdn.kernels.attention.triton_decode import DecodeConfig
from gdn.kernels.attention.triton_prefill import PrefillConfig
from timing import copy_bandwidth, graphed, kernel_medians, median_us, Table  # scripts/ is on sys.path as a script
from tools import sass_stats

H, HKV, D, DTYPE = 8, 2, 256, torch.bfloat16
CHUNK, PREFIX = 4096, 28672
DECODE_S = 262144
DECODE_IN_USE = (1024, 8192, 32768, 131072, DECODE_S)  # positions in use: the query at position n - 1
LAYERS = 6  # the 2B's attention layers: "chained" replays the op over 6 caches in one graph
PREFILL_SWEEP = [PrefillConfig(128, 32, 8, 2), PrefillConfig(128, 32, 8, 3), PrefillConfig(64, 64, 4, 2),
                 PrefillConfig(64, 32, 4, 3)]
DECODE_SWEEP = [DecodeConfig(64, 4, 2, 132, "off"), DecodeConfig(64, 4, 2, 132), DecodeConfig(64, 4, 4, 132),
                DecodeConfig(32, 4, 3, 132), DecodeConfig(64, 8, 2, 132), DecodeConfig(64, 4, 2, 264),
                DecodeConfig(64, 4, 3, 264), DecodeConfig(32, 4, 2, 264), DecodeConfig(32, 4, 3, 396),
                DecodeConfig(64, 4, 2, 396), DecodeConfig(128, 8, 2, 132), DecodeConfig(64, 4, 2, 66)]


def causal_flops(T: int, prefix: int) -> float:
    """4 D H per visible (query, key) pair: query i (0-based in the chunk) sees prefix + i + 1 keys."""
    pairs = T * prefix + T * (T + 1) // 2
    return 4.0 * D * H * pairs


def graphed_us(fn: Callable[[], object], iters: int = 20, flush: bool = False) -> float:
    return median_us(graphed(lambda _: fn()), iters=iters, flush=flush)


def kernels_line(fn: Callable[[], object]) -> str:
    return ", ".join(f"{name[:48]} {us:.1f}" for name, us in kernel_medians(fn).items())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def prefill_inputs(prefix: int) -> dict[str, torch.Tensor]:
    """A cache holding the prefix and the chunk (written by the op once), and the chunk's queries."""
    d = dict(device="cuda", dtype=DTYPE)
    S = PREFIX + CHUNK
    x = {"q": torch.randn(CHUNK, H, D, **d), "k": torch.randn(CHUNK, HKV, D, **d), "v": torch.randn(CHUNK, HKV, D, **d),
         "k_cache": torch.randn(HKV, S, D, **d), "v_cache": torch.randn(HKV, S, D, **d),
         "input_pos": torch.arange(prefix, prefix + CHUNK, device="cuda")}
    x["out"] = triton_prefill.prefill_attention(x["q"], x["k"], x["v"], x["k_cache"], x["v_cache"], x["input_pos"])
    return x


def sdpa(x: dict[str, torch.Tensor], prefix: int) -> tuple[Callable[[], torch.Tensor], str]:
    """F.scaled_dot_product_attention on the flash backend over the same keys -> (call, how GQA is done)."""
    L = prefix + CHUNK
    q = x["q"].transpose(0, 1).unsqueeze(0).contiguous()  # [1, H, T, D]
    k, v = (x[n][:, :L].unsqueeze(0) for n in ("k_cache", "v_cache"))  # [1, Hkv, L, D]
    mask = causal_lower_right(CHUNK, L) if prefix else None

    def call(k, v, gqa):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not prefix, enable_gqa=gqa)

    try:
        call(k, v, True)
        return (lambda: call(k, v, True)), "enable_gqa"
    except RuntimeError:
        k, v = (t.repeat_interleave(H // HKV, dim=1) for t in (k, v))
        call(k, v, False)
        return (lambda: call(k, v, False)), "k, v expanded"


def bench_prefill_one(t: Table, prefix: int, configs: list[PrefillConfig]) -> dict:
    x = prefill_inputs(prefix)
    flops = causal_flops(CHUNK, prefix)
    tag = f"prefill T {CHUNK} prefix {prefix}"
    shipped = triton_prefill.prefill_config(D, DTYPE)
    res: dict[str, object] = {"flops": flops, "configs": []}
    for cfg in [shipped] + configs:
        out = torch.empty_like(x["q"])
        us = graphed_us(lambda: triton_prefill.attend(x["q"], x["k_cache"], x["v_cache"], x["input_pos"], out, cfg))
        if cfg == shipped:
            res.update(kernel_us=us, kernel_tflops=flops / us / 1e6, config=asdict(cfg))
        else:
            res["configs"].append({"config": asdict(cfg), "us": us, "tflops": flops / us / 1e6})
        label = "shipped" if cfg == shipped else "config"
        t.row(f"{tag}: kernel ({label})", f"{flops / us / 1e6:.1f} TFLOP/s", f"{us / 1e3:.3f} ms {cfg}")
    op_us = graphed_us(lambda: triton_prefill.prefill_attention(x["q"], x["k"], x["v"], x["k_cache"], x["v_cache"],
                                                               x["input_pos"]))
    t.row(f"{tag}: op (write + kernel)", f"{flops / op_us / 1e6:.1f} TFLOP/s", f"{op_us / 1e3:.3f} ms")
    call, how = sdpa(x, prefix)
    diff = rel(x["out"], call()[0].transpose(0, 1))
    sd_us = graphed_us(call)
    t.row(f"{tag}: SDPA flash ({how})", f"{flops / sd_us / 1e6:.1f} TFLOP/s",
          f"{sd_us / 1e3:.3f} ms; ours / SDPA time {res['kernel_us'] / sd_us:.3f}; outputs differ by {diff:.1e}")
    t.row(f"{tag}: SDPA kernels (us)", "", kernels_line(call))
    res.update(op_us=op_us, sdpa_us=sd_us, sdpa_tflops=flops / sd_us / 1e6, sdpa_gqa=how, rel_diff_vs_sdpa=diff)
    return res


def bench_prefill(t: Table, sweep: bool) -> None:
    sweep_configs = PREFILL_SWEEP if sweep else []
    t.put("prefill", {str(prefix): bench_prefill_one(t, prefix, sweep_configs) for prefix in (0, PREFIX)})


def decode_us(cfg: DecodeConfig, x: dict[str, torch.Tensor]) -> dict[int, float]:
    """One capture of the op, replayed with each position written into input_pos: positions in use -> us."""
    out = torch.empty_like(x["q"])
    replay = graphed(lambda _: triton_decode.decode_attention(x["q"], x["k"], x["v"], x["k_cache"], x["v_cache"],
                                                              x["pos"], out=out, config=cfg))
    times = {}
    for n in DECODE_IN_USE:
        x["pos"].fill_(n - 1)
        times[n] = median_us(replay, iters=50, flush=True)
    return times


def chained_decode_us(cfg: DecodeConfig, xs: list[dict[str, torch.Tensor]]) -> dict[int, float]:
    """One graph of the op over each layer's cache in turn (each call's q the last one's output), as a decode
    step runs its attention layers, replayed at each position: positions in use -> us per call."""
    pos = xs[0]["pos"]

    def step(_: int) -> torch.Tensor:
        o = xs[0]["q"]
        for x in xs:
            o = triton_decode.decode_attention(o, x["k"], x["v"], x["k_cache"], x["v_cache"], pos, config=cfg)
        return o

    replay = graphed(step)
    times = {}
    for n in DECODE_IN_USE:
        pos.fill_(n - 1)
        times[n] = median_us(replay, iters=30, flush=True) / len(xs)
    return times


def decode_rows(t: Table, label: str, cfg: DecodeConfig, times: dict[int, float], copy_1g: float) -> list[dict]:
    rows = []
    for n, us in times.items():
        kv = n * HKV * D * 2 * 2
        gbs = kv / us / 1e3
        pct = 100 * gbs * 1e9 / copy_1g
        rows.append({"positions": n, "us": us, "kv_bytes": kv, "gbs": gbs, "pct_copy": pct})
        t.row(f"decode {n} positions ({label})", f"{gbs:.0f} GB/s", f"{us:.2f} us, {pct:.1f} % of copy; {cfg}")
    return rows


def bench_decode(t: Table, copy_1g: float, sweep: bool) -> None:
    d = dict(device="cuda", dtype=DTYPE)
    pos = torch.zeros(1, dtype=torch.int64, device="cuda")
    layers = [{"q": torch.randn(1, H, D, **d), "k": torch.randn(1, HKV, D, **d), "v": torch.randn(1, HKV, D, **d),
               "k_cache": torch.randn(HKV, DECODE_S, D, **d), "v_cache": torch.randn(HKV, DECODE_S, D, **d),
               "pos": pos} for _ in range(LAYERS)]
    x = layers[0]
    shipped = triton_decode.decode_config(D, DTYPE)
    res: dict[str, object] = {"S": DECODE_S, "layers": LAYERS, "configs": []}
    for cfg in [shipped] + (DECODE_SWEEP if sweep else []):
        label = "shipped" if cfg == shipped else "config"
        rows = decode_rows(t, f"{label}, alone", cfg, decode_us(cfg, x), copy_1g)
        chained = decode_rows(t, f"{label}, chained", cfg, chained_decode_us(cfg, layers), copy_1g)
        entry = {"config": asdict(cfg), "rows": rows, "chained_rows": chained}
        if cfg == shipped:
            res.update(entry)
        else:
            res["configs"].append(entry)
    for n in (32768, DECODE_S):
        x["pos"].fill_(n - 1)
        t.row(f"decode {n} positions: kernels (us)", "", kernels_line(
            lambda: triton_decode.decode_attention(x["q"], x["k"], x["v"], x["k_cache"], x["v_cache"], x["pos"])))
    t.put("decode", res)


def sm90_resources(kernel, types: dict[str, str], constexprs: dict[str, object], warps: int, stages: int) -> str:
    """Registers, spill stack and shared bytes of one specialisation compiled for sm_90 (tools/sass_stats)."""
    s = sass_stats.compile_sm90(kernel, types, constexprs, warps, stages)
    return f"{s.registers} registers, {s.stack} B stack, {s.shared} B shared"


def registers(t: Table) -> None:
    """--registers: the kernels at D 256 bf16 for query groups 4 (2B), 6 (27B) and 8 (35B-A3B, Qwen3-Next)."""
    from gdn.kernels.attention.triton_softmax import LOG2E

    common = {"kc_ptr": "*bf16", "vc_ptr": "*bf16", "pos_ptr": "*i64", "S": "i32", "s_ch": "i32", "q_ptr": "*bf16"}
    pre = {**common, "o_ptr": "*bf16", "T": "i32", "s_qt": "i32", "s_qh": "i32", "s_ot": "i32", "s_oh": "i32"}
    dec = {**common, "k_ptr": "*bf16", "v_ptr": "*bf16", "m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32",
           "s_qh": "i32", "s_kh": "i32", "s_vh": "i32"}
    base = {"QK_SCALE": D**-0.5 * LOG2E, "D": D, "BD": D, "UPCAST": False}
    for G in (4, 6, 8):
        for cfg in [triton_prefill.prefill_config(D, DTYPE)] + PREFILL_SWEEP:
            const = {**base, "G": G, "BM": cfg.block_m, "BT": cfg.block_m // G, "BN": cfg.block_n}
            used = sm90_resources(triton_prefill._prefill_kernel, pre, const, cfg.warps, cfg.stages)
            t.row(f"prefill G {G} sm_90", "", f"{used}; {cfg}")
        for cfg in [triton_decode.decode_config(D, DTYPE)] + DECODE_SWEEP:
            nsplit = triton_decode.num_splits(DECODE_S, HKV, cfg)
            const = {**base, "G": G, "BG": 16, "BN": cfg.block_n, "NSPLIT": nsplit, "GDC": cfg.pdl != "off"}
            used = sm90_resources(triton_decode._split_kernel, dec, const, cfg.warps, cfg.stages)
            t.row(f"decode G {G} sm_90", "", f"{used}; {cfg}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["prefill", "decode"], action="append")
    parser.add_argument("--configs", action="store_true", help="also time the sweep of tile configurations")
    parser.add_argument("--registers", action="store_true", help="only the sm_90 compile of each configuration")
    parser.add_argument("--out", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    if args.registers:
        registers(Table())
        return 0
    if not torch.cuda.is_available():
        print("bench_attention: needs a CUDA device", file=sys.stderr)
        return 2
    t = Table()
    t.row("device", torch.cuda.get_device_name(0), f"torch {torch.__version__}")
    copy_1g = copy_bandwidth()
    t.row("copy 1 GiB (SM copy kernel)", f"{copy_1g / 1e9:.0f} GB/s")
    t.put("device", torch.cuda.get_device_name(0))
    t.put("copy_1GiB_gbs", copy_1g / 1e9)
    sections = {"prefill": lambda: bench_prefill(t, args.configs),
                "decode": lambda: bench_decode(t, copy_1g, args.configs)}
    for name in args.only or list(sections):
        sections[name]()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(t.results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
