# Shared set-up: a local virtual environment with torch pinned, then the project with the given extras.
# Usage: source scripts/_venv.sh EXTRAS
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${SF_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.sf-installed-$1-$(cat pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # Pin torch first, so that the project's open `torch>=2.1` keeps this version. Which build comes
  # (CPU or CUDA) is the package index's choice: set PIP_INDEX_URL to a CPU wheel index for the CPU build.
  "$PY" -m pip install -q "torch==${SF_TORCH_VERSION:-2.13.0}"
  "$PY" -m pip install -q -e ".[$1]"
  touch "$stamp"
fi
