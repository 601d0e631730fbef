"""A sensor that scores each new daily billing file as soon as it lands.

Only meaningful for the ``daily_folder`` source, so it is stopped by default; turn it on in the
UI (or set it running in code) when billing files arrive in a folder.
"""

from collections.abc import Iterator

import dagster as dg
from dagster import SensorEvaluationContext

from anomaly_pipelines.defs.jobs import daily_scoring_job
from anomaly_pipelines.defs.partitions import daily_partitions
from anomaly_pipelines.defs.resources import PipelineSettings


@dg.sensor(
    job=daily_scoring_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Requests a daily scoring run for each day whose billing file is new.",
)
def daily_files_sensor(
    context: SensorEvaluationContext, pipeline_settings: PipelineSettings
) -> Iterator[dg.RunRequest | dg.SkipReason]:
    """The cursor is the newest day already requested, so each file is scored once; ``run_key``
    makes a re-evaluation after a crash request nothing twice."""
    from anomaly_pipelines.core.sources import list_daily_partitions

    config = pipeline_settings.config
    if config.source.kind != "daily_folder":
        yield dg.SkipReason(f"source.kind is {config.source.kind!r}, not 'daily_folder'")
        return
    valid = set(daily_partitions(config.orchestration).get_partition_keys())
    days = sorted(d for d in list_daily_partitions(config.source) if d in valid)
    new = [d for d in days if context.cursor is None or d > context.cursor]
    if not new:
        yield dg.SkipReason("no new daily files")
        return
    for day in new:
        yield dg.RunRequest(run_key=f"daily-{day}", partition_key=day)
    context.update_cursor(new[-1])
