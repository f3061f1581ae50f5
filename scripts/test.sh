#!/usr/bin/env bash
# Runs the test suite (CPU; Triton kernels through TRITON_INTERPRET=1). Sets itself up.
#   bash scripts/test.sh               everything (what CI runs: .ci/run)
#   bash scripts/test.sh --fast        development selection: -m "not slow" (skips the long-T,
#                                      interpreter-heavy and multi-second oracle cases)
# Other arguments go to pytest, e.g. bash scripts/test.sh --fast tests/test_engine.py -k dense
# The tests run on every core (pytest-xdist, --dist worksteal; SF_TEST_WORKERS=N to choose,
# 0 for one process): on 2 cores the whole suite takes about 5 min of pytest instead of 11.
source "$(dirname "$0")/_venv.sh" test
args=(-n "${SF_TEST_WORKERS:-auto}" --dist worksteal)
for a in "$@"; do
  if [ "$a" = "--fast" ]; then args+=(-m "not slow"); else args+=("$a"); fi
done
exec "$PY" -m pytest -q "${args[@]}"
