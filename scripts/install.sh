#!/usr/bin/env bash
# Create .venv and install the project with the tested, pinned dependency set (constraints.txt).
# uv is used when it can be installed (much faster); plain pip is the fallback.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if .venv/bin/python -m pip install -q "uv==0.13.8" 2>/dev/null || .venv/bin/python -m pip install -q uv; then
  .venv/bin/uv pip install --python .venv/bin/python -q -c constraints.txt -e ".[dev]"
else
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
fi
