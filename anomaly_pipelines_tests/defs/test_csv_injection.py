"""Spreadsheet formula injection: ids written to a CSV that people open never start a formula.

The scores export (written by the real ``scores_export`` asset) and the MLflow artifact
``training_summary.csv`` (logged by a real training into a real SQLite store) are read back
as text; the Parquet copies keep the ids exactly.
"""

from __future__ import annotations

import csv
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from anomaly_pipelines import detect
from anomaly_pipelines.core.api import coerce
from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.detector import fit_detectors
from anomaly_pipelines.core.registry import SUMMARY_CSV, SUMMARY_PARQUET, ModelRegistry
from anomaly_pipelines.core.series import regularize
from anomaly_pipelines.core.spreadsheet import FORMULA_PREFIXES, spreadsheet_safe
from anomaly_pipelines.defs.assets.reporting import export_paths, scores_export
from anomaly_pipelines.defs.resources import PipelineSettings
from anomaly_pipelines_tests.defs.conftest import write_config

HOSTILE = [
    '=HYPERLINK("http://evil.example","click")',
    "+cmd|' /C calc'!A0",
    "@SUM(1+1)",
    "-2+3",
    "\tTAB",
    "\rCR",
]


def _cells(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [cell for row in csv.reader(handle) for cell in row]


def _assert_no_formula(path: Path) -> None:
    for cell in _cells(path):
        assert not cell.startswith(FORMULA_PREFIXES), (path.name, cell)


def test_spreadsheet_safe_prefixes_text_only() -> None:
    frame = pd.DataFrame({"customer_id": [*HOSTILE, "plain"], "cost": [-1.5] * 7})
    safe = spreadsheet_safe(frame)
    assert safe["customer_id"].tolist() == [*("'" + h for h in HOSTILE), "plain"]
    assert safe["cost"].tolist() == [-1.5] * 7  # numbers are numbers, never prefixed
    assert frame["customer_id"].tolist() == [*HOSTILE, "plain"]  # the input is not changed


def test_scores_export_csv_is_neutralised_and_parquet_untouched(tmp_path: Path) -> None:
    days = pd.date_range("2024-01-01", periods=10, freq="D", tz="UTC")  # short: fast, unscored
    usage = pd.concat(
        [pd.DataFrame({"customer_id": cid, "timestamp": days, "cost": 1.0}) for cid in HOSTILE]
    )
    scores = detect(usage)
    settings = PipelineSettings.from_file(str(write_config(tmp_path)))
    scores_export(context=dg.build_asset_context(), anomaly_scores=scores, pipeline_settings=settings)
    parquet_path, csv_path = export_paths(settings.config)
    _assert_no_formula(csv_path)
    assert set(pd.read_parquet(parquet_path)["customer_id"]) == set(HOSTILE)
    with csv_path.open(newline="", encoding="utf-8") as handle:
        shown = {row["customer_id"] for row in csv.DictReader(handle)}
    assert shown == {"'" + h for h in HOSTILE}


def test_training_summary_csv_artifact_is_neutralised(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    days = pd.date_range("2024-01-01", periods=80, freq="D", tz="UTC")
    usage = pd.concat(
        [
            pd.DataFrame({"customer_id": cid, "timestamp": days, "cost": 100 + rng.normal(0, 3, 80)})
            for cid in HOSTILE[:3]
        ]
    )
    config = PipelineConfig().merged(
        {
            "lstm": {"epochs": 1},
            "mlflow": {
                "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "artifact_location": str(tmp_path / "artifacts"),
            },
        }
    )
    fitted = fit_detectors(regularize(coerce(usage), config.preprocess), config)
    registry = ModelRegistry(config.mlflow)
    record = registry.log_training(fitted, run_name="hostile-ids")
    client = MlflowClient(tracking_uri=registry.tracking_uri)
    out = tmp_path / "download"
    out.mkdir()
    summary_csv = Path(client.download_artifacts(record.run_id, SUMMARY_CSV, str(out)))
    summary_parquet = Path(client.download_artifacts(record.run_id, SUMMARY_PARQUET, str(out)))
    _assert_no_formula(summary_csv)
    assert set(pd.read_parquet(summary_parquet)["customer_id"]) == set(HOSTILE[:3])
