"""The daily scoring schedule: each tick scores the day that just ended, for every customer."""

from __future__ import annotations

import dagster as dg

from anomaly_pipelines.core.config import OrchestrationConfig
from anomaly_pipelines.defs.jobs import daily_scoring_job


def daily_scoring_schedule(orchestration: OrchestrationConfig) -> dg.ScheduleDefinition:
    """The schedule at the hour of the code location's configuration (built by
    ``build_definitions``, which hands the configuration in)."""
    return dg.build_schedule_from_partitioned_job(
        daily_scoring_job,
        name="daily_scoring_schedule",
        description="Scores the newest complete day for every customer in one run.",
        hour_of_day=orchestration.daily_hour,
        minute_of_hour=orchestration.daily_minute,
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if orchestration.schedule_running_by_default
            else dg.DefaultScheduleStatus.STOPPED
        ),
    )
