#!/usr/bin/env bash
# The test suite (CPU; GPU tests are marked `cuda` and skip without a GPU). Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh" test
cd "$GDN_ROOT"
python -m pytest -q "$@"
