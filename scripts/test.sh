#!/usr/bin/env bash
# The whole test suite from a fresh clone: set-up, lint, format check, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export JAX_PLATFORMS=cpu
ruff check .
ruff format --check .
python -m pytest -q "$@"
