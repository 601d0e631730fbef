"""The deployment of configs/deploy/ against real services: Dagster on PostgreSQL, the celery
executor with two real workers on Redis, and an MLflow tracking server on PostgreSQL.

One module-wide set-up (server, instance, workers) serves these checks, because starting them
costs more than the runs:

* a batch of 12 customers in two cohort steps runs on the two workers, one worker's pool
  process is killed with SIGKILL while it trains, and the run still succeeds with exactly one
  registered version per customer and the same scores as the same job in-process on SQLite;
* two runs training different customers at the same time (one cohort each, one per worker)
  against the tracking server: every version registered, every champion the version its own
  run registered;
* a cohort step whose MLflow tracking server does not answer yet fails inside the step, is
  retried by the job's ``RetryPolicy`` once the server's address answers, and the run succeeds
  with exactly one registered version per customer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from anomaly_pipelines_tests.defs.conftest import write_config
from anomaly_pipelines_tests.deploy.services import (
    deployment,
    launch,
    mlflow_server,
    port_forward,
    postgres_user,
    redis_available,
    start_workers,
    wait_for_workers,
)
from anomaly_pipelines_tests.loopback import free_port

JOB = "cohort_batch_job"
CUSTOMERS = [f"customer-{i:03d}" for i in range(1, 28)]
DATA = {"customers": len(CUSTOMERS), "days": 200, "seed": 3, "start": "2024-01-01"}
BATCH = CUSTOMERS[:12]  # two cohorts of 6, one per worker
LATE = CUSTOMERS[24:27]  # one cohort, trained while its tracking server is still down
RUN_TIMEOUT = 900
# The cohort job's RetryPolicy, short for the tests: retry n waits (2**n - 1) * 2 s +- 2 s.
STEP_RETRIES = 3
STEP_RETRY_DELAY = 2.0
# MLflow's HTTP client retries a refused connection itself, by default 7 times over about four
# minutes, before the step sees an error. Two retries without backoff (MLflow's own settings,
# read by every worker) make an outage longer than the client's patience quick to reach in a test.
MLFLOW_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}


def plan(customers: list[str], cohort_size: int) -> dict[str, Any]:
    return {
        "ops": {"plan_cohorts": {"config": {"customers": customers, "cohort_size": cohort_size}}}
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    user = postgres_user()
    redis_available()
    workdir = tmp_path_factory.mktemp("cluster")
    with contextlib.ExitStack() as stack:
        config = workdir / "deploy" / "pipeline.yaml"
        deploy = stack.enter_context(deployment(user, workdir, config))
        deploy.env.update(MLFLOW_CLIENT)
        # Workers start while the tracking server creates its tables; both take a while.
        names = start_workers(deploy, 2, workdir)
        server = stack.enter_context(mlflow_server(user, workdir))
        write_config(
            config.parent,
            {
                "source": {"synthetic": DATA},
                "orchestration": {
                    "executor": "celery",
                    "celery_config": str(deploy.celery_config),
                    "step_retries": STEP_RETRIES,
                    "step_retry_delay": STEP_RETRY_DELAY,
                },
                "mlflow": {"tracking_uri": server.uri, "artifact_location": ""},
            },
        )
        wait_for_workers(deploy, names)
        instance = stack.enter_context(deploy.instance())
        _ingest(config, instance)
        yield SimpleNamespace(
            deploy=deploy, server=server, config=config, instance=instance, workdir=workdir
        )


def _ingest(config: Path, instance: Any) -> None:
    """Validated usage stored and customer partitions registered in the shared instance, as the
    deployment's ingest run leaves them (in-process: ingest is not what is tested here)."""
    from anomaly_pipelines.definitions import build_definitions

    result = (
        build_definitions(str(config))
        .resolve_job_def("ingest_job")
        .execute_in_process(instance=instance)
    )
    assert result.success


def _registry(uri: str) -> Any:
    from anomaly_pipelines.core.config import MlflowConfig
    from anomaly_pipelines.core.registry import ModelRegistry

    return ModelRegistry(MlflowConfig(tracking_uri=uri, artifact_location=""))


def _finish(process: Any, log: Path) -> None:
    try:
        code = process.wait(timeout=RUN_TIMEOUT)
    except Exception:
        process.kill()
        raise
    assert code == 0, log.read_text()[-5000:]


def _find_run(instance: Any, customers: list[str]) -> Any | None:
    """The run whose plan named ``customers``, if it exists yet."""
    for run in instance.get_runs():
        planned = run.run_config.get("ops", {}).get("plan_cohorts", {}).get("config", {})
        if run.job_name == JOB and planned.get("customers") == customers:
            return run
    return None


