#!/usr/bin/env bash
# First command of the README: install everything into .venv, then run the demo pipeline
# (synthetic data for ~20 customers over two years) against the project's local Dagster instance
# and MLflow store. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/anomaly-pipelines demo "$@"
