"""Does an AOTInductor-compiled chunked prefill depend on the example length it was exported with?
Compile the conv -> chunk module of tests/test_gdn_export.py (dynamic T) from two example lengths and
compare with eager at several T; write the generated C++ to OUT."""

import os
import sys
from pathlib import Path

import torch
from torch.export import Dim, export

sys.path.insert(0, "tests")
from aoti_util import compile_and_load  # noqa: E402
from test_gdn_export import GDNCore, inputs  # noqa: E402

out = Path(os.environ.get("OUT", "/tmp"))
torch.manual_seed(0)
for T0 in (2, 100):
    m = GDNCore(2, 4, 48, 48, 4, torch.float32).cuda()
    eager = GDNCore(2, 4, 48, 48, 4, torch.float32).cuda()
    eager.load_state_dict(m.state_dict())
    t = Dim("T", min=2, max=1024)
    ep = export(m, inputs(m, T0, True, torch.float32, "cuda"), dynamic_shapes=({1: t}, {1: t}, {1: t}, None), strict=True)
    compiled, src = compile_and_load(ep)
    (out / f"chunk_T0_{T0}.cpp").write_text(src)
    for T in (21, 64, 65, 100, 300):
        args = inputs(m, T, True, torch.float32, "cuda")
        want = eager(*args)
        got = compiled(*args)
        got = got[0] if isinstance(got, (list, tuple)) else got
        err = (got - want).abs().max().item()
        print(f"example T0={T0}: T={T} max |diff| {err:.2e} {'OK' if err < 1e-3 else 'WRONG'}", flush=True)
