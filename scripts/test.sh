#!/usr/bin/env bash
# Runs the whole test suite (CPU; Triton kernels through TRITON_INTERPRET=1). Sets itself up.
source "$(dirname "$0")/_venv.sh" test
exec "$PY" -m pytest -q "$@"
