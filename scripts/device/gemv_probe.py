"""Decode (one token) projections of Qwen3.5-2B: Inductor's Triton GEMM template (autotuned, as the CUDA
export compiles the decode method) against gdn::gemv, each with the elementwise input it has in the model.
Kernel time only: all calls captured in one CUDA graph, weights cycled through 512 MB so that no call is
served from L2; CUDA events, medians. GB/s over the weight bytes.

Usage (device): python scripts/device/gemv_probe.py [--json out.json]
"""

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

import gdn.kernels  # noqa: F401  (registers torch.ops.gdn.*)
from gdn.kernels.gemv import triton_gemv
from gdn.kernels.gemv.triton_gemv import GemvConfig

BF = torch.bfloat16
MM = {"max_autotune": True, "max_autotune_gemm_backends": "TRITON"}


def graph_us(fn, args_list, reps=50):
    for a in args_list:
        fn(*a)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for a in args_list:
            fn(*a)
    graph.replay()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        graph.replay()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / len(args_list))
    return statistics.median(times) * 1e3


def rms(x, w):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + w.float())).to(x.dtype)


# name: (N, K, input width, the model's elementwise input -> a [1, K])
SITES = {
    "mlp down (silu*up)": (2048, 6144, 12288, None),
    "attn o_proj (x*sigmoid(gate))": (2048, 2048, 4096, lambda x, nw: x[:, :2048] * torch.sigmoid(x[:, 2048:])),
    "gdn out_proj (plain input)": (2048, 2048, 2048, lambda x, nw: x),
    "mlp gate_up (rmsnorm)": (12288, 2048, 2048, lambda x, nw: rms(x, nw)),
    "gdn in_proj (rmsnorm)": (8224, 2048, 2048, lambda x, nw: rms(x, nw)),
    "lm_head (rmsnorm)": (248320, 2048, 2048, lambda x, nw: rms(x, nw)),
}
CONFIGS = [GemvConfig(bn, bk, wp) for bn in (4, 8, 16) for bk in (512, 1024) for wp in (4, 8)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    out = {"device": torch.cuda.get_device_name(0), "sites": {}}
    for name, (N, K, width, pre) in SITES.items():
        count = max(2, (512 << 20) // (N * K * 2))
        data = [(torch.randn(1, width, device="cuda", dtype=BF), torch.randn(N, K, device="cuda", dtype=BF) * 0.02,
                 torch.randn(K if pre is None else width, device="cuda") * 0.1) for _ in range(count)]
        if pre is None:
            inductor = lambda x, w, nw: F.linear(F.silu(x[:, :K]) * x[:, K:], w)
        else:
            inductor = lambda x, w, nw, pre=pre: F.linear(pre(x, nw), w)
            ours = lambda x, w, nw, pre=pre: torch.ops.gdn.gemv(pre(x, nw), w, "none")
        x, w, nw = data[0]
        a = [(x if pre is None else pre(x, nw), w) for x, w, nw in data]  # the kernel's own input
        act = "silu_mul" if pre is None else "none"
        a64 = F.silu(x[:, :K].float()) * x[:, K:].float() if pre is None else pre(x, nw).float()
        want = F.linear(a64.double(), w.double())
        torch._dynamo.reset()
        f = torch.compile(inductor, options=MM, fullgraph=True, dynamic=False)
        res = {"inductor autotuned": graph_us(f, data)}
        errs = {"inductor autotuned": (f(x, w, nw).double() - want).abs().max().item()}
        for cfg in CONFIGS:
            label = f"gemv bn{cfg.block_n} bk{cfg.block_k} w{cfg.warps}"
            res[label] = graph_us(lambda x, w, cfg=cfg: triton_gemv.gemv(x, w, act, cfg), a)
            errs[label] = (triton_gemv.gemv(a[0][0], w, act, cfg).double() - want).abs().max().item()
        if pre is not None:
            # the op with its default config behind the elementwise input, which Inductor compiles as its own kernel
            torch._dynamo.reset()
            g = torch.compile(ours, fullgraph=True, dynamic=False)
            res["compiled input + gdn::gemv"] = graph_us(g, data)
            errs["compiled input + gdn::gemv"] = (g(x, w, nw).double() - want).abs().max().item()
        best = min((k for k in res if k.startswith("gemv")), key=res.get)
        mb = N * K * 2 / 1e6
        keys = ["inductor autotuned", best] + (["compiled input + gdn::gemv"] if pre is not None else [])
        line = {k: f"{res[k]:.1f}us {mb * 1e3 / res[k]:.0f}GB/s err {errs[k]:.1e}" for k in keys}
        print(f"{name} N{N} K{K} {mb:.1f}MB: {line}", flush=True)
        out["sites"][name] = {"N": N, "K": K, "us": res, "max_abs_err": errs}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
