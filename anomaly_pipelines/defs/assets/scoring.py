"""Scoring with the registry's champion models, and the explanations of what was flagged.

Scoring never uses the in-memory result of training: it resolves ``models:/<name>@champion``
for each customer, so moving the alias in MLflow (rollback, promotion after review) changes what
the next run scores with, without retraining.
"""

from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from dagster import AssetExecutionContext

from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.ids import customer_key
from anomaly_pipelines.core.series import CustomerSeries, frame_to_series, regularize
from anomaly_pipelines.defs.assets.series import rows_for_partitions
from anomaly_pipelines.defs.automation import follow_models_condition
from anomaly_pipelines.defs.io_managers import MODEL_METADATA_KEY
from anomaly_pipelines.defs.metadata import add_partition_metadata, markdown_table, md
from anomaly_pipelines.defs.partitions import customer_partitions, daily_partitions, recent_days
from anomaly_pipelines.defs.resources import (
    ExplainerResource,
    MlflowRegistryResource,
    PipelineSettings,
)

SINGLE_RUN = dg.BackfillPolicy.single_run()
TOP_ANOMALIES = 15
# Days of daily files the daily run reads besides the ingested history (the day included): more
# than a month between two ingests is not expected.
DAILY_HISTORY_DAYS = 35


def _customer_days(frame: pd.DataFrame) -> pd.MultiIndex:
    """(customer, UTC date) of each row: a day re-delivered as a file replaces all of that
    customer's ingested rows of the day, whatever their times."""
    return pd.MultiIndex.from_arrays([frame["customer_id"], frame["timestamp"].dt.floor("D")])


def _ids(frame: pd.DataFrame) -> set[str]:
    return set(frame["customer_id"].astype(str)) if "customer_id" in frame.columns else set()


def _customer_score_metadata(scores: pd.DataFrame, champion: str | None) -> dict[str, Any]:
    """One customer's view: its champion version, thresholds, counts and latest anomalies."""
    flagged = scores[scores["is_anomaly"].astype(bool)]
    out: dict[str, Any] = {
        "customer_status": str(scores["status"].iloc[-1]) if len(scores) else "missing",
        "customer_anomaly_count": len(flagged),
        "customer_max_hybrid_score": float(scores["hybrid_score"].max()) if len(scores) else 0.0,
        "customer_anomalies": md(
            markdown_table(
                flagged.sort_values("timestamp", ascending=False)[
                    ["timestamp", "cost", "expected_cost", "hybrid_score", "reasons"]
                ]
            )
        ),
    }
    if champion is not None:
        out["champion_version"] = champion
    lstm_threshold = scores["lstm_threshold"].dropna()
    if len(lstm_threshold):
        out["customer_lstm_threshold"] = float(lstm_threshold.iloc[0])
    return out


def score_with_champions(
    series: list[CustomerSeries],
    mlflow_registry: MlflowRegistryResource,
    config: PipelineConfig,
    latest_only: bool = False,
) -> pd.DataFrame:
    """Scores of ``series`` by each customer's ``champion`` model version; customers without a
    champion come back unscored, with the reason in ``reasons``. ``latest_only`` scores just the
    newest step of each series (same values, a fraction of the work: the daily run)."""
    from anomaly_pipelines.core.alerts import OperationsStore
    from anomaly_pipelines.core.detector import score_latest, score_series
    from anomaly_pipelines.core.feedback import mark_declared_normal

    # Days people declared normal stay in the expectation's history, as in training.
    series, _ = mark_declared_normal(series, OperationsStore.for_config(config))
    champions = mlflow_registry.registry(config).load_champions([s.customer_id for s in series], config)
    if latest_only:
        return score_latest(series, champions, config, steps=1)
    return score_series(series, champions, config)


