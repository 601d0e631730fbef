"""The batch pipeline through Dagster, timed per asset, for ``benchmarks/performance.py``.

It runs exactly what ``anomaly-pipelines demo`` runs (ingest, one batch run over every customer,
export and report) in a throw-away Dagster instance and MLflow store under ``workdir``, and reads
each step's duration back from the Dagster event log, so the numbers are Dagster's own.
"""

from pathlib import Path
from typing import Any

import dagster as dg
import yaml


def pipeline_config(workdir: Path, customers: int, days: int, epochs: int | None = None) -> Path:
    """A pipeline YAML for ``customers`` x ``days`` of demo data, every output under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "source": {"kind": "synthetic", "synthetic": {"customers": customers, "days": days}},
        "mlflow": {
            "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
            "artifact_location": str(workdir / "mlflow-artifacts"),
        },
        "output": {
            "directory": str(workdir / "outputs"),
            "staging_directory": str(workdir / "staging"),
        },
        "explain": {"cache_dir": str(workdir / "explain-cache")},
    }
    if epochs is not None:
        config["lstm"] = {"epochs": epochs}
    path = workdir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def step_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Duration of each successful step of a run, from its STEP_SUCCESS events."""
    out: dict[str, float] = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS):
        event = entry.dagster_event
        if event is not None and event.step_key is not None:
            out[event.step_key] = event.event_specific_data.duration_ms / 1000.0
    return out


def run_batch_pipeline(
    customers: int, days: int, workdir: Path, epochs: int | None = None
) -> dict[str, Any]:
    """End-to-end seconds, per-asset seconds, and what came out."""
    from anomaly_pipelines.cli import run_demo

    config_path = pipeline_config(Path(workdir), customers, days, epochs)
    home = Path(workdir) / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        summary = run_demo(str(config_path), instance=instance, log_level="WARNING")
        assets: dict[str, float] = {}
        for run_id in summary.run_ids.values():
            assets.update(step_seconds(instance, run_id))
    return {
        "customers": len(summary.customers),
        "days": days,
        "seconds": summary.seconds,
        "anomalies": summary.anomalies,
        "incidents": summary.incidents,
        "assets": assets,
    }
