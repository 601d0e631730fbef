"""Child-process side of the registry concurrency test.

Lives in its own module so a spawned process imports only the registry (no pytest, no
TensorFlow): the processes then reach the SQLite store at nearly the same moment.
"""

from __future__ import annotations

from typing import Any


def register_many(
    mlflow_settings: dict[str, Any],
    customer_ids: list[str],
    source: str,
    run_id: str,
    paged: bool,
    start: Any,
    results: Any,
) -> None:
    """Wait for the sibling process, then register one version per customer in one batch, the
    way ``log_training`` does."""
    from anomaly_pipelines.core.config import MlflowConfig
    from anomaly_pipelines.core.registry import ModelRegistry, VersionRequest

    registry = ModelRegistry(MlflowConfig(**mlflow_settings))
    if paged:  # read models and aliases through the listing, as batches of >50 customers do
        registry.direct_lookup_limit = 0
        registry.page_size = 7
    registry.experiment_id()  # store ready (and the import paid for) before the race starts
    start.wait(timeout=120)
    try:
        requests = [
            VersionRequest(cid, source=source, run_id=run_id, tags={"worker": "yes"})
            for cid in customer_ids
        ]
        versions = registry.register_versions(requests)
        results.put(("ok", versions))
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(("error", repr(exc)))


def open_new_store(mlflow_settings: dict[str, Any], start: Any, results: Any) -> None:
    """Wait for the sibling process, then use a store nobody has created yet (the first step of
    every training), and report how it went."""
    from anomaly_pipelines.core.config import MlflowConfig
    from anomaly_pipelines.core.registry import ModelRegistry

    registry = ModelRegistry(MlflowConfig(**mlflow_settings))
    start.wait(timeout=120)
    try:
        results.put(("ok", registry.experiment_id()))
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(("error", repr(exc)))


def train_and_register(mlflow_settings: dict[str, Any], days: int) -> None:
    """A batch's training half in a process of its own, announcing each phase on stdout so the
    parent can kill it at a chosen point: ``fitting``, ``logging``, ``done``."""
    import numpy as np
    import pandas as pd

    from anomaly_pipelines.core.api import coerce
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors
    from anomaly_pipelines.core.registry import ModelRegistry
    from anomaly_pipelines.core.series import regularize

    config = PipelineConfig().merged({"lstm": {"epochs": 1}, "mlflow": mlflow_settings})
    registry = ModelRegistry(config.mlflow)
    registry.experiment_id()
    print("fitting", flush=True)
    fitted = fit_detectors(regularize(coerce(kill_test_usage(np, pd, days)), config.preprocess), config)
    print("logging", flush=True)
    registry.log_training(fitted, run_name="killable")
    print("done", flush=True)


def kill_test_usage(np: Any, pd: Any, days: int) -> Any:
    """Three customers' daily cost, the same in the child and in the parent's re-run."""
    rng = np.random.default_rng(11)
    stamps = pd.date_range("2024-01-01", periods=days, freq="D", tz="UTC")
    return pd.concat(
        [
            pd.DataFrame({"customer_id": f"k-{i}", "timestamp": stamps, "cost": 100 + rng.normal(0, 3, days)})
            for i in range(3)
        ]
    )


if __name__ == "__main__":  # python -m anomaly_pipelines_tests.core.registry_worker '<json>' <days>
    import json
    import sys

    train_and_register(json.loads(sys.argv[1]), int(sys.argv[2]))
