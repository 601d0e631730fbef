"""The main flow as one function call: ingest, every customer in one batch run, export, report.

It lives in the package, not in the command line, because three callers need the same flow: the
``anomaly-pipelines demo`` command, ``benchmarks/performance.py`` (which times it per asset) and
the tests. Each passes its own Dagster instance and configuration; nothing here parses
arguments or prints.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from anomaly_pipelines.core.files import atomic_write, atomic_write_text

INSTANCE_TEMPLATE = Path("configs") / "dagster.yaml"
# Used when the project's configs/ folder is not there (e.g. running from another directory).
FALLBACK_INSTANCE_YAML = "telemetry:\n  enabled: false\n"
# Dagster's documented run tags for one run over a partition range (what
# ``dg launch --partition-range`` sets); with single-run backfill policies the whole range is
# materialised in one process.
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass
class DemoSummary:
    """What the demo did and where everything is; printed by the CLI, asserted on in tests."""

    customers: list[str]
    scored_rows: int
    anomalies: int
    incidents: int
    export_paths: list[Path]
    report_paths: list[Path]
    plots_dir: Path
    dagster_home: Path
    mlflow_uri: str
    seconds: float
    run_ids: dict[str, str] = field(default_factory=dict)


def prepare_dagster_home(home: Path, template: Path = INSTANCE_TEMPLATE) -> Path:
    """Create ``home`` with the project's instance settings and point ``DAGSTER_HOME`` at it, so
    the demo's runs show up afterwards in ``dg dev``. An existing ``dagster.yaml`` is kept: the
    user may have edited it."""
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists():
        if template.is_file():
            atomic_write(target, lambda tmp: shutil.copyfile(template, tmp))
        else:
            atomic_write_text(target, FALLBACK_INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def step_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Duration of each successful step of a run, from its STEP_SUCCESS events: the benchmark
    reports Dagster's own numbers rather than timing around it."""
    out: dict[str, float] = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS):
        event = entry.dagster_event
        if event is not None and event.step_key is not None:
            out[event.step_key] = event.event_specific_data.duration_ms / 1000.0
    return out


def run_demo(
    config_file: str = "",
    overrides: dict[str, Any] | None = None,
    instance: dg.DagsterInstance | None = None,
    log_level: str = "INFO",
) -> DemoSummary:
    """Ingest, register customers, score every customer in ONE batch run, export and report.

    ``instance`` defaults to ``DagsterInstance.get()`` (``$DAGSTER_HOME``).
    """
    import pandas as pd

    from anomaly_pipelines.core.ids import customer_key
    from anomaly_pipelines.definitions import build_definitions
    from anomaly_pipelines.defs.assets.reporting import export_paths
    from anomaly_pipelines.defs.partitions import CUSTOMERS
    from anomaly_pipelines.defs.resources import PipelineSettings

    if instance is None:
        with dg.DagsterInstance.get() as local:
            return run_demo(config_file, overrides, local, log_level)
    started = time.perf_counter()
    defs = build_definitions(config_path=config_file, overrides=overrides)
    config = PipelineSettings.in_definitions(defs).config
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    run_ids: dict[str, str] = {}

    ingest = defs.resolve_job_def("ingest_job").execute_in_process(
        instance=instance, run_config=run_config
    )
    run_ids["ingest_job"] = ingest.run_id
    validated = ingest.output_for_node("validated_usage", "validated_usage")
    # Only this load's customers: partitions registered by earlier loads stay in the instance,
    # but a batch over them would only produce empty results.
    keys = {customer_key(c) for c in validated["customer_id"].astype(str).unique()}
    ordered = [k for k in instance.get_dynamic_partitions(CUSTOMERS) if k in keys]
    if not ordered:
        raise RuntimeError("the configured source has no valid usage rows; nothing to score")
    batch = defs.resolve_job_def("batch_job").execute_in_process(
        instance=instance,
        run_config=run_config,
        tags={PARTITION_RANGE_START_TAG: ordered[0], PARTITION_RANGE_END_TAG: ordered[-1]},
    )
    run_ids["batch_job"] = batch.run_id

    parquet_path, csv_path = export_paths(config)
    scores = pd.read_parquet(parquet_path)
    report_dir = Path(config.output.directory) / "report"
    explanations = batch.output_for_node("anomaly_explanations")
    return DemoSummary(
        customers=sorted(scores["customer_id"].astype(str).unique()),
        scored_rows=len(scores),
        anomalies=int(scores["is_anomaly"].astype(bool).sum()),
        incidents=len(explanations),
        export_paths=[parquet_path, csv_path],
        report_paths=sorted(report_dir.glob("*")),
        plots_dir=Path(config.output.directory) / "plots",
        dagster_home=Path(instance.root_directory) if instance.root_directory else Path(),
        mlflow_uri=config.mlflow.tracking_uri,
        seconds=time.perf_counter() - started,
        run_ids=run_ids,
    )