def score_metadata(scores: pd.DataFrame, decision_threshold: float) -> dict[str, Any]:
    """Row and anomaly counts, per-customer thresholds and the top anomalies, for the UI."""
    scored = scores[scores["status"] == "scored"] if len(scores) else scores
    anomalies = scores[scores["is_anomaly"].astype(bool)] if len(scores) else scores
    per_customer = (
        scores.groupby("customer_id", sort=True)
        .agg(
            steps=("cost", "size"),
            status=("status", "last"),
            lstm_threshold=("lstm_threshold", "max"),
            anomalies=("is_anomaly", "sum"),
            max_hybrid_score=("hybrid_score", "max"),
        )
        .reset_index()
        if len(scores)
        else pd.DataFrame()
    )
    top = (
        anomalies.sort_values("hybrid_score", ascending=False).head(TOP_ANOMALIES)[
            ["customer_id", "timestamp", "cost", "expected_cost", "hybrid_score", "reasons"]
        ]
        if len(anomalies)
        else pd.DataFrame()
    )
    return {
        "row_count": len(scores),
        "customers": int(scores["customer_id"].nunique()) if len(scores) else 0,
        "unscored_customers": int((per_customer["status"] == "unscored").sum())
        if len(per_customer)
        else 0,
        "anomaly_count": len(anomalies),
        "anomaly_rate": float(len(anomalies) / len(scored)) if len(scored) else 0.0,
        # steps not flagged because the portfolio moved with them (a holiday): see the report
        "portfolio_move_steps": int(scores["reasons"].astype(str).str.contains("portfolio_move", regex=False).sum())
        if len(scores)
        else 0,
        "decision_threshold": float(decision_threshold),
        "thresholds": md(markdown_table(per_customer, max_rows=50)),
        "top_anomalies": md(markdown_table(top, max_rows=TOP_ANOMALIES)),
    }


@dg.asset(
    partitions_def=customer_partitions,
    backfill_policy=SINGLE_RUN,
    group_name="scoring",
    kinds={"tensorflow", "sklearn", "mlflow"},
    # Training hands over through the registry, not through a stored value: the three model
    # assets register versions and move the champion alias, and scoring loads whatever the alias
    # names. So they are dependencies (scoring runs after training), not loaded inputs.
    deps=["lstm_autoencoder", "isolation_forest", "local_outlier_factor"],
    metadata={MODEL_METADATA_KEY: "AnomalyScores"},
    automation_condition=follow_models_condition(),
)
def anomaly_scores(
    context: AssetExecutionContext,
    customer_series: pd.DataFrame,
    pipeline_settings: PipelineSettings,
    mlflow_registry: MlflowRegistryResource,
) -> dg.Output[pd.DataFrame]:
    """The hybrid score of every step of every customer of the run, with each detector's signal
    and the reasons, scored by the registry's ``champion`` versions (which need not be the
    versions the last training produced: a promotion gate or a rollback may keep an older one;
    the metadata says which were used)."""
    config = pipeline_settings.config
    series = frame_to_series(customer_series)
    scores = score_with_champions(series, mlflow_registry, config)
    metadata = score_metadata(scores, config.hybrid.decision_threshold)
    champions = mlflow_registry.registry(config).champion_versions([s.customer_id for s in series])
    versions = [
        {"customer_id": s.customer_id, "champion_version": champions.get(s.customer_id)}
        for s in series
    ]
    metadata["model_versions"] = md(markdown_table(pd.DataFrame(versions), max_rows=50))
    add_partition_metadata(
        context,
        {
            s.key: _customer_score_metadata(
                scores[scores["customer_id"] == s.customer_id], champions.get(s.customer_id)
            )
            for s in series
        },
    )
    return dg.Output(scores, metadata=metadata)


@dg.asset(
    partitions_def=customer_partitions,
    backfill_policy=SINGLE_RUN,
    group_name="scoring",
    kinds={"pandas"},
    automation_condition=follow_models_condition(),
)
def anomaly_explanations(
    context: AssetExecutionContext,
    anomaly_scores: pd.DataFrame,
    validated_usage: pd.DataFrame,
    explainer: ExplainerResource,
    pipeline_settings: PipelineSettings,
) -> dg.Output[pd.DataFrame]:
    """Flagged steps merged into incidents, each with its cost impact, the services/regions that
    drove it and a short text a person can act on. The offline explainer is the default; Gemini
    only rephrases the same facts when configured."""
    from anomaly_pipelines.core.explain import explain_incidents

    config = pipeline_settings.config
    keys = list(context.partition_keys)
    dimensions = rows_for_partitions(validated_usage, keys, context)
    explanations = explain_incidents(
        anomaly_scores, dimensions, explainer.explain_config(config), explainer.explainer(config)
    )
    by_severity = explanations["severity"].value_counts().to_dict() if len(explanations) else {}
    per_key: dict[str, dict[str, Any]] = {key: {"customer_incident_count": 0} for key in keys}
    for cid, group in explanations.groupby("customer_id", sort=True) if len(explanations) else []:
        per_key[customer_key(str(cid))] = {
            "customer_incident_count": len(group),
            "customer_incidents": md(
                markdown_table(group[["start", "end", "severity", "impact", "headline", "detail"]])
            ),
        }
    add_partition_metadata(context, per_key)
    shown = (
        explanations[["customer_id", "start", "end", "severity", "impact", "headline"]]
        if len(explanations)
        else explanations
    )
    return dg.Output(
        explanations,
        metadata={
            "incident_count": len(explanations),
            "customers_with_incidents": int(explanations["customer_id"].nunique())
            if len(explanations)
            else 0,
            **{f"incidents_{k}": int(v) for k, v in sorted(by_severity.items())},
            "explainers": ", ".join(sorted(set(explanations["explainer"])))
            if len(explanations)
            else "",
            "incidents": md(markdown_table(shown)),
        },
    )


