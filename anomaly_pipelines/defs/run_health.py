"""Training runs whose worker process died are failed within a minute.

Only one training run may run at a time (``configs/dagster.yaml``). A training killed with
``kill -9`` (or by the out-of-memory killer) stays STARTED, and Dagster's run monitoring, with
the default run launcher, can only fail it once ``max_runtime_seconds`` has passed: until then
every queued training waits. Every run launched through the daemon records its worker's pid
("Started process for run (pid: N)"); this sensor fails STARTED training runs whose worker is
gone (or whose pid now belongs to a process started after the run), so the slot frees at once.

Pids only mean something on the machine that started them, so the sensor acts only on a local
instance (SQLite run storage, as ``configs/dagster.yaml`` sets up); on a shared instance run
monitoring's runtime limit remains the safety net.
"""

from __future__ import annotations

import re

import dagster as dg
from dagster import SensorEvaluationContext

from anomaly_pipelines.core.processes import process_alive, process_started_at
from anomaly_pipelines.defs.jobs import TRAINS

_STARTED = re.compile(r"Started process for run \(pid: (\d+)\)")
# A process that started this long after its run cannot be the run's worker.
_PID_REUSE_SLACK_SECONDS = 5.0


def _local(instance: dg.DagsterInstance) -> bool:
    """SQLite run storage, named rather than imported: Dagster exports no public class for it."""
    return type(instance.run_storage).__name__ == "SqliteRunStorage"


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the run's worker process, from its "Started process" engine event."""
    pid = None
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        match = _STARTED.search(entry.message or entry.user_message or "")
        if match:
            pid = int(match.group(1))
    return pid


def dead_training_runs(instance: dg.DagsterInstance) -> list[tuple[dg.DagsterRun, int]]:
    """STARTED training runs of a local instance whose worker process no longer exists."""
    if not _local(instance):
        return []
    records = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED], tags=TRAINS)
    )
    dead = []
    for record in records:
        pid = _worker_pid(instance, record.dagster_run.run_id)
        if pid is None:
            continue  # launched in a terminal (dg launch): no worker pid to check
        started = process_started_at(pid)
        reused = (
            started is not None
            and record.start_time is not None
            and started > record.start_time + _PID_REUSE_SLACK_SECONDS
        )
        if reused or not process_alive(pid):
            dead.append((record.dagster_run, pid))
    return dead


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Fails STARTED training runs whose worker process died, freeing the training slot.",
)
def dead_training_runs_sensor(context: SensorEvaluationContext) -> dg.SkipReason:
    """Requests no runs: it only fails dead ones (see the module docstring)."""
    failed = []
    for run, pid in dead_training_runs(context.instance):
        context.instance.report_run_failed(
            run,
            f"Run worker process {pid} is gone (killed or crashed) while the run was STARTED; "
            "marked failed by dead_training_runs_sensor so queued trainings can start.",
        )
        context.log.warning(f"failed run {run.run_id}: its worker process {pid} is gone")
        failed.append(run.run_id)
    if failed:
        return dg.SkipReason(f"failed {len(failed)} dead training run(s): {', '.join(failed)}")
    return dg.SkipReason("no dead training runs")
