# Sourced by the quickstart scripts: create or reuse .venv/ at the repository root and install the
# pinned stack (pyproject.toml) into it, again only when pyproject.toml or the extras changed.
# Usage: source scripts/venv.sh [EXTRAS]     e.g. `source scripts/venv.sh test`
set -euo pipefail
GDN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GDN_VENV="$GDN_ROOT/.venv"
_extras=${1:-}
_python=""
for candidate in "${PYTHON:-}" python3.12 python3.11 python3; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 \
     && "$candidate" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; then
    _python=$candidate
    break
  fi
done
if [ -z "$_python" ]; then
  echo "error: gdn needs Python 3.11 or 3.12 (set PYTHON=/path/to/python)" >&2
  exit 2
fi
if [ ! -x "$GDN_VENV/bin/python" ]; then
  echo "creating $GDN_VENV with $("$_python" --version)"
  "$_python" -m venv "$GDN_VENV"
fi
_want="$(sha256sum "$GDN_ROOT/pyproject.toml" | cut -c1-16) [$_extras]"
if [ "$(cat "$GDN_VENV/.gdn-installed" 2>/dev/null)" != "$_want" ]; then
  echo "installing the pinned stack into $GDN_VENV (torch, triton, executorch: a few GB the first time)"
  "$GDN_VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$GDN_ROOT${_extras:+[$_extras]}"
  echo "$_want" > "$GDN_VENV/.gdn-installed"
fi
export PATH="$GDN_VENV/bin:$PATH"