def _run_of(instance: Any, customers: list[str]) -> Any:
    """The finished run whose plan named ``customers``."""
    run = _find_run(instance, customers)
    if run is None:
        raise AssertionError(f"no {JOB} run for {customers}")
    return run


def _events(instance: Any, run_id: str, kind: str) -> list[Any]:
    """The run's events of one ``DagsterEventType`` name (e.g. ``STEP_START``)."""
    return [
        e
        for e in instance.all_logs(run_id)
        if e.dagster_event_type is not None and e.dagster_event_type.name == kind
    ]


def _kill_while_training(instance: Any, deadline: float, outcome: dict[str, Any]) -> None:
    """Wait until a cohort step has loaded its input (training starts), then SIGKILL the celery
    pool process that runs it: what the OOM killer or a lost node does to a worker."""
    try:
        while time.monotonic() < deadline:
            for run in instance.get_runs():
                if run.job_name != JOB:
                    continue
                started = {
                    e.step_key: e
                    for e in _events(instance, run.run_id, "STEP_START")
                    if e.step_key.startswith("train_cohort")
                }
                inputs = [
                    e for e in _events(instance, run.run_id, "STEP_INPUT") if e.step_key in started
                ]
                if not inputs:
                    continue
                step = inputs[0].step_key
                pid = started[step].dagster_event.pid
                time.sleep(1.0)
                command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                assert "celery" in command, f"pid {pid} is not a celery worker: {command!r}"
                done = {e.step_key for e in _events(instance, run.run_id, "STEP_SUCCESS")}
                os.kill(pid, signal.SIGKILL)
                outcome.update(step=step, pid=pid, finished_before_kill=step in done)
                return
            time.sleep(0.5)
        outcome["error"] = "no training step started before the deadline"
    except Exception as exc:  # reported by the test
        outcome["error"] = repr(exc)


@pytest.fixture(scope="module")
def killed_batch(cluster: SimpleNamespace) -> SimpleNamespace:
    """The 12-customer batch on celery with a worker process killed mid-step, and the same job
    run in-process on SQLite (at the same time: the workers wait on the broker anyway)."""
    from anomaly_pipelines.definitions import build_definitions

    started = time.monotonic()
    log = cluster.workdir / "batch.log"
    process = launch(cluster.deploy, JOB, plan(BATCH, 6), log)
    outcome: dict[str, Any] = {}
    killer = threading.Thread(
        target=_kill_while_training,
        args=(cluster.instance, time.monotonic() + RUN_TIMEOUT, outcome),
        daemon=True,
    )
    killer.start()

    import dagster as dg

    laptop = write_config(cluster.workdir / "laptop", {"source": {"synthetic": DATA}})
    defs = build_definitions(str(laptop))
    with dg.DagsterInstance.ephemeral() as local:
        assert defs.resolve_job_def("ingest_job").execute_in_process(instance=local).success
        assert (
            defs.resolve_job_def(JOB)
            .execute_in_process(instance=local, run_config=plan(BATCH, 6))
            .success
        )
    _finish(process, log)
    killer.join(timeout=60)
    return SimpleNamespace(
        run=_run_of(cluster.instance, BATCH),
        kill=outcome,
        laptop=laptop.parent,
        seconds=time.monotonic() - started,
    )


def _scores(workdir: Path, customers: list[str]) -> pd.DataFrame:
    frames = [
        pd.read_parquet(workdir / "outputs" / "storage" / "anomaly_scores" / f"{cid}.parquet")
        for cid in customers
    ]
    return pd.concat(frames).sort_values(["customer_id", "timestamp"]).reset_index(drop=True)


def test_batch_on_two_celery_workers_scores_like_the_in_process_run(
    cluster: SimpleNamespace, killed_batch: SimpleNamespace
) -> None:
    import dagster as dg

    run = killed_batch.run
    assert run.status == dg.DagsterRunStatus.SUCCESS
    # Both workers took cohort steps (the broker spread them).
    workers = {
        e.dagster_event.engine_event_data.metadata["Celery worker"].value
        for e in _events(cluster.instance, run.run_id, "ENGINE_EVENT")
        if e.dagster_event.engine_event_data
        and "Celery worker" in e.dagster_event.engine_event_data.metadata
        and e.step_key.startswith("train_cohort")
    }
    assert len(workers) == 2, workers
    celery = _scores(cluster.config.parent, BATCH)
    local = _scores(killed_batch.laptop, BATCH)
    assert len(celery) == 12 * 200
    assert celery["is_anomaly"].sum() > 0  # a comparison of nothing would prove nothing
    pd.testing.assert_frame_equal(celery, local, check_exact=False, rtol=1e-5, atol=1e-6)


