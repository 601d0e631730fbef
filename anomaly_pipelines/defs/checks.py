"""Data-quality checks on the assets, shown next to each materialization in the UI.

Blocking checks stop downstream assets from running on bad data (too many rejected rows, no
customers); warnings flag what a person should look at but must not stop the batch (a detector
flagging far more than usual is news, not a crash).
"""

import dagster as dg
import numpy as np
import pandas as pd

from anomaly_pipelines.defs.assets.reporting import export_paths
from anomaly_pipelines.defs.metadata import markdown_table, md
from anomaly_pipelines.defs.resources import PipelineSettings

# Flagging more than this share of scored steps is alert fatigue, whatever the data.
MAX_ANOMALY_RATE = 0.05


@dg.asset_check(
    asset="validated_usage",
    additional_ins={"usage_quarantine": dg.AssetIn("usage_quarantine")},
    blocking=True,
    description="The share of input rows rejected by validation stays under preprocess.max_failure_rate.",
)
def validated_usage_failure_rate(
    validated_usage: pd.DataFrame,
    usage_quarantine: pd.DataFrame,
    pipeline_settings: PipelineSettings,
) -> dg.AssetCheckResult:
    config = pipeline_settings.config
    rejected = _rejected_rows(usage_quarantine)
    total = len(validated_usage) + rejected
    rate = rejected / total if total else 0.0
    by_check = (
        usage_quarantine["check"].value_counts().rename_axis("check").reset_index(name="rows")
        if "check" in usage_quarantine.columns and len(usage_quarantine)
        else pd.DataFrame()
    )
    return dg.AssetCheckResult(
        passed=bool(rate <= config.preprocess.max_failure_rate),
        metadata={
            "failure_rate": float(rate),
            "max_failure_rate": float(config.preprocess.max_failure_rate),
            "rejected_rows": int(rejected),
            "valid_rows": len(validated_usage),
            "by_check": md(markdown_table(by_check)),
        },
    )


def _rejected_rows(quarantine: pd.DataFrame) -> int:
    """Quarantine reports every failing check; a row failing two checks is one rejected row."""
    keys = [c for c in ("source_file", "source_line") if c in quarantine.columns]
    if len(quarantine) and len(keys) == 2:
        return int(quarantine[keys].drop_duplicates().shape[0])
    return len(quarantine)


@dg.asset_check(
    asset="validated_usage",
    blocking=True,
    description="There is at least one customer, and every customer has enough history to model.",
)
def validated_usage_customers(
    validated_usage: pd.DataFrame, pipeline_settings: PipelineSettings
) -> dg.AssetCheckResult:
    config = pipeline_settings.config
    if validated_usage.empty:
        return dg.AssetCheckResult(
            passed=False, metadata={"customers": 0, "reason": "no valid rows"}
        )
    days = validated_usage.groupby("customer_id")["timestamp"].nunique()
    short = days[days < config.preprocess.min_history]
    return dg.AssetCheckResult(
        passed=short.empty,
        # Short histories are a warning, not a block: those customers are returned unscored.
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "customers": len(days),
            "customers_with_short_history": len(short),
            "min_history": config.preprocess.min_history,
            "short_history": md(
                markdown_table(short.rename("timestamps").rename_axis("customer_id").reset_index())
            ),
        },
    )


@dg.asset_check(
    asset="customer_series",
    description="Each series is strictly increasing on one step, with a finite value at every step.",
)
def customer_series_regular(customer_series: pd.DataFrame) -> dg.AssetCheckResult:
    problems = []
    for cid, group in customer_series.groupby("customer_id", sort=True):
        ts = pd.DatetimeIndex(group["timestamp"])
        steps = np.unique(np.diff(ts.asi8)) if len(ts) > 1 else np.array([])
        if len(steps) > 1 or (len(steps) and steps[0] <= 0):
            problems.append({"customer_id": cid, "problem": f"{len(steps)} different steps"})
        if not np.isfinite(group["cost"].to_numpy(dtype=float)).all():
            problems.append({"customer_id": cid, "problem": "non-finite cost"})
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "customers": int(customer_series["customer_id"].nunique())
            if len(customer_series)
            else 0,
            "problems": md(markdown_table(pd.DataFrame(problems))),
        },
    )


@dg.asset_check(
    asset="anomaly_scores",
    description=f"At most {MAX_ANOMALY_RATE:.0%} of scored steps are flagged (warning only).",
)
def anomaly_scores_rate(anomaly_scores: pd.DataFrame) -> dg.AssetCheckResult:
    scored = (
        anomaly_scores[anomaly_scores["status"] == "scored"]
        if len(anomaly_scores)
        else anomaly_scores
    )
    rate = float(scored["is_anomaly"].astype(bool).mean()) if len(scored) else 0.0
    return dg.AssetCheckResult(
        passed=rate <= MAX_ANOMALY_RATE,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"anomaly_rate": rate, "scored_steps": len(scored), "max_rate": MAX_ANOMALY_RATE},
    )


@dg.asset_check(
    asset="scores_export",
    description="The Parquet and CSV exports exist, have the documented columns and agree.",
)
def scores_export_schema(pipeline_settings: PipelineSettings) -> dg.AssetCheckResult:
    from anomaly_pipelines.core.score_schema import AnomalyScores, conform

    parquet_path, csv_path = export_paths(pipeline_settings.config)
    if not parquet_path.is_file() or not csv_path.is_file():
        return dg.AssetCheckResult(
            passed=False, metadata={"missing": f"{parquet_path} or {csv_path}"}
        )
    frame = pd.read_parquet(parquet_path)
    csv_columns = list(pd.read_csv(csv_path, nrows=0).columns)
    problems = []
    try:
        # The stored types must already be right: coercion would hide a lossy round trip.
        if not conform(frame, AnomalyScores, "the Parquet export").dtypes.equals(frame.dtypes):
            problems.append(f"parquet types differ from AnomalyScores: {frame.dtypes.to_dict()}")
    except ValueError as exc:
        problems.append(str(exc))
    if csv_columns != list(frame.columns):
        problems.append("CSV and Parquet columns differ")
    if frame.duplicated(["customer_id", "timestamp"]).any():
        problems.append("duplicate (customer_id, timestamp) rows")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "rows": len(frame),
            "problems": md("\n".join(f"- {p}" for p in problems) or "none"),
        },
    )


@dg.asset_check(
    asset="validated_usage",
    blocking=True,
    description="The stored rows still satisfy the pandera ValidatedUsage model (lazy validation).",
)
def validated_usage_schema(
    validated_usage: pd.DataFrame, pipeline_settings: PipelineSettings
) -> dg.AssetCheckResult:
    """Re-validates what is stored, not what was read: catches a storage round trip that lost
    types (timezones, integer lines) before the models see the data."""
    import pandera.errors

    from anomaly_pipelines.core.schemas import validated_schema

    config = pipeline_settings.config
    schema = validated_schema(config.source, usage=True, now=pd.Timestamp.now(tz="UTC"))
    failures = pd.DataFrame()
    try:
        schema.validate(validated_usage, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        failures = exc.failure_cases
    return dg.AssetCheckResult(
        passed=failures.empty,
        metadata={
            "rows": len(validated_usage),
            "failure_cases": len(failures),
            "first_failures": md(markdown_table(failures.head(10))),
        },
    )
