"""Logging to MLflow: one training as one run, and the report as a run of its own.

One training call (one customer in a per-customer Dagster run, or thousands in a batch run) is
**one MLflow run** in the experiment ``config.mlflow.experiment``. The run holds the model's
settings as params (``<section>.<field>``, from the settings the model carries, not from
whatever configuration is loaded now), training metrics, ``training_summary.parquet``/``.csv``
(one row per customer), ``skipped.json``, the plots it was given, and the model: the fitted
model's directory (``core.model_files``) logged once as a pyfunc model (``core.serving``), which
every trained customer's new registered version points at (``core.registry.versions``).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric

from anomaly_pipelines.core import serving
from anomaly_pipelines.core.detector import FittedDetectors
from anomaly_pipelines.core.ids import customer_key
from anomaly_pipelines.core.registry.store import PROJECT, retry, safe_mapping, start_run
from anomaly_pipelines.core.registry.versions import VersionRequest
from anomaly_pipelines.core.spreadsheet import write_csv

if TYPE_CHECKING:
    from anomaly_pipelines.core.registry.versions import ModelRegistry

T = TypeVar("T")

MODEL_NAME = "anomaly_detectors"
SUMMARY_PARQUET = "training_summary.parquet"
SUMMARY_CSV = "training_summary.csv"
SKIPPED_JSON = "skipped.json"


@dataclass
class TrainingRecord:
    """What one ``log_training`` call created, for the caller's metadata."""

    run_id: str
    experiment_id: str
    model_versions: dict[str, str]  # customer_id -> version number (str)
    registered_names: dict[str, str]  # customer_id -> registered model name


def log_training(
    registry: ModelRegistry,
    fitted: FittedDetectors,
    *,
    run_name: str,
    plots: list[Path] | None = None,
    tags: dict[str, str] | None = None,
    training_seconds: float | None = None,
) -> TrainingRecord:
    """Log one training as one MLflow run and register a new version per trained customer.

    ``training_seconds`` (how long ``fit_detectors`` took) is logged when given; the fitted
    model does not know it.
    """
    started = time.perf_counter()
    experiment_id = registry.experiment_id()
    missing = [str(p) for p in plots or [] if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"log_training(): plot file(s) not found: {missing}")
    customers = [cid for fit in fitted.autoencoders for cid in fit.customer_ids]
    run_tags = {**safe_mapping(tags or {}, "tag"), "project": PROJECT}
    model_versions: dict[str, str] = {}
    # The run starts when training did, so its duration in the UI is the real cost.
    started_at = time.time() - training_seconds if training_seconds else None
    with start_run(experiment_id, run_name, run_tags, started_at) as run:
        run_id = run.info.run_id
        _log_curves(run_id, fitted)
        if fitted.settings is not None:
            params = safe_mapping(fitted.settings.flat(), "param")
            retry(lambda: mlflow.log_params(params), "log params")
        summary = fitted.training_summary()
        metrics = _training_metrics(fitted, summary, training_seconds)
        if 0 < len(customers) <= registry.per_customer_metrics_limit:
            metrics.update(_per_customer_metrics(summary))
        for chunk in _chunks(list(metrics.items()), 500):
            retry(lambda chunk=chunk: mlflow.log_metrics(dict(chunk)), "log metrics")
        with tempfile.TemporaryDirectory(prefix="anomaly-pipelines-run-") as tmp:
            _write_run_files(Path(tmp), fitted, summary)
            retry(lambda: mlflow.log_artifacts(tmp), "log artifacts")
        for plot in plots or []:
            retry(
                lambda plot=plot: mlflow.log_artifact(str(plot), artifact_path="plots"),
                "log plot",
            )
        if customers:
            info = retry(lambda: serving.log_model(fitted, MODEL_NAME), f"log {MODEL_NAME}")
            registering = time.perf_counter()
            model_versions = registry.register_versions(
                [VersionRequest(cid, info.model_uri, run_id, info.model_id) for cid in customers]
            )
            retry(
                lambda: mlflow.log_metric(
                    "registration_seconds", time.perf_counter() - registering
                ),
                "log metrics",
            )
        elapsed = time.perf_counter() - started
        retry(
            lambda: mlflow.log_metrics(
                {"registered_versions": len(model_versions), "logging_seconds": elapsed}
            ),
            "log metrics",
        )
    registered_names = {cid: registry.registered_name(cid) for cid in model_versions}
    return TrainingRecord(run_id, str(experiment_id), model_versions, registered_names)


