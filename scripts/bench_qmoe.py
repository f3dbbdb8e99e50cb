"""Kernel benchmark of the quantized MoE op (gdn::qmoe_shared) on one CUDA GPU at Qwen3.5-35B-A3B's decode shape
(H 2048, I 512, E 256, top-8, shared expert 512, bf16 activations and scales).

Decode (T = 1), us per layer, eager and replayed from a CUDA graph, every timed call after an L2 flush (medians,
scripts/timing.py). GB/s over the bytes the op must read: the packed weights and scales of the k routed experts'
gate/up and down rows and of the shared expert's down projection (h, x and the router's few bytes left out),
against the copy bandwidth. Rows, per scheme (int8 g64, int4 g32, int4 g128), beside bf16 gdn::moe_shared:
- the op alone (router launch, kernel 1, kernel 2 with the shared expert, launched with PDL);
- chained: 4 layers (the quantized router/shared projection through gdn::qgemv, then the op; each layer its own
  weights, fed the last output) in one graph, per layer, with the projection's bytes added;
- the op's kernels alone (profiler medians).
With --prefill, the routed experts at T = 512, 2048, 8192 (ms, graphed): qmoe_prefill against bf16 moe_prefill.
With --registers (no GPU needed): each kernel compiled for sm_90 at this shape (scripts/tools/sass_stats.py):
registers, spill stack, shared memory, programs per SM and, for decode, SASS instructions per weight byte.

    python scripts/bench_qmoe.py [--prefill] > table.md
    python scripts/bench_qmoe.py --registers
"""

from __future__ import annotations

import argparse
import sys

import torch

import gdn.kernels  # noqa: F401  (registers torch.ops.gdn.*)
from gdn.kernels.moe.prefill import moe_prefill
from gdn.kernels.qgemv import reference as qref
from gdn.kernels.qmoe import decode, prefill
from gdn.kernels.qmoe.prefill import qmoe_prefill

import timing  # scripts/ is on sys.path when run as a script

H, I, E, K, S = 2048, 512, 256, 8, 512
DT = torch.bfloat16
CHAIN = 4  # layers per graph in the chained row
SCHEMES = [(8, 64), (4, 32), (4, 128)]  # (bits, group): the export's defaults and int4 at a long group


