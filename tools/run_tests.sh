#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the package with its pinned
# dependencies, lints, type-checks and runs pytest. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
python -m ruff check tflm_patch tools tests
python -m mypy tflm_patch
python -m pytest "$@"
