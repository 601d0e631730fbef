"""MLflow tracking and model registry for the fitted models, one module a job:

* ``store``: where the store is, opening it (WAL, a lock around its creation), retrying writes
  while SQLite is locked, the process-wide tracking URI, runs left behind by killed processes;
* ``versions``: ``ModelRegistry``: one registered model per customer, its versions and the
  ``champion`` alias, and the rule "look a few up directly, page through many" (``_lookup``);
* ``runs``: a training as one MLflow run (params, metrics, the model), and the report's run;
* ``champions``: the champions of many customers as one model for scoring, with a cache.

The model's own files are the model's business (``core.model_files``, ``core.serving``): MLflow
stores the directory it saves, and the registry only names, versions and aliases it.
"""

from anomaly_pipelines.core.registry.champions import NO_CHAMPION, clear_cache
from anomaly_pipelines.core.registry.runs import (
    MODEL_NAME,
    SKIPPED_JSON,
    SUMMARY_CSV,
    SUMMARY_PARQUET,
    TrainingRecord,
)
from anomaly_pipelines.core.registry.store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    ORPHANED_TAG,
    PROJECT,
    MlflowStore,
)
from anomaly_pipelines.core.registry.versions import ModelRegistry, VersionRequest

__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "MODEL_NAME",
    "NO_CHAMPION",
    "ORPHANED_TAG",
    "PROJECT",
    "SKIPPED_JSON",
    "SUMMARY_CSV",
    "SUMMARY_PARQUET",
    "MlflowStore",
    "ModelRegistry",
    "TrainingRecord",
    "VersionRequest",
    "clear_cache",
]
