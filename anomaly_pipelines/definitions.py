"""The code location: every asset, check, job, schedule, sensor and resource of the project.

Loaded by ``dg dev`` / ``dg check defs`` / ``dg launch`` (``[tool.dg.project]`` in pyproject)
and by ``dagster dev -w workspace.yaml``. Nothing here imports TensorFlow, MLflow or
google-genai; they load inside the runs that need them, so loading stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from anomaly_pipelines.defs import automation, checks, operations_checks, run_health, sensors
from anomaly_pipelines.defs.assets import (
    alerts,
    drift,
    ingest,
    reporting,
    scoring,
    series,
    training,
)
from anomaly_pipelines.defs.cohorts import COHORT_STORAGE, cohort_batch_job
from anomaly_pipelines.defs.executors import run_executor
from anomaly_pipelines.defs.io_managers import PartitionedStorageIOManager
from anomaly_pipelines.defs.jobs import (
    batch_job,
    customer_job,
    daily_scoring_job,
    drift_job,
    ingest_job,
    report_job,
)
from anomaly_pipelines.defs.resources import (
    ExplainerResource,
    PipelineSettings,
    gemini_resource,
    mlflow_registry_resource,
)
from anomaly_pipelines.defs.schedules import daily_scoring_schedule, ingest_schedule


def build_definitions(
    config_path: str = "", overrides: dict[str, Any] | None = None
) -> dg.Definitions:
    """All definitions, built from ONE reading of the configuration: ``config_path`` (empty:
    ``$ANOMALY_PIPELINES_CONFIG`` or ``configs/pipeline.yaml``) plus ``overrides``.

    Everything that is part of the code location (the daily partitions, the schedule, the
    executor, the alert lookback, where assets are stored) and everything a run reads (the
    ``pipeline_settings`` resource) comes from that one reading, so a configuration passed here
    is honoured whole. Tests and the demo use this to point outputs, the MLflow store and the
    data size somewhere else."""
    settings = PipelineSettings.from_file(config_path, overrides)
    config = settings.config
    storage = Path(config.output.directory) / "storage"
    orchestration = config.orchestration
    return dg.Definitions(
        assets=[
            *dg.load_assets_from_modules(
                [ingest, series, training, scoring, reporting, alerts, drift]
            ),
            ingest.daily_usage_asset(config),
            scoring.daily_scores_asset(config),
            alerts.daily_alerts_asset(config),
            # A spec, not computed by a run, so load_assets_from_modules does not collect it.
            drift.customer_drift,
        ],
        asset_checks=dg.load_asset_checks_from_modules([checks, operations_checks]),
        jobs=[
            ingest_job,
            customer_job,
            batch_job,
            cohort_batch_job(orchestration),
            report_job,
            daily_scoring_job,
            drift_job,
        ],
        schedules=[ingest_schedule(orchestration), daily_scoring_schedule(orchestration)],
        sensors=[
            sensors.daily_files_sensor,
            automation.customer_automation_sensor,
            automation.drift_automation_sensor,
            run_health.dead_training_runs_sensor,
        ],
        resources={
            "pipeline_settings": settings,
            "mlflow_registry": mlflow_registry_resource(),
            "explainer": ExplainerResource(gemini=gemini_resource()),
            "io_manager": PartitionedStorageIOManager(base_dir=str(storage)),
            # What the cohort steps hand each other (each cohort's rows, its summary): files,
            # so a celery or Kubernetes worker can read them (shared storage on a cluster).
            COHORT_STORAGE: dg.FilesystemIOManager(base_dir=str(storage.parent / "steps")),
        },
        executor=run_executor(orchestration),
    )


defs = build_definitions()