def test_a_killed_worker_process_is_redelivered_and_registers_nothing_twice(
    cluster: SimpleNamespace, killed_batch: SimpleNamespace
) -> None:
    import dagster as dg

    kill = killed_batch.kill
    assert "error" not in kill, kill
    assert not kill["finished_before_kill"], "the step ended before the kill: nothing was tested"
    run = killed_batch.run
    assert run.status == dg.DagsterRunStatus.SUCCESS
    starts = [
        e for e in _events(cluster.instance, run.run_id, "STEP_START") if e.step_key == kill["step"]
    ]
    pids = [e.dagster_event.pid for e in starts]
    assert len(starts) == 2 and pids[0] == kill["pid"] != pids[1], pids
    registry = _registry(cluster.server.uri)
    assert {cid: registry.versions(cid) for cid in BATCH} == {cid: ["1"] for cid in BATCH}
    assert registry.champion_versions(BATCH) == dict.fromkeys(BATCH, "1")
    client = registry.client()
    trainings = client.search_runs(
        [registry.experiment_id()], filter_string=f"tags.dagster_run_id = '{run.run_id}'"
    )
    # One MLflow run per cohort, both finished: the killed attempt logged nothing.
    assert sorted((r.data.tags["dagster_step"], r.info.status) for r in trainings) == [
        ("cohort_00000", "FINISHED"),
        ("cohort_00001", "FINISHED"),
    ]


def test_two_runs_training_at_once_lose_no_version_and_keep_the_right_champions(
    cluster: SimpleNamespace, killed_batch: SimpleNamespace
) -> None:
    import dagster as dg

    first, second = CUSTOMERS[12:18], CUSTOMERS[18:24]
    logs = [cluster.workdir / "first.log", cluster.workdir / "second.log"]
    processes = [
        launch(cluster.deploy, JOB, plan(first, 6), logs[0]),
        launch(cluster.deploy, JOB, plan(second, 6), logs[1]),
    ]
    for process, log in zip(processes, logs, strict=True):
        _finish(process, log)
    runs = [_run_of(cluster.instance, first), _run_of(cluster.instance, second)]
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 2
    # They did overlap: each started before the other ended.
    spans = [
        (
            _events(cluster.instance, r.run_id, "RUN_START")[0].timestamp,
            _events(cluster.instance, r.run_id, "RUN_SUCCESS")[0].timestamp,
        )
        for r in runs
    ]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans
    registry = _registry(cluster.server.uri)
    client = registry.client()
    for run, customers in zip(runs, (first, second), strict=True):
        trainings = client.search_runs(
            [registry.experiment_id()], filter_string=f"tags.dagster_run_id = '{run.run_id}'"
        )
        assert len(trainings) == 1  # one cohort of 6 per run: the two runs share the workers
        assert trainings[0].data.metrics["registered_versions"] == len(customers)
        assert {cid: registry.versions(cid) for cid in customers} == {
            cid: ["1"] for cid in customers
        }
        assert registry.champion_versions(customers) == dict.fromkeys(customers, "1")
        # Each champion is a version of its own run's training, not the other run's.
        own = {r.info.run_id for r in trainings}
        for cid in customers:
            version = client.get_model_version_by_alias(registry.registered_name(cid), "champion")
            assert version.run_id in own
    # The earlier batch was not touched by the two runs.
    assert registry.champion_versions(BATCH) == dict.fromkeys(BATCH, "1")


def test_the_deploy_instance_keeps_everything_in_postgres_and_queues_runs(
    cluster: SimpleNamespace,
) -> None:
    """configs/deploy/dagster.yaml as the cluster loads it: the storages, the queue and its
    limits, and models served by the tracking server rather than written to a worker's disk."""
    instance = cluster.instance
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    concurrency = instance.get_concurrency_config()
    assert concurrency.run_queue_config.tag_concurrency_limits == [
        {"key": "anomaly_pipelines/trains", "value": "true", "limit": 2}
    ]
    assert concurrency.pool_config.default_pool_limit >= 2
    registry = _registry(cluster.server.uri)
    experiment = registry.client().get_experiment(registry.experiment_id())
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    assert any(cluster.server.artifacts.rglob("MLmodel"))


