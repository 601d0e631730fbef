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
# Compile the installed modules once, as pip does by default (uv does not): without bytecode on
# disk every new process (a Dagster run, a test worker) compiles TensorFlow and the rest from
# source again whenever bytecode writing is off, about 6 s of each import of TensorFlow.
# Some third-party files are test data that do not compile; that is expected.
.venv/bin/python -m compileall -q -j 0 .venv/lib/python*/site-packages > /dev/null 2>&1 || true
