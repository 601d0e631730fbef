"""The executor every job runs on, chosen by ``orchestration.executor``.

The laptop default stays in-process on SQLite; ``celery`` sends each step to a celery worker
(``dagster-celery``, installed with the ``deploy`` extra); ``k8s`` starts a pod per step
(``dagster-k8s``, installed in the cluster's image only: it is not run anywhere here). The celery settings live in one YAML
file (``orchestration.celery_config``) that the workers are started with too, so the run and
the workers cannot disagree on the broker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from anomaly_pipelines.core.config import OrchestrationConfig


def celery_settings(path: str | Path) -> dict[str, Any]:
    """The ``execution: config:`` block of a celery YAML file (what ``dagster-celery worker
    start -y`` reads), or an error that names the file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"orchestration.celery_config: {file.resolve()} does not exist (the celery executor's "
            "settings; see configs/deploy/celery.yaml)"
        )
    parsed = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    settings = (parsed.get("execution") or {}).get("config")
    if not isinstance(settings, dict):
        raise ValueError(f"{file}: no `execution: config:` block with the celery settings")
    return settings


def run_executor(orchestration: OrchestrationConfig) -> dg.ExecutorDefinition:
    """The configured executor; dagster-celery is imported only when it is the one chosen."""
    if orchestration.executor == "in_process":
        return dg.in_process_executor
    if orchestration.executor == "multiprocess":
        return dg.multiprocess_executor.configured(
            {"max_concurrent": orchestration.max_concurrent_steps}
        )
    if orchestration.executor == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as exc:
            raise ImportError(
                "orchestration.executor is 'k8s' but dagster-k8s is not installed: install "
                "dagster-k8s (the same 0.x release as dagster-celery) in the image"
            ) from exc
        # Pod settings come from the Helm chart (runK8sConfig); how many cohort pods run at
        # once is the instance's pool limit (concurrency.pools), not a per-run number.
        return k8s_job_executor
    try:
        from dagster_celery import celery_executor
    except ImportError as exc:  # pragma: no cover - the deploy extra is part of dev and CI
        raise ImportError(
            "orchestration.executor is 'celery' but dagster-celery is not installed: "
            "pip install 'anomaly_pipelines[deploy]'"
        ) from exc
    return celery_executor.configured(celery_settings(orchestration.celery_config))
