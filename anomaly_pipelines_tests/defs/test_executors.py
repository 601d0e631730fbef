"""The executor chosen by ``orchestration.executor`` and the cohort job's shape (no services
needed: the deploy tests run them against real workers)."""

import importlib.util
from pathlib import Path

import dagster as dg
import pytest
import yaml

from anomaly_pipelines.core.config import OrchestrationConfig
from anomaly_pipelines.defs.cohorts import TRAINING_POOL, cohort_batch_job, cohorts
from anomaly_pipelines.defs.executors import celery_settings, run_executor

ROOT = Path(__file__).resolve().parents[2]
CELERY_YAML = ROOT / "configs" / "deploy" / "celery.yaml"


def test_the_laptop_default_stays_in_process() -> None:
    assert OrchestrationConfig().executor == "in_process"
    assert run_executor(OrchestrationConfig()).name == "in_process"
    assert run_executor(OrchestrationConfig(executor="multiprocess")).name == "multiprocess"


def test_celery_reads_the_file_the_workers_are_started_with() -> None:
    executor = run_executor(OrchestrationConfig(executor="celery", celery_config=str(CELERY_YAML)))
    assert executor.name == "celery"
    settings = celery_settings(CELERY_YAML)
    # Connection strings only through the environment: no password in the file.
    assert settings["broker"] == {"env": "ANOMALY_PIPELINES_CELERY_BROKER"}
    assert settings["backend"] == {"env": "ANOMALY_PIPELINES_CELERY_BACKEND"}
    # What makes a killed worker's step run again elsewhere.
    assert settings["config_source"]["task_acks_late"] is True
    assert settings["config_source"]["task_reject_on_worker_lost"] is True


def test_a_missing_or_empty_celery_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="celery_config"):
        run_executor(OrchestrationConfig(executor="celery", celery_config=str(tmp_path / "x.yaml")))
    empty = tmp_path / "empty.yaml"
    empty.write_text(yaml.safe_dump({"execution": {}}))
    with pytest.raises(ValueError, match="execution: config:"):
        celery_settings(empty)


def test_k8s_needs_dagster_k8s() -> None:
    config = OrchestrationConfig(executor="k8s")
    if importlib.util.find_spec("dagster_k8s") is None:
        with pytest.raises(ImportError, match="dagster-k8s"):
            run_executor(config)
    else:  # pragma: no cover - dagster-k8s is installed in the cluster's image only
        assert run_executor(config).name == "k8s"


def test_cohorts_are_sorted_consecutive_and_stable() -> None:
    ids = ["c", "a", "e", "b", "d", "a"]
    assert cohorts(ids, 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert cohorts(list(reversed(ids)), 2) == cohorts(ids, 2)
    assert cohorts(ids, 10) == [["a", "b", "c", "d", "e"]]
    assert cohorts([], 3) == []


def test_cohort_steps_are_retried_and_share_the_training_pool() -> None:
    job = cohort_batch_job(OrchestrationConfig(step_retries=3, step_retry_delay=0.5))
    policy = job.op_retry_policy
    assert policy is not None and policy.max_retries == 3 and policy.delay == 0.5
    assert policy.backoff == dg.Backoff.EXPONENTIAL
    assert job.graph.node_named("train_cohort").definition.pool == TRAINING_POOL
    assert job.tags["anomaly_pipelines/trains"] == "true"


def test_the_code_location_uses_the_configured_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomaly_pipelines.definitions import build_definitions

    config = tmp_path / "pipeline.yaml"
    config.write_text(
        yaml.safe_dump(
            {"orchestration": {"executor": "celery", "celery_config": str(CELERY_YAML)}}
        )
    )
    monkeypatch.setenv("ANOMALY_PIPELINES_CONFIG", str(config))
    defs = build_definitions()
    for name in ("cohort_batch_job", "batch_job", "daily_scoring_job"):
        assert defs.resolve_job_def(name).executor_def.name == "celery", name
