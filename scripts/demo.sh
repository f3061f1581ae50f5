#!/usr/bin/env bash
# The main job: a real demonstration of semiring_flash on CPU. Sets itself up.
source "$(dirname "$0")/_venv.sh" "demo,test"
exec "$PY" examples/gene_structure.py "$@"
