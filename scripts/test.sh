#!/usr/bin/env bash
# The test suite (CPU; GPU tests are marked `cuda` and skip without a GPU). Extra arguments go to pytest.
# Two pytest processes: Triton's interpreter (TRITON_INTERPRET=1, for the `interpret` tests that run our
# kernels on CPU tensors) must be chosen before any kernel is defined, and torch.export of our triton_ops
# needs the compiled kernels, so each group gets a process of its own.
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh" test
cd "$GDN_ROOT"
status=0
python -m pytest -q -m "not interpret" "$@" || status=$?
TRITON_INTERPRET=1 python -m pytest -q -m interpret "$@" || { rc=$?; [ "$rc" -eq 5 ] || status=$rc; }
exit "$status"
