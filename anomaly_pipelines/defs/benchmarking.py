"""The batch pipeline through Dagster, timed per asset, for ``benchmarks/performance.py``.

It runs exactly what ``anomaly-pipelines demo`` runs (ingest, one batch run over every customer,
export and report) in a throw-away Dagster instance and MLflow store under ``workdir``, and reads
each step's duration back from the Dagster event log, so the numbers are Dagster's own.
"""

from pathlib import Path
from typing import Any

import dagster as dg

from anomaly_pipelines.defs.settings import write_isolated_config


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

    overrides: dict[str, Any] = {"source": {"kind": "synthetic", "synthetic": {"customers": customers, "days": days}}}
    if epochs is not None:
        overrides["lstm"] = {"epochs": epochs}
    config_path = write_isolated_config(Path(workdir), overrides)
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
