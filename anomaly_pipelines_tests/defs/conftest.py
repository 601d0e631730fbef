"""Shared set-up for the Dagster-layer tests: a small pipeline configuration in a temp dir.

Everything a run writes (outputs, stored assets, MLflow store, staging, explanation cache)
goes under the test's directory, so tests never touch ``data/`` or ``.mlflow/`` of the checkout.
"""

from pathlib import Path
from typing import Any

from anomaly_pipelines.core.config import deep_merge
from anomaly_pipelines.defs.settings import write_isolated_config

# 5 customers x 200 days: the last two are quiet; with seed 3 the labelled incidents include a
# spike and drops that the detector flags at 2 epochs (checked against the labels, not hard-coded).
SMALL_DATA = {"customers": 5, "days": 200, "seed": 3, "start": "2024-01-01"}


def write_config(directory: Path, extra: dict[str, Any] | None = None) -> Path:
    """The small pipeline (2 epochs), every output into ``directory``; ``extra`` on top."""
    small = {"source": {"kind": "synthetic", "synthetic": dict(SMALL_DATA)}, "lstm": {"epochs": 2}}
    return write_isolated_config(directory, deep_merge(small, extra or {}))
