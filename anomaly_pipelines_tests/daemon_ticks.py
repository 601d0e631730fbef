"""What the Dagster daemon does on its ticks, done in the test's (or benchmark's) own process.

The daily-loop test and ``benchmarks/daily_loop.py`` drive the project's real definitions on a
real instance one simulated day at a time; a daemon would tick in wall-clock time instead. The
daemon's three parts they need are here, so both follow it the same way: the automation
sensors' evaluation (``dagster.evaluate_automation_conditions``, each evaluation continuing from
the previous cursor), the tags those sensors put on their runs, and a schedule's tick (its run
requests, launched with their tags).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import dagster as dg


class AutomationTicks:
    """Successive evaluations of every automation condition of ``defs`` on ``instance``, as the
    daemon's automation sensors tick: each one continues from the previous one's cursor."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
        self.defs, self.instance = defs, instance
        self.cursor: Any = None  # dagster's AssetDaemonCursor

    def tick(self) -> dict[str, set[str | None]]:
        """What this evaluation requests: asset -> partition keys (``None``: unpartitioned)."""
        result = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.cursor
        )
        self.cursor = result.cursor
        return {
            r.key.to_user_string(): set(result.get_requested_partitions(r.key))
            for r in result.results
            if result.get_num_requested(r.key)
        }


def sensor_run_tags(defs: dg.Definitions, sensor: str) -> dict[str, str]:
    """The tags an automation sensor puts on the runs it launches."""
    definition = defs.resolve_sensor_def(sensor)
    assert isinstance(definition, dg.AutomationConditionSensorDefinition)
    return dict(definition.run_tags)


def schedule_ticks(
    schedule: dg.ScheduleDefinition, after: datetime, until: datetime
) -> list[datetime]:
    """The schedule's ticks in (``after``, ``until``]: when the scheduler would fire it.

    Read by Dagster itself, not by a second cron parser that could disagree with the
    scheduler: the windows of a time-window partitioning on the same cron start at its ticks.
    """
    assert isinstance(schedule.cron_schedule, str)
    windows = dg.TimeWindowPartitionsDefinition(
        cron_schedule=schedule.cron_schedule,
        start=after,
        timezone=schedule.execution_timezone or "UTC",
        fmt="%Y-%m-%dT%H:%M",
        end_offset=1,  # the window that ``until`` is in: its start is a tick too
    )
    starts = (
        windows.time_window_for_partition_key(key).start
        for key in windows.get_partition_keys(current_time=until)
    )
    return [tick for tick in starts if after < tick <= until]


def run_schedule_tick(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    schedule_name: str,
    when: datetime,
    run_config: dict[str, Any] | None = None,
) -> list[dg.ExecuteInProcessResult]:
    """What the scheduler does at ``when``: evaluate the schedule and launch each run request
    (here, in process) with its tags and partition."""
    schedule = defs.resolve_schedule_def(schedule_name)
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when)
    results = []
    for request in schedule.evaluate_tick(context).run_requests or []:
        result = defs.resolve_job_def(schedule.job_name).execute_in_process(
            instance=instance,
            tags=request.tags,
            partition_key=request.partition_key,
            run_config=run_config,
        )
        assert result.success, f"{schedule_name} at {when}: {schedule.job_name} failed"
        results.append(result)
    return results
