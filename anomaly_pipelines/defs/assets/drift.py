"""Drift of every customer's data against its champion model, and what to retrain.

``model_drift`` is materialized declaratively (``AutomationCondition.eager()``: whenever the
daily scores or the batch scores it reads are updated) and reports a check per run; the
``retrain_sensor`` turns its list of drifted or stale customers into ``customer_job`` runs,
whose new versions then face the champion/challenger gate of the training asset.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from anomaly_pipelines.defs.metadata import markdown_table, md
from anomaly_pipelines.defs.resources import MlflowRegistryResource, PipelineSettings

RETRAIN_KEYS = "retrain_partition_keys"


def recent_history(anomaly_scores: pd.DataFrame, daily_scores: pd.DataFrame) -> pd.DataFrame:
    """The champion's scores of each customer's history, extended by the daily runs' scores of
    later days (a daily score replaces the batch score of the same step)."""
    if len(daily_scores):
        daily_scores = daily_scores.drop(columns=["as_of"], errors="ignore").assign(split="daily")
    frames = [f for f in (anomaly_scores, daily_scores) if len(f)]
    if not frames:
        return pd.DataFrame()
    combined = pd.concat(frames, ignore_index=True)
    combined["timestamp"] = pd.to_datetime(combined["timestamp"], utc=True)
    combined = combined.sort_values(["customer_id", "timestamp"], kind="stable")
    return combined.drop_duplicates(["customer_id", "timestamp"], keep="last").reset_index(
        drop=True
    )


@dg.asset(
    group_name="operations",
    kinds={"pandas", "mlflow"},
    automation_condition=dg.AutomationCondition.eager(),
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
    Drifted or stale customers are listed in the metadata for the ``retrain_sensor``."""
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
        RETRAIN_KEYS: dg.MetadataValue.json(keys),
        "measures": md(markdown_table(measures, max_rows=50)),
    }
    yield dg.Output(measures, metadata=metadata)
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
