"""The daily scoring schedule: each tick scores the day that just ended, for every customer."""

from __future__ import annotations

import dagster as dg

from anomaly_pipelines.defs.jobs import daily_scoring_job
from anomaly_pipelines.defs.settings import definition_config

_orchestration = definition_config().orchestration

daily_scoring_schedule = dg.build_schedule_from_partitioned_job(
    daily_scoring_job,
    name="daily_scoring_schedule",
    description="Scores the newest complete day for every customer in one run.",
    hour_of_day=_orchestration.daily_hour,
    minute_of_hour=_orchestration.daily_minute,
    default_status=(
        dg.DefaultScheduleStatus.RUNNING
        if _orchestration.schedule_running_by_default
        else dg.DefaultScheduleStatus.STOPPED
    ),
)
