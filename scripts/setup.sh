#!/usr/bin/env bash
# Creates .venv and installs crystal-search with every extra the tests use.
# Idempotent: reinstalls only when setup.py changed. Used by the README's commands and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.crystal_search_installed
want=$(cat setup.py pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned: the CPU wheel of 2.13.0 lies on the project's machines;
  # an unpinned torch pulls a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[teacher,meam,test]"
  echo "$want" > "$stamp"
fi
