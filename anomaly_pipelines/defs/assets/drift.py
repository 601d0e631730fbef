"""Drift of every customer's data against its champion model, and what to retrain.

``model_drift`` is materialized by declarative automation after each daily scoring
(``defs.automation.drift_condition``) and reports a check per run. For each customer it finds
drifted or stale it also records a materialization of that customer's partition of
``customer_drift``: the customer's series and models depend on it, so automation retrains
exactly those customers (``defs.automation``), and the new versions then face the
champion/challenger gate of the training asset.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from anomaly_pipelines.defs.automation import CUSTOMER_DRIFT, drift_condition
from anomaly_pipelines.defs.metadata import markdown_table, md
from anomaly_pipelines.defs.partitions import CUSTOMERS, customer_partitions
from anomaly_pipelines.defs.resources import MlflowRegistryResource, PipelineSettings

customer_drift = dg.AssetSpec(
    CUSTOMER_DRIFT,
    partitions_def=customer_partitions,
    group_name="operations",
    # Nothing stored but the materialization events in Dagster's event log.
    kinds={"dagster"},
    description=(
        "One materialization per customer and drift measurement that found the customer drifted "
        "or stale, recorded by model_drift with the reason. Not computed by a run of its own: "
        "the customer's series and models depend on it, so declarative automation retrains "
        "exactly the customers listed, once per measurement."
    ),
)


def recent_history(anomaly_scores: pd.DataFrame, daily_scores: pd.DataFrame) -> pd.DataFrame:
    """Each customer's champion scores of its training part, followed by the daily runs' scores
    of the days after its series ends: what the champion learned from, and the news since.

    The days the series already holds are left out of the recent part (the batch test part,
    and daily scores of those days, which an earlier champion may have written): a (re)training
    saw them and its champion/challenger gate judged it on them. Measured again, they would
    list a customer that was just retrained, for the same days, after every daily run until
    they leave the recent window, and each listing is another retraining."""
    frames = []
    ends = pd.Series(dtype="datetime64[ns, UTC]")
    if len(anomaly_scores):
        batch = anomaly_scores.assign(
            timestamp=pd.to_datetime(anomaly_scores["timestamp"], utc=True)
        )
        ends = batch.groupby(batch["customer_id"].astype(str))["timestamp"].max()
        frames.append(batch[batch["split"] == "train"])
    if len(daily_scores):
        daily = daily_scores.drop(columns=["as_of"], errors="ignore").assign(
            split="daily", timestamp=pd.to_datetime(daily_scores["timestamp"], utc=True)
        )
        end = daily["customer_id"].astype(str).map(ends)
        frames.append(daily[end.isna() | (daily["timestamp"] > end)])
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    combined = pd.concat(frames, ignore_index=True)
    combined = combined.sort_values(["customer_id", "timestamp"], kind="stable")
    # A stale customer is scored on the same newest day by several daily runs: the latest counts.
    return combined.drop_duplicates(["customer_id", "timestamp"], keep="last").reset_index(
        drop=True
    )


@dg.asset(
    group_name="operations",
    kinds={"pandas", "mlflow"},
    automation_condition=drift_condition(),
    ins={
        "anomaly_scores": dg.AssetIn(),
        "daily_scores": dg.AssetIn(),
    },
    check_specs=[
        dg.AssetCheckSpec(
            "no_customer_drifted",
            asset="model_drift",
            description="No customer's recent data drifted from its champion, none is stale.",
        )
    ],
)
def model_drift(
    context: AssetExecutionContext,
    anomaly_scores: pd.DataFrame,
    daily_scores: pd.DataFrame,
    pipeline_settings: PipelineSettings,
    mlflow_registry: MlflowRegistryResource,
) -> Iterator[dg.Output[pd.DataFrame] | dg.AssetCheckResult]:
    """Per customer: the KS distance of its recent residuals to its training residuals, its
    recent alert rate against ``drift.alert_budget`` and its champion's age (``core.drift``).
    Each drifted or stale customer still registered as a partition gets a materialization of its
    ``customer_drift`` partition, which is what makes automation retrain it."""
    from anomaly_pipelines.core.drift import drift_measures, retrain_keys
    from anomaly_pipelines.core.promotion import champion_registered_at

    config = pipeline_settings.config
    history = recent_history(anomaly_scores, daily_scores)
    ids = sorted(set(history["customer_id"].astype(str))) if len(history) else []
    created = champion_registered_at(mlflow_registry.registry(config), ids) if ids else {}
    measures = drift_measures(history, config.drift, created)
    keys = retrain_keys(measures)
    flagged = measures[measures["drifted"] | measures["stale"]] if len(measures) else measures
    if keys:
        context.log.info(f"{len(keys)} customer(s) to retrain: {keys[:20]}")
    metadata: dict[str, Any] = {
        "customers": len(measures),
        "drifted": int(measures["drifted"].sum()) if len(measures) else 0,
        "stale": int(measures["stale"].sum()) if len(measures) else 0,
        "measures": md(markdown_table(measures, max_rows=50)),
    }
    yield dg.Output(measures, metadata=metadata)
    registered = set(context.instance.get_dynamic_partitions(CUSTOMERS))
    for row in flagged.itertuples(index=False):
        if row.partition_key in registered:
            context.log_event(
                dg.AssetMaterialization(
                    CUSTOMER_DRIFT,
                    partition=row.partition_key,
                    description=row.reason,
                    metadata={
                        "customer_id": row.customer_id,
                        "drifted": bool(row.drifted),
                        "stale": bool(row.stale),
                        "reason": row.reason,
                    },
                )
            )
    yield dg.AssetCheckResult(
        check_name="no_customer_drifted",
        passed=not keys,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "to_retrain": len(keys),
            "customers": md(
                markdown_table(flagged[["customer_id", "reason"]] if len(flagged) else flagged)
            ),
        },
    )
