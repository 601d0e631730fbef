"""The code location: every asset, check, job, schedule, sensor and resource of the project.

Loaded by ``dg dev`` / ``dg check defs`` / ``dg launch`` (``[tool.dg.project]`` in pyproject)
and by ``dagster dev -w workspace.yaml``. Nothing here imports TensorFlow, MLflow or
google-genai; they load inside the runs that need them, so loading stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from anomaly_pipelines.defs import checks, operations_checks, run_health, sensors
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
from anomaly_pipelines.defs.schedules import daily_scoring_schedule
from anomaly_pipelines.defs.settings import definition_config


def build_definitions(
    config_path: str = "", overrides: dict[str, Any] | None = None
) -> dg.Definitions:
    """All definitions, with the pipeline settings bound to ``config_path`` and ``overrides``
    (empty: ``$ANOMALY_PIPELINES_CONFIG`` or ``configs/pipeline.yaml``). Tests and the demo use
    this to point one run's outputs, MLflow store and data size somewhere else."""
    settings = PipelineSettings(config_path=config_path, overrides=overrides or {})
    # Storage follows the output directory of the configuration the definitions are built with.
    storage = Path(settings.load().output.directory) / "storage"
    orchestration = definition_config().orchestration
    return dg.Definitions(
        assets=dg.load_assets_from_modules(
            [ingest, series, training, scoring, reporting, alerts, drift]
        ),
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
        schedules=[daily_scoring_schedule],
        sensors=[
            sensors.daily_files_sensor,
            sensors.retrain_sensor,
            sensors.new_customer_sensor,
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
