#!/usr/bin/env bash
# The main job on the bundled default model: export it to model.pte, then generate from a prompt.
# Usage: bash scripts/demo.sh ["prompt"]
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh" serve
cd "$GDN_ROOT"
gdn-export model.pte
gdn-run --model model.pte --prompt "${1:-The borrow checker}" --max-new-tokens 32 --stats
