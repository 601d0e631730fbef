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
    start: Any,
    results: Any,
) -> None:
    """Wait for the sibling process, then register one version per customer as fast as possible."""
    from anomaly_pipelines.core.config import MlflowConfig
    from anomaly_pipelines.core.registry import ModelRegistry

    registry = ModelRegistry(MlflowConfig(**mlflow_settings))
    registry.experiment_id()  # store ready (and the import paid for) before the race starts
    start.wait(timeout=120)
    try:
        versions = {
            cid: registry.register_version(
                cid, source=source, run_id=run_id, tags={"worker": "yes"}
            )
            for cid in customer_ids
        }
        results.put(("ok", versions))
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(("error", repr(exc)))