def _wait_until_up_for_retry(
    instance: Any, customers: list[str], step: str, process: Any, log: Path
) -> None:
    """Until ``step`` of the run of ``customers`` has failed and is waiting for its retry; an
    error as soon as the run ends without that (a job with no retry policy fails the run)."""
    import dagster as dg

    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        run = _find_run(instance, customers)
        if run is not None:
            retries = [
                e for e in _events(instance, run.run_id, "STEP_UP_FOR_RETRY") if e.step_key == step
            ]
            if retries:
                return
            status = instance.get_run_by_id(run.run_id).status
            if status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS):
                failures = [
                    _error_text(e.dagster_event.event_specific_data.error)[-3000:]
                    for e in _events(instance, run.run_id, "STEP_FAILURE")
                ]
                raise AssertionError(f"run {status.value} without retrying {step}: {failures}")
        if process.poll() is not None:
            raise AssertionError(f"the run exited before a retry:\n{log.read_text()[-5000:]}")
        time.sleep(0.25)
    raise AssertionError(f"{step} was not up for retry after {RUN_TIMEOUT} s")


def _error_text(error: Any) -> str:
    """A serialized error with its causes and contexts: the step's own exception is a cause of
    Dagster's ``DagsterExecutionStepExecutionError``."""
    parts = []
    while error is not None:
        parts.append(f"{error.cls_name}: {error.message}")
        error = error.cause or error.context
    return "\n".join(parts)


def test_a_step_that_cannot_reach_mlflow_is_retried_by_the_policy_and_registers_once(
    cluster: SimpleNamespace,
) -> None:
    """Executor: celery, the two workers of the module (a run process as a run worker starts it,
    steps on the workers, Dagster's run and event storage in Postgres).

    The run's tracking URI names a port of 127.0.0.1 where nothing listens yet: the cohort step
    fails inside the step (MLflow's client, after its own short retries, raises a refused
    connection when the step opens the store, before training). Only once Dagster has recorded
    the step as up for retry does that port come alive, forwarded to the module's real
    ``mlflow server`` on Postgres (starting a second server there would add its 20 s start-up
    to the suite); the RetryPolicy's retry then trains and registers. Should the jitter send a
    retry before the port listens, it fails the same way and a later one runs: every failed
    attempt must have failed on the refused connection, and one must have succeeded."""
    import dagster as dg

    port = free_port()
    step = "train_cohort[cohort_00000]"
    log = cluster.workdir / "late-mlflow.log"
    run_config = {
        **plan(LATE, len(LATE)),
        "resources": {
            "pipeline_settings": {
                "config": {"overrides": {"mlflow": {"tracking_uri": f"http://127.0.0.1:{port}"}}}
            }
        },
    }
    process = launch(cluster.deploy, JOB, run_config, log)
    try:
        _wait_until_up_for_retry(cluster.instance, LATE, step, process, log)
        opened = time.time()
        with port_forward(port, int(cluster.server.uri.rsplit(":", 1)[1])):
            _finish(process, log)
    finally:
        if process.poll() is None:
            process.kill()
    run = _run_of(cluster.instance, LATE)
    assert run.status == dg.DagsterRunStatus.SUCCESS

    def of_step(kind: str) -> list[Any]:
        return [e for e in _events(cluster.instance, run.run_id, kind) if e.step_key == step]

    retries = of_step("STEP_UP_FOR_RETRY")
    assert retries and retries[0].timestamp < opened
    # Every failed attempt failed on the tracking server's refused connection, nothing else.
    for event in retries:
        error = _error_text(event.dagster_event.event_specific_data.error)
        assert f"port={port}" in error and "Connection refused" in error, error
    # The policy's first wait is step_retry_delay (2 s) +- 2 s, not the default 5 s +- 5 s.
    assert 0 <= retries[0].dagster_event.event_specific_data.seconds_to_wait <= 2 * STEP_RETRY_DELAY
    assert len(of_step("STEP_RESTARTED")) == len(retries)
    assert len(of_step("STEP_START")) == 1  # a retry starts with STEP_RESTARTED instead
    assert len(of_step("STEP_SUCCESS")) == 1 and not of_step("STEP_FAILURE")
    # Nothing registered twice: one version per customer, each the champion, and one MLflow
    # run (the successful attempt's); the failed attempts never reached the store.
    registry = _registry(cluster.server.uri)
    assert {cid: registry.versions(cid) for cid in LATE} == {cid: ["1"] for cid in LATE}
    assert registry.champion_versions(LATE) == dict.fromkeys(LATE, "1")
    trainings = registry.client().search_runs(
        [registry.experiment_id()], filter_string=f"tags.dagster_run_id = '{run.run_id}'"
    )
    assert [(r.data.tags["dagster_step"], r.info.status) for r in trainings] == [
        ("cohort_00000", "FINISHED")
    ]
    assert trainings[0].data.metrics["registered_versions"] == len(LATE)