def packed_bytes(rows: int, K: int, bits: int | None, group: int) -> int:
    """Bytes of `rows` weight rows of K columns: bf16 (bits None), or packed values plus bf16 scales."""
    return rows * K * 2 if bits is None else rows * (K * bits // 8 + K // group * 2)


def quantize(w: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = qref.quantize(w.reshape(-1, w.shape[-1]), bits, group)
    return q.view(*w.shape[:-1], -1), s.view(*w.shape[:-1], -1)


def layer_weights(bits: int | None, group: int) -> dict[str, object]:
    """One layer: bf16 (bits None) or (qweight, scales) pairs of gate_up, down, shared_down and the projection."""
    w = {"gate_up": torch.randn(E, 2 * I, H, device="cuda", dtype=DT) * H**-0.5,
         "down": torch.randn(E, H, I, device="cuda", dtype=DT) * I**-0.5,
         "shared_down": torch.randn(H, S, device="cuda", dtype=DT) * S**-0.5,
         "w_rs": torch.randn(E + 2 * S + 1, H, device="cuda", dtype=DT) * H**-0.5}
    return w if bits is None else {k: quantize(v, bits, group) for k, v in w.items()}


def op(x: torch.Tensor, rs: torch.Tensor, w: dict, bits: int | None, group: int) -> torch.Tensor:
    if bits is None:
        return torch.ops.gdn.moe_shared(x, rs, w["gate_up"], w["down"], w["shared_down"], K, True)
    return torch.ops.gdn.qmoe_shared(x, rs, *w["gate_up"], *w["down"], *w["shared_down"], K, True, bits, group)


def project(x: torch.Tensor, w: dict, bits: int | None, group: int) -> torch.Tensor:
    if bits is None:
        return torch.ops.gdn.gemv(x, w["w_rs"], "none")
    return torch.ops.gdn.qgemv(x, *w["w_rs"], bits, group, "none")


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def rate_cells(nbytes: int, us: float, bw: float) -> list[str]:
    gbs = nbytes / (us * 1e-6)
    return [f"{us:.1f}", f"{gbs / 1e9:.0f}", f"{100 * gbs / bw:.1f}%"]


def scheme_rows(bits: int | None, group: int, bw: float) -> list[str]:
    name = "bf16" if bits is None else f"int{bits} g{group}"
    op_bytes = packed_bytes(K * 3 * I, H, bits, group) + packed_bytes(H, S, bits, group)
    proj_bytes = packed_bytes(E + 2 * S + 1, H, bits, group)
    w = layer_weights(bits, group)
    x = torch.randn(1, H, device="cuda", dtype=DT)
    rs = project(x, w, bits, group)
    t = timing.timed(lambda: op(x, rs, w, bits, group), flush=True)
    out = [row([name, "the op", f"{op_bytes / 1e6:.2f}", f"{t.eager_us:.1f}", *rate_cells(op_bytes, t.graph_us, bw)])]
    layers = [w] + [layer_weights(bits, group) for _ in range(CHAIN - 1)]
    last = {}

    def layer(i: int) -> None:
        inp = x if i == 0 else last["y"]
        last["y"] = op(inp, project(inp, layers[i], bits, group), layers[i], bits, group)

    chained = timing.median_us(timing.graphed(layer, CHAIN), flush=True) / CHAIN
    out.append(row([name, f"chained, {CHAIN} layers (projection + the op), per layer",
                    f"{(op_bytes + proj_bytes) / 1e6:.2f}", "—", *rate_cells(op_bytes + proj_bytes, chained, bw)]))
    kernels = timing.kernel_medians(lambda: op(x, rs, w, bits, group))
    out.append(row([name, "kernels (us, profiler medians): " + ", ".join(f"{k} {v:.1f}" for k, v in kernels.items()),
                    "", "", "", "", ""]))
    return out


def routed(x: torch.Tensor, logits: torch.Tensor, w: dict, bits: int | None, group: int) -> torch.Tensor:
    """The routed experts alone at T > 1 (the op's prefill kernels)."""
    if bits is None:
        return moe_prefill(x, logits, w["gate_up"], w["down"], K, True)
    return qmoe_prefill(x, logits, (*w["gate_up"], *w["down"]), K, True, bits, group)


def prefill_rows() -> list[str]:
    out = ["", row(["T", "weights", "routed experts, ms (CUDA graph)"]), row(["---"] * 3)]
    for bits, group in [(None, 0)] + SCHEMES:
        w = layer_weights(bits, group)
        for T in (512, 2048, 8192):
            x = torch.randn(T, H, device="cuda", dtype=DT)
            logits = torch.randn(T, E, device="cuda", dtype=DT)
            t = timing.timed(lambda: routed(x, logits, w, bits, group), 10, flush=True, eager=False)
            out.append(row([str(T), "bf16" if bits is None else f"int{bits} g{group}", f"{t.graph_us / 1e3:.3f}"]))
    return out


def compiled(bits: int, group: int) -> list[tuple[str, object, int, int]]:
    """(kernel name, sm_90 stats, weight bytes a program reads (decode), warps) of the op's four kernels."""
    from tools import sass_stats

    q = "*i8" if bits == 8 else "*u8"
    up, down = decode.gate_up_meta(H, I, bits, group), decode.down_meta(H, I, S, K, bits, group)
    types = dict(x_ptr="*bf16", q_ptr=q, s_ptr="*bf16", h_ptr="*fp32", ids_ptr="*i32", weights_ptr="*fp32",
                 out_ptr="*bf16", shared_act_ptr="*bf16", shared_act_stride="i32", shared_gate_ptr="*bf16",
                 sq_ptr=q, ss_ptr="*bf16")
    row_bytes = packed_bytes(1, H, bits, group)  # a gate/up row; a down row and a shared row are I and S wide
    up_warps, down_warps = up.pop("num_warps"), down.pop("num_warps")
    out = [("decode gate_up", sass_stats.compile_sm90(decode.qdecode_gate_up_kernel, types, {**up, "GDC": True},
                                                      up_warps), 2 * up["BLOCK_I"] * row_bytes, up_warps),
           ("decode down", sass_stats.compile_sm90(decode.qdecode_down_kernel, types, {**down, "GDC": True},
                                                   down_warps),
            down["BLOCK_OUT"] * (K * packed_bytes(1, I, bits, group) + packed_bytes(1, S, bits, group)), down_warps)]
    grouped = dict(pairs_ptr="*i32", block_expert_ptr="*i32", block_start_ptr="*i32", block_half_ptr="*i32",
                   num_pairs="i32", x_ptr="*bf16", q_ptr=q, s_ptr="*bf16", h_ptr="*bf16", weights_ptr="*fp32",
                   y_ptr="*bf16")
    common = prefill.common_meta(E, bits, group, DT)
    common["UPCAST"] = False
    warps, stages = common.pop("num_warps"), common.pop("num_stages")
    for name, kernel, meta in (("prefill gate_up", prefill.qgrouped_gate_up_kernel, prefill.gate_up_meta(H, I, K)),
                               ("prefill down", prefill.qgrouped_down_kernel, prefill.down_meta(H, I))):
        out.append((name, sass_stats.compile_sm90(kernel, grouped, {**meta, **common}, warps, stages), 0, warps))
    return out


def registers() -> int:
    print("| weights | kernel | warps | registers | stack B | shared B | programs / SM | weight KiB a program | "
          "SASS per weight byte | top opcodes |\n" + row(["---"] * 10))
    for bits, group in SCHEMES:
        for name, st, nbytes, warps in compiled(bits, group):
            per_byte = f"{st.instructions / (nbytes / (32 * warps)):.1f}" if nbytes else "—"
            print(row([f"int{bits} g{group}", name, str(warps), str(st.registers), str(st.stack), str(st.shared),
                       str(st.programs()), f"{nbytes / 1024:.1f}" if nbytes else "—", per_byte, st.top(6)]),
                  flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefill", action="store_true", help="also time the routed experts at T = 512, 2048, 8192")
    p.add_argument("--registers", action="store_true", help="sm_90 compile statistics only (no GPU needed)")
    args = p.parse_args()
    if args.registers:
        return registers()
    if not torch.cuda.is_available():
        print("bench_qmoe: needs a CUDA GPU, found none", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    bw = timing.copy_bandwidth()
    lines = [f"Device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}. Decode, T = 1, H {H}, I {I}, "
             f"E {E}, top-{K}, shared expert {S}. Copy bandwidth {bw / 1e9:.0f} GB/s.", "",
             row(["weights", "path", "MB read", "us eager", "us CUDA graph", "GB/s (graph)", "% of copy"]),
             row(["---"] * 7)]
    print("\n".join(lines), flush=True)
    for bits, group in [(None, 0)] + SCHEMES:
        print("\n".join(scheme_rows(bits, group, bw)), flush=True)
    if args.prefill:
        print("\n".join(prefill_rows()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
