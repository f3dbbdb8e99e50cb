"""Probe: does aoti_compile_and_package + aoti_load_package of a trivial CUDA module work in this process,
given what was imported first? Usage: python probe_aoti.py {plain|executorch|gdn_global|gdn_ops} OUTDIR"""

import faulthandler
import sys

faulthandler.enable()
variant, out = sys.argv[1], sys.argv[2]

import torch  # noqa: E402

if variant == "executorch":
    import executorch.exir  # noqa: F401
if variant == "gdn_global":
    from gdn.runner.aoti import make_libtorch_global

    make_libtorch_global()
if variant == "gdn_ops":
    import gdn.kernels  # noqa: F401


class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(64, 64))
        self.register_buffer("s", torch.zeros(64))

    def forward(self, x):
        self.s.add_(x.sum(0))
        return x @ self.w + self.s


m = M().cuda()
x = torch.randn(8, 64, device="cuda")
ep = torch.export.export(m, (x,), strict=True)
print(variant, "exported", flush=True)
pkg = torch._inductor.aoti_compile_and_package(ep, package_path=f"{out}/{variant}.pt2")
print(variant, "compiled", flush=True)
loaded = torch._inductor.aoti_load_package(pkg)
print(variant, "loaded", flush=True)
y = loaded(x)
print(variant, "ran", tuple(y.shape), flush=True)
