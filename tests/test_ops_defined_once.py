"""The torch.ops.gdn ops are defined once per process, also when the repository root is on sys.path
(`python -m pytest`, `PYTHONPATH=.`) and something imports the top-level `kernels` — transformers does, while
it looks for Hugging Face's package of that name. A second definition made torch destroy the first, and the
op handles taken from it dangled: exports crashed at random (vector::reserve, bad_alloc, segfaults)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import torch._library.custom_ops as custom_ops
import gdn.kernels
first = {k: v for k, v in custom_ops.OPDEF_TO_LIB.items() if k.startswith("gdn::")}
print("defined:", sorted(first))
import transformers.activations  # probes for the `kernels` package by importing it
import kernels
try:
    import kernels.causal_conv1d.op
    print("second copy imported")
except ImportError as e:
    print("refused:", e)
again = sorted(k for k, v in first.items() if custom_ops.OPDEF_TO_LIB[k] is not v)
print("redefined:", again)
"""


def test_ops_are_not_redefined_by_a_top_level_kernels_import():
    # `python -c` puts the working directory (the repository root) first on sys.path
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "defined: ['gdn::causal_conv1d', 'gdn::chunk_gated_delta_rule', 'gdn::conv_recurrent_gated_delta_rule', " \
           "'gdn::decode_attention', 'gdn::gated_norm_gemv', 'gdn::gemm', " \
           "'gdn::gemv', 'gdn::moe_shared', 'gdn::norm_gemm', 'gdn::norm_gemv', 'gdn::norm_qgemm', " \
           "'gdn::norm_qgemv', 'gdn::prefill_attention', 'gdn::qgemm', 'gdn::qgemv', 'gdn::qmoe_shared', " \
           "'gdn::recurrent_gated_delta_rule']" in lines, out.stdout
    assert "redefined: []" in lines, out.stdout
    assert any(line.startswith("refused: kernels.") and "import gdn.kernels instead" in line for line in lines), out.stdout
