"""A training run whose process was killed must not hold the one training slot for ever.

The shipped ``configs/dagster.yaml`` is loaded as a real instance; a run tagged as training is
left STARTED as a ``kill -9`` leaves it (its worker gone, nothing reported) and Dagster's own
run-monitoring check, as the daemon runs it, must fail it so the queue moves again.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster import (
    DagsterEvent,
    DagsterEventType,
    DagsterRun,
    DagsterRunStatus,
    EventLogEntry,
    RunsFilter,
)

from anomaly_pipelines_tests.daemon import dagster_daemon

ROOT = Path(__file__).resolve().parents[2]
TRAINS = {"anomaly_pipelines/trains": "true"}


@pytest.fixture
def instance(tmp_path: Path) -> dg.DagsterInstance:
    shutil.copy(ROOT / "configs" / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        yield instance


def test_shipped_instance_turns_run_monitoring_on(instance: dg.DagsterInstance) -> None:
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_start_timeout_seconds == 180
    assert instance.run_monitoring_cancel_timeout_seconds == 180
    assert 0 < instance.run_monitoring_max_runtime_seconds <= 6 * 3600
    assert instance.run_monitoring_max_resume_run_attempts == 0  # default launcher cannot resume


def _started_run(instance: dg.DagsterInstance, started_ago: float) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(
        DagsterRun(job_name="batch_job", run_id=run_id, status=DagsterRunStatus.NOT_STARTED, tags=TRAINS)
    )
    instance.handle_new_event(
        EventLogEntry(
            error_info=None,
            level=logging.INFO,
            user_message="",
            run_id=run_id,
            timestamp=time.time() - started_ago,
            dagster_event=DagsterEvent(
                event_type_value=DagsterEventType.RUN_START.value, job_name="batch_job"
            ),
        )
    )
    return run_id


def _run_monitoring_pass(home: Path, run_ids: list[str]) -> dict[str, DagsterRunStatus]:
    """Dagster's own run monitoring, as ``dg dev`` runs it: the real daemon on the instance in
    ``home``, until it has failed the first run (or 5 minutes have passed: a loaded machine is slow to start it), then stopped. Its
    workspace is empty: run monitoring needs no code, and the project's schedules and sensors
    must not start runs from a test."""
    workspace = home / "empty-workspace.yaml"
    workspace.write_text("load_from: []\n", encoding="utf-8")
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    with dagster_daemon(workspace, home, env), dg.DagsterInstance.from_config(str(home)) as instance:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            run = instance.get_run_by_id(run_ids[0])
            if run is not None and run.status == DagsterRunStatus.FAILURE:
                break
            time.sleep(1)
        return {
            run_id: instance.get_run_by_id(run_id).status  # type: ignore[union-attr]
            for run_id in run_ids
        }


def test_run_monitoring_fails_a_killed_training_run_and_leaves_a_young_one(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    """A run older than ``max_runtime_seconds`` whose worker is gone is failed by the daemon, so
    the tag limit of 1 no longer blocks the next training; a young run is left alone."""
    dead = _started_run(instance, instance.run_monitoring_max_runtime_seconds + 60)
    young = _started_run(instance, 60)
    statuses = _run_monitoring_pass(tmp_path, [dead, young])
    assert statuses == {dead: DagsterRunStatus.FAILURE, young: DagsterRunStatus.STARTED}
    in_progress = instance.get_runs(
        RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING], tags=TRAINS)
    )
    assert [r.run_id for r in in_progress] == [young]


def _worker_started(instance: dg.DagsterInstance, run_id: str, pid: int) -> None:
    """What a daemon-launched run worker reports first."""
    run = instance.get_run_by_id(run_id)
    assert run is not None
    instance.report_engine_event(f"Started process for run (pid: {pid}).", run)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_training_run_whose_worker_died_is_failed_within_a_sensor_tick(
    instance: dg.DagsterInstance,
) -> None:
    from anomaly_pipelines.defs.run_health import dead_training_runs_sensor

    dead = _started_run(instance, 60)  # young: run monitoring's runtime limit is hours away
    _worker_started(instance, dead, _dead_pid())
    alive = _started_run(instance, 0)  # its worker (this process) started before the run did
    _worker_started(instance, alive, os.getpid())
    result = dead_training_runs_sensor(dg.build_sensor_context(instance=instance))
    assert dead in result.skip_message
    assert instance.get_run_by_id(dead).status == DagsterRunStatus.FAILURE  # type: ignore[union-attr]
    assert instance.get_run_by_id(alive).status == DagsterRunStatus.STARTED  # type: ignore[union-attr]
    again = dead_training_runs_sensor(dg.build_sensor_context(instance=instance))
    assert again.skip_message == "no dead training runs"


def test_the_sensor_ships_running_in_the_code_location() -> None:
    from anomaly_pipelines.definitions import build_definitions

    sensor = build_definitions().resolve_sensor_def("dead_training_runs_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
