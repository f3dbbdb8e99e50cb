#!/usr/bin/env bash
# The test suite (CPU; GPU tests are marked `cuda` and skip without a GPU). Extra arguments go to pytest; a
# marker expression (`-m "not slow"`, the fast loop) is combined with each group's own.
# Two pytest processes: Triton's interpreter (TRITON_INTERPRET=1, for the `interpret` tests that run our
# kernels on CPU tensors) must be chosen before any kernel is defined, and torch.export of our triton_ops
# needs the compiled kernels, so each group gets a process of its own. They run side by side (the
# interpreter group's report follows the other's).
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh" test
cd "$GDN_ROOT"
marks="" args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -m) marks="$2"; shift 2 ;;
    -m*) marks="${1#-m}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
only() { echo "$1${marks:+ and ($marks)}"; }
interp_log=$(mktemp)
trap 'rm -f "$interp_log"' EXIT
TRITON_INTERPRET=1 python -m pytest -q -m "$(only interpret)" -p no:cacheprovider "${args[@]}" >"$interp_log" 2>&1 &
interp=$!
status=0
python -m pytest -q -m "$(only "not interpret")" "${args[@]}" || status=$?
rc=0
wait "$interp" || rc=$?
echo "--- tests marked interpret (TRITON_INTERPRET=1) ---"
cat "$interp_log"
[ "$status" -eq 5 ] && status=0  # no test selected in this group
[ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || status=$rc
exit "$status"
