"""The two schedules: the ingest that keeps training data fresh, and the daily scoring.

Each morning ``ingest_schedule`` (``orchestration.ingest_cron``, 05:00 by default) reads the
source again, then ``daily_scoring_schedule`` (06:00) scores the day that just ended. The drift
measurement follows the scoring and may request retrainings (``defs.automation``); those read
``validated_usage``, so with the ingest first they learn from every file that had arrived,
without an operator launching ``ingest_job``.
"""

from __future__ import annotations

import dagster as dg

from anomaly_pipelines.core.config import OrchestrationConfig
from anomaly_pipelines.defs.jobs import daily_scoring_job, ingest_job


def _default_status(orchestration: OrchestrationConfig) -> dg.DefaultScheduleStatus:
    return (
        dg.DefaultScheduleStatus.RUNNING
        if orchestration.schedule_running_by_default
        else dg.DefaultScheduleStatus.STOPPED
    )


def ingest_schedule(orchestration: OrchestrationConfig) -> dg.ScheduleDefinition:
    """``ingest_job`` on ``orchestration.ingest_cron``. Unpartitioned, like the job: each tick
    re-reads the whole source (new files, re-deliveries, customers first seen)."""
    return dg.ScheduleDefinition(
        name="ingest_schedule",
        job=ingest_job,
        cron_schedule=orchestration.ingest_cron,
        execution_timezone=orchestration.timezone,
        description=(
            "Reads the source again before the daily scoring, so retrainings requested by the "
            "drift measurement (and new customers) learn from the newest rows."
        ),
        default_status=_default_status(orchestration),
    )


def daily_scoring_schedule(orchestration: OrchestrationConfig) -> dg.ScheduleDefinition:
    """The schedule at the hour of the code location's configuration (built by
    ``build_definitions``, which hands the configuration in)."""
    return dg.build_schedule_from_partitioned_job(
        daily_scoring_job,
        name="daily_scoring_schedule",
        description="Scores the newest complete day for every customer in one run.",
        hour_of_day=orchestration.daily_hour,
        minute_of_hour=orchestration.daily_minute,
        default_status=_default_status(orchestration),
    )
