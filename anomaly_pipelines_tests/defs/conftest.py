"""Shared set-up for the Dagster-layer tests: a small pipeline configuration in a temp dir.

Everything a run writes (outputs, stored assets, MLflow store, staging, explanation cache)
goes under the test's directory, so tests never touch ``data/`` or ``.mlflow/`` of the checkout.
"""

from pathlib import Path
from typing import Any

import yaml

# 5 customers x 200 days: the last two are quiet; with seed 3 the labelled incidents include a
# spike and drops that the detector flags at 2 epochs (checked against the labels, not hard-coded).
SMALL_DATA = {"customers": 5, "days": 200, "seed": 3, "start": "2024-01-01"}


def write_config(directory: Path, extra: dict[str, Any] | None = None) -> Path:
    """A pipeline YAML pointing every output into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "source": {"kind": "synthetic", "synthetic": dict(SMALL_DATA)},
        "lstm": {"epochs": 2},
        "mlflow": {
            "tracking_uri": f"sqlite:///{directory / 'mlflow.db'}",
            "artifact_location": str(directory / "mlflow-artifacts"),
        },
        "output": {
            "directory": str(directory / "outputs"),
            "staging_directory": str(directory / "staging"),
        },
        "explain": {"cache_dir": str(directory / "explain-cache")},
    }
    for section, values in (extra or {}).items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path
