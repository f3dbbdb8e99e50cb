"""Decode (one token) projections as Inductor compiles them for the CUDA backend: a Triton mm template with
one config (export without autotuning), the same with autotuning, and a mul + sum reduction in float32.
Also the routed MoE experts as a gather + reduction. GB/s over the weight bytes; CUDA events around a
CUDA graph of all copies, medians; weight copies cycled so that no layer is served from L2.
"""

import statistics

import torch
import torch._inductor.config as icfg

torch.manual_seed(0)
dev = "cuda"
BF = torch.bfloat16
MM = {"max_autotune": True, "max_autotune_gemm_backends": "TRITON"}


def bench(fn, args_list, reps=50):
    """Microseconds per call, kernel time only: all calls captured into one CUDA graph (without it, a
    torch.compile'd call's host overhead, about 80 us, hides every small kernel)."""
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
    return statistics.median(times) * 1e3  # us


def linear(x, w):
    return torch.nn.functional.linear(x, w)


def reduce(x, w):
    return (w.float() * x.float()).sum(-1).to(x.dtype)[None]


def copies(n, k):
    count = max(1, (512 << 20) // (n * k * 2))
    return [(torch.randn(1, k, device=dev, dtype=BF), torch.randn(n, k, device=dev, dtype=BF) * 0.02)
            for _ in range(count)]


SHAPES = {"lm_head": (248320, 2048), "gate_up": (12288, 2048), "down": (2048, 6144), "gdn_in": (8224, 2048),
          "attn_qkv": (5120, 2048), "out": (2048, 2048)}
rows = []
for name, (n, k) in SHAPES.items():
    args = copies(n, k)
    x, w = args[0]
    want = linear(x.double(), w.double())
    res = {}
    variants = [("mm 1 config", linear, {**MM, "test_configs.max_mm_configs": 1}),
                ("mm autotuned", linear, MM), ("mul+sum fp32", reduce, {})]
    for label, fn, opts in variants:
        torch._dynamo.reset()
        f = torch.compile(fn, options=opts, fullgraph=True, dynamic=False)
        err = (f(x, w).double() - want).abs().max().item()
        us = bench(f, args)
        res[label] = (us, n * k * 2 / us / 1e3, err)
    rows.append((name, n, k, res))
    print(name, n, k, {k_: f"{v[0]:.1f}us {v[1]:.0f}GB/s err {v[2]:.1e}" for k_, v in res.items()}, flush=True)


def moe_ref(x, gu, dn, idx, wts):
    """Gathered copies then bmm (the reference path)."""
    h = torch.bmm(gu[idx], x.expand(idx.shape[0], -1)[:, :, None])[:, :, 0]  # [k, 2I]
    g, u = h.chunk(2, -1)
    a = torch.nn.functional.silu(g) * u
    y = torch.bmm(dn[idx], a[:, :, None])[:, :, 0]  # [k, H]
    return (y.float() * wts[:, None]).sum(0).to(x.dtype)


def moe_reduce(x, gu, dn, idx, wts):
    h = (gu[idx].float() * x.float()).sum(-1)  # [k, 2I]
    g, u = h.chunk(2, -1)
    a = (torch.nn.functional.silu(g) * u).to(x.dtype)
    y = (dn[idx].float() * a[:, None, :].float()).sum(-1)  # [k, H]
    return (y * wts[:, None]).sum(0).to(x.dtype)


E, H, I, K = 256, 2048, 512, 8
margs = []
for _ in range(4):
    margs.append((torch.randn(1, H, device=dev, dtype=BF), torch.randn(E, 2 * I, H, device=dev, dtype=BF) * 0.02,
                  torch.randn(E, H, I, device=dev, dtype=BF) * 0.02, torch.randperm(E, device=dev)[:K],
                  torch.rand(K, device=dev)))
nbytes = K * 3 * H * I * 2
want = moe_ref(*[a.double() if a.is_floating_point() else a for a in margs[0]])
for label, fn, opts in [("moe gathered bmm 1 config", moe_ref, {**MM, "test_configs.max_mm_configs": 1}),
                        ("moe gather+reduce", moe_reduce, {})]:
    torch._dynamo.reset()
    f = torch.compile(fn, options=opts, fullgraph=True, dynamic=False)
    err = (f(*margs[0]).double() - want).abs().max().item()
    us = bench(f, margs, reps=200)
    print(label, f"{us:.1f}us {nbytes / us / 1e3:.0f}GB/s err {err:.1e}", flush=True)
