"""``cohort_batch_job``: one batch spread over workers, one cohort of customers per step.

``batch_job`` trains every customer of a run in one step (one process), which is the fastest
use of one machine. On a cluster the same batch should keep every worker busy: this job splits
the customers into cohorts (``orchestration.cohort_size``, by default one cohort of window models'
worth, ``lstm.customers_per_model``) and fans them out as dynamic steps, which the celery or Kubernetes
executor hands to whichever worker is free. Each step trains, registers and gates its cohort
exactly like the ``lstm_autoencoder`` asset (``train_and_register``) and scores it with the
champions like ``anomaly_scores``; its scores are stored as the ``anomaly_scores`` partitions
of its customers, so the report, the UI and the daily run see them like any other.

Dagster's per-customer dynamic partitions stay what the UI shows; the job adds missing ones.
Dagster recommends staying under about 100,000 partitions per asset (docs/scaling.md).
"""

from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from anomaly_pipelines.core.config import OrchestrationConfig
from anomaly_pipelines.core.ids import customer_key
from anomaly_pipelines.defs.io_managers import PartitionedStorageIOManager
from anomaly_pipelines.defs.metadata import markdown_table, md
from anomaly_pipelines.defs.partitions import CUSTOMERS
from anomaly_pipelines.defs.resources import MlflowRegistryResource, PipelineSettings

COHORT_STORAGE = "cohort_io_manager"
SCORES = dg.AssetKey("anomaly_scores")
TRAINING_POOL = "anomaly_pipelines_training"


class CohortPlan(dg.Config):
    """Which customers one batch trains, and how many per step."""

    customers: list[str] = Field(
        default=[], description="Customer ids to train; empty: every customer of validated_usage."
    )
    cohort_size: int = Field(
        default=0,
        ge=0,
        description="Customers per step; 0: orchestration.cohort_size, else lstm.customers_per_model.",
    )
    customer_partitions: bool = Field(
        default=True,
        description=(
            "Register each customer as a partition and record its anomaly_scores "
            "materialization, for the UI. Dagster advises staying under about 100,000 "
            "partitions per asset: turn this off beyond that (docs/scaling.md); the scores "
            "are stored either way."
        ),
    )


def cohorts(customer_ids: list[str], size: int) -> list[list[str]]:
    """Sorted ids cut into consecutive cohorts of ``size``: the same customers always land in
    the same cohort, so a rerun (or another executor) trains the same stacked models."""
    ordered = sorted(set(customer_ids))
    return [ordered[i : i + size] for i in range(0, len(ordered), max(size, 1))]


@dg.op(out=dg.DynamicOut(dict, io_manager_key=COHORT_STORAGE))
def plan_cohorts(
    context: dg.OpExecutionContext,
    config: CohortPlan,
    pipeline_settings: PipelineSettings,
    io_manager: dg.ResourceParam[PartitionedStorageIOManager],
) -> Any:
    """The usage rows of each cohort (from the stored ``validated_usage``), one dynamic output
    per cohort (mapping key ``cohort_<n>``), with whether to record customer partitions. Only rows travel to the workers, through shared
    storage: the workers need neither the source nor the other cohorts' data."""
    settings = pipeline_settings.config
    validated_usage = io_manager.stored(dg.AssetKey("validated_usage"))
    ids = validated_usage["customer_id"].astype(str)
    wanted = sorted(set(config.customers)) if config.customers else sorted(set(ids))
    unknown = sorted(set(wanted) - set(ids))
    if unknown:
        context.log.warning(f"no usage rows for {len(unknown)} customer(s): {unknown[:10]}")
    wanted = [cid for cid in wanted if cid not in set(unknown)]
    size = (
        config.cohort_size
        or settings.orchestration.cohort_size
        or settings.lstm.customers_per_model
    )
    if config.customer_partitions:
        keys = sorted({customer_key(cid) for cid in wanted})
        known = set(context.instance.get_dynamic_partitions(CUSTOMERS))
        if new := [k for k in keys if k not in known]:
            context.instance.add_dynamic_partitions(CUSTOMERS, new)
    planned = cohorts(wanted, size)
    context.log.info(f"{len(wanted)} customers in {len(planned)} cohort(s) of up to {size}")
    for index, members in enumerate(planned):
        rows = validated_usage[ids.isin(members)].reset_index(drop=True)
        cohort = {"usage": rows, "customer_partitions": config.customer_partitions}
        yield dg.DynamicOutput(cohort, mapping_key=f"cohort_{index:05d}")


