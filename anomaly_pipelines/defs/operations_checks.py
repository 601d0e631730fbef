"""Checks of the daily loop: undelivered alerts (the no-data checks are reported by the
``daily_alerts`` asset itself, from the day's data it already holds).

Warnings, not blocks: an alert that could not be delivered or a late billing file is something
a person must see in the UI, but it must not stop the scoring of everyone else.
"""

import dagster as dg
import pandas as pd

from anomaly_pipelines.defs.metadata import markdown_table, md
from anomaly_pipelines.defs.resources import PipelineSettings


@dg.asset_check(
    asset="daily_alerts",
    description="Every alert recorded so far was delivered (failed or pending ones are listed).",
)
def daily_alerts_delivered(pipeline_settings: PipelineSettings) -> dg.AssetCheckResult:
    from anomaly_pipelines.core.alerts import OperationsStore

    config = pipeline_settings.config
    store = OperationsStore.for_config(config)
    all_rows = store.deliveries()
    undelivered = (
        all_rows[all_rows["status"].isin(["failed", "pending"])] if len(all_rows) else all_rows
    )
    counts = all_rows["status"].value_counts().to_dict() if len(all_rows) else {}
    shown = (
        undelivered[
            ["as_of", "subscription", "kind", "incident_id", "subject", "attempts", "last_error"]
        ]
        if len(undelivered)
        else pd.DataFrame()
    )
    exhausted = (
        int((undelivered["attempts"] >= config.alerts.max_total_attempts).sum())
        if len(undelivered)
        else 0
    )
    return dg.AssetCheckResult(
        passed=undelivered.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "undelivered": len(undelivered),
            "gave_up": exhausted,
            **{f"status_{k}": int(v) for k, v in sorted(counts.items())},
            "undelivered_alerts": md(markdown_table(shown, max_rows=50)),
        },
    )
