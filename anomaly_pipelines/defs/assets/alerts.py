"""Alerts after the daily scoring: the recent daily scores become incidents, and each incident
reaches the configured subscriptions once, with updates while it goes on and one end notice.

Thin on purpose: incidents come from ``core.explain``, the sending, deduplication and storage
from ``core.alerts``. A delivery failure is recorded and shown by the ``daily_alerts_delivered``
check; it never fails the run.
"""

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.ids import customer_key
from anomaly_pipelines.defs.metadata import markdown_table, md
from anomaly_pipelines.defs.partitions import daily_partitions, recent_days
from anomaly_pipelines.defs.resources import ExplainerResource, PipelineSettings


def recent_scores(scores: pd.DataFrame, as_of: str) -> pd.DataFrame:
    """One row per customer and scored timestamp from the stored daily scores up to ``as_of``
    (a stale customer is scored on the same newest day by several runs: keep the latest)."""
    if scores.empty:
        return scores
    frame = scores[scores["as_of"].astype(str) <= as_of]
    frame = frame.sort_values(["as_of", "customer_id", "timestamp"], kind="stable")
    return frame.drop_duplicates(["customer_id", "timestamp"], keep="last").reset_index(drop=True)


def _plots(
    scores: pd.DataFrame,
    incidents: pd.DataFrame,
    customers: list[str],
    directory: Path,
    as_of: str,
) -> dict[str, str]:
    """Plots of ``customers`` (those with a notice today) as of the day, drawn in parallel."""
    from anomaly_pipelines.core.plots import plot_customers
    from anomaly_pipelines.core.processes import usable_cores

    directory.mkdir(parents=True, exist_ok=True)
    plots = {}
    for cid in customers:
        group = scores[scores["customer_id"].astype(str) == cid]
        if not group.empty:
            path = directory / f"{customer_key(cid)}-{as_of}.png"
            plots[cid] = (group, incidents, path, f"{cid} (daily, to {as_of})")
    paths = plot_customers(list(plots.values()), usable_cores())
    return {cid: str(path) for cid, path in zip(plots, paths, strict=True)}


def daily_alerts(
    context: AssetExecutionContext,
    daily_scores: pd.DataFrame,
    daily_usage: pd.DataFrame,
    pipeline_settings: PipelineSettings,
    explainer: ExplainerResource,
) -> dg.MaterializeResult:
    """Incidents of the last ``alerts.lookback_days`` daily scores, sent to the subscriptions in
    ``alerts.subscriptions`` (webhook, Slack-compatible, e-mail): one alert per incident, its
    updates, its end, and no-data notices; each recorded in the operations store under an
    idempotency key, so re-running a day sends nothing twice."""
    from anomaly_pipelines.core.alerts import (
        OperationsStore,
        continue_cut_incidents,
        process_day,
    )
    from anomaly_pipelines.core.explain import explain_incidents

    config = pipeline_settings.config
    as_of = context.partition_key
    scores = recent_scores(daily_scores, as_of)
    today = (
        daily_scores[daily_scores["as_of"].astype(str) == as_of]
        if len(daily_scores)
        else daily_scores
    )
    window = context.partition_time_window
    day_start = pd.Timestamp(window.start).tz_convert("UTC")
    day_end = pd.Timestamp(window.end).tz_convert("UTC")
    on_day = (
        daily_usage[(daily_usage["timestamp"] >= day_start) & (daily_usage["timestamp"] < day_end)]
        if len(daily_usage)
        else daily_usage
    )
    store = OperationsStore.for_config(config)
    incidents = (
        explain_incidents(
            scores, daily_usage, explainer.explain_config(config), explainer.explainer(config)
        )
        if len(scores)
        else pd.DataFrame()
    )
    lookback_start = day_start - pd.Timedelta(days=max(1, config.alerts.lookback_days) - 1)
    incidents = continue_cut_incidents(
        incidents, scores, lookback_start, store, config.explain.max_gap_steps
    )
    last_scored = (
        {
            str(c): pd.Timestamp(t)
            for c, t in today.groupby("customer_id")["timestamp"].max().items()
        }
        if len(today)
        else {}
    )
    # Newest data per customer: the scored day, or a later day's file in the window.
    last_seen = dict(last_scored)
    if len(daily_usage):
        arrived = daily_usage[daily_usage["timestamp"] < day_end]
        for cid, stamp in arrived.groupby("customer_id")["timestamp"].max().items():
            seen = pd.Timestamp(stamp)
            last_seen[str(cid)] = max(seen, last_seen.get(str(cid), seen))
    directory = Path(config.output.directory) / "plots" / "daily"
    summary = process_day(
        config,
        store,
        as_of,
        incidents,
        last_scored,
        day_has_data=len(on_day) > 0,
        plots=lambda customers: _plots(scores, incidents, customers, directory, as_of),
        last_seen=last_seen,
    )
    for error in summary.errors:
        context.log.warning(f"alert not delivered: {error}")
    context.log.info(
        f"{as_of}: {summary.incidents} incident(s), {summary.new_notices} new notice(s), "
        f"{summary.sent} sent, {summary.failed} failed, {summary.suppressed} suppressed"
    )
    shown = (
        incidents[["incident_id", "customer_id", "start", "end", "severity", "impact", "headline"]]
        if len(incidents)
        else pd.DataFrame()
    )
    metadata: dict[str, Any] = {
        **summary.as_dict(),
        "subscriptions": len(config.alerts.subscriptions),
        "incidents_table": md(markdown_table(shown)),
    }
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="daily_data_arrived",
                passed=len(on_day) > 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"day": as_of, "row_count": len(on_day)},
            ),
            _freshness(last_seen, as_of, config.alerts.no_data_after_days),
        ],
    )


def _freshness(last_scored: dict[str, pd.Timestamp], as_of: str, limit: int) -> dg.AssetCheckResult:
    day = pd.Timestamp(as_of, tz="UTC")
    rows = [
        {"customer_id": cid, "newest_data": f"{t:%Y-%m-%d}", "days_behind": days}
        for cid, t in sorted(last_scored.items())
        if (days := (day - pd.Timestamp(t).tz_convert("UTC").normalize()).days) >= limit
    ]
    return dg.AssetCheckResult(
        check_name="customers_fresh",
        passed=not rows and bool(last_scored),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "customers": len(last_scored),
            "stale_customers": len(rows),
            "no_data_after_days": limit,
            "stale": md(markdown_table(pd.DataFrame(rows))),
        },
    )


def daily_alerts_asset(config: PipelineConfig) -> dg.AssetsDefinition:
    """``daily_alerts`` on the code location's days, reading the last ``alerts.lookback_days``
    daily scores: both are part of the asset graph, so they come from the configuration
    ``build_definitions`` resolved, not from a file read at import."""
    recent = recent_days(max(1, config.alerts.lookback_days))
    return dg.asset(
        partitions_def=daily_partitions(config.orchestration),
        group_name="daily",
        kinds={"python"},
        check_specs=[
            dg.AssetCheckSpec(
                "daily_data_arrived",
                asset="daily_alerts",
                description="The day's billing data arrived (for a daily_folder source: its file).",
            ),
            dg.AssetCheckSpec(
                "customers_fresh",
                asset="daily_alerts",
                description="No customer's newest data is alerts.no_data_after_days or more behind.",
            ),
        ],
        ins={
            "daily_scores": dg.AssetIn(partition_mapping=recent),
            "daily_usage": dg.AssetIn(partition_mapping=recent),
        },
    )(daily_alerts)