@dg.op(
    out=dg.Out(dict, io_manager_key=COHORT_STORAGE),
    # Steps of this pool across all runs are limited by the instance (configs/deploy/
    # dagster.yaml, concurrency.pools): trainings then queue instead of sharing cores.
    pool=TRAINING_POOL,
)
def train_cohort(
    context: dg.OpExecutionContext,
    cohort: dict[str, Any],
    pipeline_settings: PipelineSettings,
    mlflow_registry: MlflowRegistryResource,
    io_manager: dg.ResourceParam[PartitionedStorageIOManager],
) -> dict[str, Any]:
    """Train, register and score one cohort; store its scores as ``anomaly_scores`` partitions.

    A retried or redelivered step trains the same customers on the same data, so a training
    that finished before its registration failed is registered from its checkpoint."""
    from anomaly_pipelines.core.series import regularize
    from anomaly_pipelines.defs.assets.scoring import score_with_champions
    from anomaly_pipelines.defs.assets.training import train_and_register

    config = pipeline_settings.config
    label = context.get_mapping_key() or "cohort"
    series = regularize(cohort["usage"], config.preprocess)
    series, fitted, record, decisions, seconds = train_and_register(
        context, series, config, mlflow_registry.registry(config), run_label=label
    )
    scores = score_with_champions(series, mlflow_registry, config)
    by_key = {customer_key(str(cid)): part for cid, part in scores.groupby("customer_id")}
    for s in series:
        part = by_key.get(s.key, scores.iloc[0:0]).reset_index(drop=True)
        io_manager.store(SCORES, s.key, part)
        if not cohort["customer_partitions"]:
            continue
        context.log_event(
            dg.AssetMaterialization(
                SCORES,
                partition=s.key,
                metadata={
                    "customer_anomaly_count": int(part["is_anomaly"].sum()),
                    "champion_version": str(record.model_versions.get(s.customer_id, "")),
                    "cohort": label,
                },
            )
        )
    return {
        "cohort": label,
        "customers": [s.customer_id for s in series],
        "trained": sorted(fitted.calibrations),
        "skipped": dict(fitted.skipped),
        "model_versions": dict(record.model_versions),
        "mlflow_run_id": record.run_id,
        "promoted": sum(d.promoted for d in decisions),
        "training_seconds": seconds,
        "anomalies": int(scores["is_anomaly"].sum()) if len(scores) else 0,
    }


@dg.op
def summarize_batch(context: dg.OpExecutionContext, results: list[dict[str, Any]]) -> None:
    """One table of what every cohort did, on the run's page."""
    table = pd.DataFrame(
        [
            {
                "cohort": r["cohort"],
                "customers": len(r["customers"]),
                "trained": len(r["trained"]),
                "skipped": len(r["skipped"]),
                "promoted": r["promoted"],
                "anomalies": r["anomalies"],
                "training_seconds": round(r["training_seconds"], 2),
                "mlflow_run_id": r["mlflow_run_id"],
            }
            for r in sorted(results, key=lambda r: r["cohort"])
        ]
    )
    context.log.info(
        f"{len(results)} cohort(s), {int(table['trained'].sum()) if len(table) else 0} "
        "customer(s) trained"
    )
    context.add_output_metadata({"cohorts": md(markdown_table(table, max_rows=100))})


def cohort_batch_job(orchestration: OrchestrationConfig) -> dg.JobDefinition:
    """The job, with every step retried ``orchestration.step_retries`` times on failure, the
    first after about ``orchestration.step_retry_delay`` seconds (exponential backoff with
    jitter: several cohorts that lost the same MLflow server should not all come back at the
    same second)."""

    @dg.job(
        name="cohort_batch_job",
        description=(
            "Every customer (or the configured ones) in cohorts, one step per cohort: the batch "
            "spread over celery / Kubernetes workers."
        ),
        tags={"anomaly_pipelines/trains": "true"},
        op_retry_policy=dg.RetryPolicy(
            max_retries=orchestration.step_retries,
            delay=orchestration.step_retry_delay,
            backoff=dg.Backoff.EXPONENTIAL,
            jitter=dg.Jitter.PLUS_MINUS,
        ),
    )
    def job() -> None:
        summarize_batch(plan_cohorts().map(train_cohort).collect())

    return job
