#!/usr/bin/env bash
# The test suite (CPU; GPU tests are marked `cuda` and skip without a GPU). Extra arguments go to pytest.
# Two pytest processes: Triton's interpreter (TRITON_INTERPRET=1, for the `interpret` tests that run our
# kernels on CPU tensors) must be chosen before any kernel is defined, and torch.export of our triton_ops
# needs the compiled kernels, so each group gets a process of its own. They run side by side (each is mostly
# one core; the interpreter group's report follows the other's) so that CI on two cores stays within 20 min.
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh" test
cd "$GDN_ROOT"
interp_log=$(mktemp)
trap 'rm -f "$interp_log"' EXIT
TRITON_INTERPRET=1 python -m pytest -q -m interpret -p no:cacheprovider "$@" >"$interp_log" 2>&1 &
interp=$!
status=0
python -m pytest -q -m "not interpret" "$@" || status=$?
rc=0
wait "$interp" || rc=$?
echo "--- tests marked interpret (TRITON_INTERPRET=1) ---"
cat "$interp_log"
[ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || status=$rc
exit "$status"
