"""Is the fp32 chunk kernels' state error moving, and is it the kernels' or their float32 inputs'? Fresh inputs
per trial, each run twice on the same inputs (bitwise equal unless there is a race), errors against the float64
recurrence of the raw gates and of the given float32 g and beta, the worst trial located by head and row.

    python scripts/device/chunk_fp32_probe.py [--trials 40]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))


def main() -> int:
    import test_gated_delta_rule as t

    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=40)
    args = p.parse_args()
    for T in (63, 65, 127, 1000):
        c = t.Case(T, 16, 32, 128, 128, torch.float32, "rand")
        errs, unequal, worst, given = [], 0, None, []
        for _ in range(args.trials):
            x = t.make(c, "cuda")
            o64, s64 = t.truth(x)
            o64g, s64g = t.truth(x, gates="given")
            runs = []
            for _ in range(2):
                s = x["state"].clone()
                o = t.run_chunk(x, False, s)
                runs.append((o, s))
            (o1, s1), (o2, s2) = runs
            unequal += int(not (torch.equal(o1, o2) and torch.equal(s1, s2)))
            e = (t.rel_rms(o1, o64), t.rel_rms(s1, s64))
            errs.append(e)
            given.append((t.rel_rms(o1, o64g), t.rel_rms(s1, s64g)))
            if worst is None or e[1] > worst[0][1]:
                worst = (e, (s1.double() - s64).abs()[0], s64.abs()[0], (o1.double() - o64).abs()[0])
        so = sorted(e[0] for e in errs)
        ss = sorted(e[1] for e in errs)
        print(f"T={T}: o median {so[len(so) // 2]:.2e} max {so[-1]:.2e}; state median "
              f"{ss[len(ss) // 2]:.2e} max {ss[-1]:.2e}; runs not bitwise equal: {unequal}/{args.trials}")
        go, gs = sorted(e[0] for e in given), sorted(e[1] for e in given)
        print(f"  against the float64 recurrence of the given float32 g, beta: o median {go[len(go) // 2]:.2e} "
              f"max {go[-1]:.2e}; state median {gs[len(gs) // 2]:.2e} max {gs[-1]:.2e}")
        (eo, es), ds, mag, do = worst
        per_head = ds.flatten(1).max(1).values  # [Hv]
        h = int(per_head.argmax())
        k_row, v_col = divmod(int(ds[h].argmax()), ds.shape[2])
        print(f"  worst trial: state err {es:.2e}, max abs {ds.max():.2e} at head {h} k {k_row} v {v_col} "
              f"(|state| there {mag[h, k_row, v_col]:.2e}, head max |state| {mag[h].max():.2e}); heads over "
              f"10x median: {int((per_head > 10 * per_head.median()).sum())}; o max abs err {do.max():.2e} "
              f"at token {int(do.amax((1, 2)).argmax())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