def _log_curves(run_id: str, fitted: FittedDetectors) -> None:
    """Each stacked LSTM's loss per epoch as stepped metrics, so the MLflow UI draws the
    training curves (``epoch_loss``/``epoch_val_loss``; ``.../model_<i>`` when one training
    stacked several models)."""
    curves = [fit.history for fit in fitted.autoencoders if fit.history]
    now = int(time.time() * 1000)
    points = []
    for i, history in enumerate(curves):
        suffix = f"/model_{i}" if len(curves) > 1 else ""
        for epoch, (loss, val_loss) in enumerate(history, start=1):
            for key, value in ((f"epoch_loss{suffix}", loss), (f"epoch_val_loss{suffix}", val_loss)):
                if math.isfinite(value):
                    points.append(Metric(key, float(value), now, epoch))
    client = MlflowClient()
    for chunk in _chunks(points, 1000):
        retry(lambda chunk=chunk: client.log_batch(run_id, metrics=chunk), "log curves")


def log_report(
    registry: ModelRegistry, paths: list[Path], *, run_name: str, tags: dict[str, str] | None = None
) -> str:
    """Log report files as their own run next to the trainings; returns the run id."""
    experiment_id = registry.experiment_id()
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"log_report(): file(s) not found: {missing}")
    run_tags = {**safe_mapping(tags or {}, "tag"), "project": PROJECT, "kind": "report"}
    with start_run(experiment_id, run_name, run_tags) as run:
        for path in paths:
            retry(
                lambda path=path: mlflow.log_artifact(str(path), artifact_path="report"),
                "log report",
            )
        return run.info.run_id


def _finite(values: pd.Series) -> np.ndarray:
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return array[np.isfinite(array)]


def _training_metrics(
    fitted: FittedDetectors, summary: pd.DataFrame, training_seconds: float | None
) -> dict[str, float]:
    metrics: dict[str, float] = {
        "n_customers": float(len(fitted.calibrations)),
        "n_skipped": float(len(fitted.skipped)),
        "n_stacked_models": float(len(fitted.autoencoders)),
    }
    if training_seconds is not None:
        metrics["training_seconds"] = float(training_seconds)
    for column, name in (
        ("train_loss", "train_loss"),
        ("val_loss", "val_loss"),
        ("epochs", "epochs"),
    ):
        values = _finite(summary[column]) if column in summary else np.empty(0)
        if values.size:
            metrics[f"{name}_mean"] = float(values.mean())
            metrics[f"{name}_median"] = float(np.median(values))
    return metrics


def _per_customer_metrics(summary: pd.DataFrame) -> dict[str, float]:
    metrics = {}
    for row in summary.itertuples(index=False):
        key = customer_key(str(row.customer_id))
        for column in ("train_loss", "val_loss", "epochs", "lstm_threshold"):
            value = float(getattr(row, column))
            if math.isfinite(value):
                metrics[f"customers/{key}/{column}"] = value
    return metrics



def _write_run_files(directory: Path, fitted: FittedDetectors, summary: pd.DataFrame) -> None:
    (directory / SKIPPED_JSON).write_text(
        json.dumps(fitted.skipped, indent=1, sort_keys=True), encoding="utf-8"
    )
    if len(summary):
        summary.to_parquet(directory / SUMMARY_PARQUET, index=False)
        # For people (the parquet is for code): ids must not run as spreadsheet formulas.
        write_csv(summary, directory / SUMMARY_CSV)


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
