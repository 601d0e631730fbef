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


@dg.sensor(
    job_name="customer_job",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Retrains the customers the newest model_drift found drifted or stale.",
)
def retrain_sensor(context: SensorEvaluationContext) -> Iterator[dg.RunRequest | dg.SkipReason]:
    """One ``customer_job`` run per customer listed by the newest ``model_drift``
    materialization; ``run_key`` (customer x materialization) makes each request once. The new
    version only becomes champion if it passes the champion/challenger gate."""
    from anomaly_pipelines.defs.assets.drift import RETRAIN_KEYS

    event = context.instance.get_latest_materialization_event(dg.AssetKey("model_drift"))
    if event is None or event.asset_materialization is None:
        yield dg.SkipReason("model_drift has not been materialized yet")
        return
    value = event.asset_materialization.metadata.get(RETRAIN_KEYS)
    keys = list(value.value) if value is not None else []
    known = set(context.instance.get_dynamic_partitions("customers"))
    keys = [k for k in keys if k in known]
    if not keys:
        yield dg.SkipReason("no drifted or stale customer in the newest model_drift")
        return
    for key in keys:
        yield dg.RunRequest(
            run_key=f"retrain-{key}-{event.timestamp:.3f}",
            partition_key=key,
            tags={"anomaly_pipelines/reason": "drift"},
        )


@dg.sensor(
    job_name="customer_job",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Trains each customer partition that has never been trained.",
)
def new_customer_sensor(
    context: SensorEvaluationContext,
) -> Iterator[dg.RunRequest | dg.SkipReason]:
    """Customers are registered as partitions by ``validated_usage`` and by the daily ingest
    (``daily_usage``); a partition without any ``lstm_autoencoder`` materialization gets a
    ``customer_job`` run. Training reads the customer's rows from ``validated_usage``, so the key
    includes that asset's newest materialization: a customer first seen in a daily file is
    requested again once the next ingest has its rows, not before."""
    registered = context.instance.get_dynamic_partitions("customers")
    trained = context.instance.get_materialized_partitions(dg.AssetKey("lstm_autoencoder"))
    new = [k for k in registered if k not in trained]
    if not new:
        yield dg.SkipReason("every customer partition has been trained")
        return
    event = context.instance.get_latest_materialization_event(dg.AssetKey("validated_usage"))
    if event is None:
        yield dg.SkipReason("validated_usage has not been materialized: run ingest_job first")
        return
    for key in new:
        yield dg.RunRequest(
            run_key=f"onboard-{key}-{event.timestamp:.3f}",
            partition_key=key,
            tags={"anomaly_pipelines/reason": "new customer"},
        )
