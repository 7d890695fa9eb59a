#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the package with its pinned
# dependencies, lints, type-checks and runs pytest. `.ci/run` calls this.
#   bash tools/run_tests.sh [PYTEST_ARGS...]          # everything (CI)
#   bash tools/run_tests.sh --quick [PYTEST_ARGS...]  # installed already: lint, types and
#                                                     # pytest -m "not slow" (a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi
if [ "$quick" = 0 ]; then
  python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
fi
python -m ruff check tflm_patch tools tests
python -m mypy tflm_patch tools
if [ "$quick" = 1 ]; then
  python -m pytest -m "not slow" "$@"
else
  python -m pytest "$@"
fi