def daily_scores(
    context: AssetExecutionContext,
    daily_usage: pd.DataFrame,
    validated_usage: pd.DataFrame,
    pipeline_settings: PipelineSettings,
    mlflow_registry: MlflowRegistryResource,
) -> dg.Output[pd.DataFrame]:
    """The newest day of every customer as of the partition's day, scored with the champion
    models (no training): the usage of the last ``DAILY_HISTORY_DAYS`` days (the day included) is
    appended to the ingested history (``validated_usage``, refreshed each morning by
    ``ingest_schedule``), which gives the seasonal expectation and the windows their context.
    Not the customer's stored series: that is rebuilt only when the customer is retrained, and a
    month-old one left the days in between to interpolation, with no weekly shape. A customer
    whose newest data is older than the day (billing lag) is scored on its newest day and
    counted as stale."""
    config = pipeline_settings.config
    window = context.partition_time_window
    day_start = pd.Timestamp(window.start).tz_convert("UTC")
    day_end = pd.Timestamp(window.end).tz_convert("UTC")
    history = validated_usage
    if len(history):
        history = history[history["timestamp"] < day_start]
    recent = daily_usage[daily_usage["timestamp"] < day_end] if len(daily_usage) else daily_usage
    new = recent[recent["timestamp"] >= day_start] if len(recent) else recent
    columns = ["customer_id", "timestamp", "cost"]
    frames = [f[columns] for f in (history, recent) if len(f)]
    if not frames:
        context.log.warning(
            f"no history and no usage for {context.partition_key}: nothing to score"
        )
        from anomaly_pipelines.core.detector import empty_scores

        empty = empty_scores().assign(as_of=pd.Series(dtype=str))
        return dg.Output(empty, metadata={"row_count": 0, "customers": 0, "anomaly_count": 0})
    # A day both ingested and delivered as a daily file counts once, as delivered; a file's rows
    # (services, regions) are summed into the day by ``regularize`` as always.
    if len(history) and len(recent):
        # Only the ingested rows of the delivered files' days can be replaced: the check skips
        # the years of history before them.
        overlap = history["timestamp"] >= recent["timestamp"].min().floor("D")
        replaced = np.zeros(len(history), dtype=bool)
        replaced[overlap.to_numpy()] = _customer_days(history[overlap]).isin(_customer_days(recent).unique())
        frames[0] = history.loc[~replaced, columns]
    combined = pd.concat(frames, ignore_index=True)
    series = regularize(combined, config.preprocess)
    newest = score_with_champions(series, mlflow_registry, config, latest_only=True)
    newest = newest.sort_values("customer_id").reset_index(drop=True)
    newest["as_of"] = context.partition_key
    on_day = newest["timestamp"] >= day_start
    metadata = score_metadata(newest, config.hybrid.decision_threshold)
    metadata.update(
        day=context.partition_key,
        customers_with_data_on_day=int(on_day.sum()),
        stale_customers=int((~on_day).sum()),
        customers_without_history=len(_ids(new) - _ids(history)),
        mean_hybrid_score=float(np.nanmean(newest["hybrid_score"])) if len(newest) else 0.0,
    )
    return dg.Output(newest, metadata=metadata)


def daily_scores_asset(config: PipelineConfig) -> dg.AssetsDefinition:
    """``daily_scores`` on the code location's days (``orchestration`` of the configuration
    ``build_definitions`` resolved)."""
    return dg.asset(
        partitions_def=daily_partitions(config.orchestration),
        group_name="daily",
        kinds={"pandas", "mlflow"},
        metadata={MODEL_METADATA_KEY: "DailyScores"},
        ins={
            # The days since the last ingest, not only the day itself: without them the days between
            # the ingested history and the day would be interpolated, and the window and the weekly
            # expectation would be judged on invented values.
            "daily_usage": dg.AssetIn(partition_mapping=recent_days(DAILY_HISTORY_DAYS)),
            "validated_usage": dg.AssetIn(),
        },
    )(daily_scores)
