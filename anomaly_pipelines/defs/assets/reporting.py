"""What people read: per-customer plots, the scores export and the summary report.

The export and the report are not partitioned: they always cover every customer that has
stored scores, so a per-customer rerun followed by a report refresh gives the same files as a
full batch. Customers whose scoring never ran are skipped with a warning by the IO manager.
"""

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.files import atomic_write
from anomaly_pipelines.core.ids import customer_key
from anomaly_pipelines.core.spreadsheet import write_csv
from anomaly_pipelines.defs.automation import follow_models_condition
from anomaly_pipelines.defs.metadata import (
    add_partition_metadata,
    image_markdown,
    markdown_table,
    md,
    table_schema,
)
from anomaly_pipelines.defs.partitions import customer_partitions
from anomaly_pipelines.defs.resources import MlflowRegistryResource, PipelineSettings

SINGLE_RUN = dg.BackfillPolicy.single_run()
EXPORT_NAME = "anomaly_scores"


def require_scores(scores: pd.DataFrame) -> None:
    """An export or report of nothing is a mistake in the order of runs, not an empty file."""
    if scores.empty:
        raise dg.Failure(
            description="no stored anomaly_scores for any customer: run ingest_job, then "
            "batch_job (or customer_job for some customers), before the export and the report"
        )


def output_dir(config: PipelineConfig, *parts: str) -> Path:
    path = Path(config.output.directory).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def export_paths(config: PipelineConfig) -> tuple[Path, Path]:
    """``<output.directory>/scores/anomaly_scores.parquet`` and ``.csv`` (documented paths)."""
    base = Path(config.output.directory) / "scores" / EXPORT_NAME
    return base.with_suffix(".parquet"), base.with_suffix(".csv")


@dg.asset(
    partitions_def=customer_partitions,
    backfill_policy=SINGLE_RUN,
    group_name="reporting",
    kinds={"matplotlib"},
    automation_condition=follow_models_condition(),
)
def anomaly_plots(
    context: AssetExecutionContext,
    anomaly_scores: pd.DataFrame,
    anomaly_explanations: pd.DataFrame,
    pipeline_settings: PipelineSettings,
) -> dg.Output[dict[str, str]]:
    """One PNG per customer: cost, expected cost, flagged steps and incidents, so a reviewer sees
    at a glance whether a flag is a real event. Files: ``<output>/plots/<customer key>.png``."""
    from anomaly_pipelines.core.plots import plot_customers
    from anomaly_pipelines.core.processes import usable_cores

    config = pipeline_settings.config
    directory = output_dir(config, "plots")
    plots = {}
    for cid, group in anomaly_scores.groupby("customer_id", sort=True):
        key = customer_key(str(cid))
        incidents = (
            anomaly_explanations[anomaly_explanations["customer_id"].astype(str) == str(cid)]
            if len(anomaly_explanations)
            else anomaly_explanations
        )
        plots[key] = (group, incidents, directory / f"{key}.png", str(cid))
    drawn = plot_customers(list(plots.values()), usable_cores())
    paths = {key: str(path) for key, path in zip(plots, drawn, strict=True)}
    add_partition_metadata(
        context,
        {
            key: {
                "plot_path": dg.MetadataValue.path(path),
                "plot": md(image_markdown([Path(path)], [key], limit=1)),
            }
            for key, path in paths.items()
        },
    )
    shown = [Path(p) for _, p in sorted(paths.items())]
    metadata: dict[str, Any] = {
        "plot_count": len(paths),
        "plot_dir": dg.MetadataValue.path(str(directory)),
        "plot_paths": md("\n".join(f"- `{p}`" for p in shown[:50])),
    }
    if shown:
        metadata["plots"] = md(image_markdown(shown, limit=3))
    return dg.Output(paths, metadata=metadata)


@dg.asset(group_name="reporting", kinds={"parquet", "csv"}, backfill_policy=SINGLE_RUN)
def scores_export(
    context: AssetExecutionContext,
    anomaly_scores: pd.DataFrame,
    pipeline_settings: PipelineSettings,
) -> dg.MaterializeResult:
    """Every customer's scores in one table for BI tools and notebooks, as Parquet (typed) and
    CSV (anything can read it), at ``<output.directory>/scores/anomaly_scores.{parquet,csv}``."""
    config = pipeline_settings.config
    require_scores(anomaly_scores)
    parquet_path, csv_path = export_paths(config)
    parquet_path.parent.mkdir(parents=True, exist_ok=True)
    scores = anomaly_scores
    if len(scores):
        scores = scores.sort_values(["customer_id", "timestamp"], kind="stable").reset_index(
            drop=True
        )
    atomic_write(parquet_path, lambda p: scores.to_parquet(p, index=False))
    # The CSV is the copy people open in a spreadsheet: text cells are neutralised against
    # formula injection (core.spreadsheet); the Parquet keeps every id exactly.
    atomic_write(csv_path, lambda p: write_csv(scores, p))
    anomalies = scores[scores["is_anomaly"].astype(bool)] if len(scores) else scores
    return dg.MaterializeResult(
        metadata={
            "row_count": len(scores),
            "customers": int(scores["customer_id"].nunique()) if len(scores) else 0,
            "anomaly_count": len(anomalies),
            "parquet_path": dg.MetadataValue.path(str(parquet_path)),
            "csv_path": dg.MetadataValue.path(str(csv_path)),
            "dagster/column_schema": table_schema(scores),
            "dagster/row_count": len(scores),
            "latest_anomalies": md(
                markdown_table(
                    anomalies.sort_values("timestamp", ascending=False)[
                        [
                            "customer_id",
                            "timestamp",
                            "cost",
                            "expected_cost",
                            "hybrid_score",
                            "reasons",
                        ]
                    ]
                    if len(anomalies)
                    else anomalies
                )
            ),
        }
    )


@dg.asset(group_name="reporting", kinds={"markdown", "html", "mlflow"}, backfill_policy=SINGLE_RUN)
def anomaly_report(
    context: AssetExecutionContext,
    anomaly_scores: pd.DataFrame,
    anomaly_explanations: pd.DataFrame,
    anomaly_plots: dict[str, str],
    pipeline_settings: PipelineSettings,
    mlflow_registry: MlflowRegistryResource,
) -> dg.MaterializeResult:
    """A short summary for people: the incidents by severity with their explanations, the
    portfolio plot and a plot per customer, as HTML and Markdown under ``<output>/report``, also
    logged to MLflow so a model version and the report it produced sit side by side."""
    from anomaly_pipelines.core.plots import plot_portfolio
    from anomaly_pipelines.core.report import write_report

    config = pipeline_settings.config
    require_scores(anomaly_scores)
    directory = output_dir(config, "report")
    portfolio = plot_portfolio(
        anomaly_scores, anomaly_explanations, output_dir(config, "plots") / "portfolio.png"
    )
    plots_by_customer: dict[str, Path] = {}
    key_to_id = (
        {customer_key(str(c)): str(c) for c in anomaly_scores["customer_id"].unique()}
        if len(anomaly_scores)
        else {}
    )
    for key, path in anomaly_plots.items():
        if key in key_to_id and Path(path).is_file():
            plots_by_customer[key_to_id[key]] = Path(path)
    html_path, md_path = write_report(
        anomaly_scores, anomaly_explanations, plots_by_customer, directory, portfolio_plot=portfolio
    )
    mlflow_run = mlflow_registry.registry(config).log_report(
        [Path(html_path), Path(md_path), Path(portfolio)],
        run_name=f"report-{context.run_id[:8]}",
        tags={"dagster_run_id": context.run_id},
    )
    markdown_text = Path(md_path).read_text(encoding="utf-8")
    return dg.MaterializeResult(
        metadata={
            "html_path": dg.MetadataValue.path(str(html_path)),
            "markdown_path": dg.MetadataValue.path(str(md_path)),
            "portfolio_plot": md(image_markdown([Path(portfolio)], ["portfolio"], limit=1)),
            "incident_count": len(anomaly_explanations),
            "customers": len(key_to_id),
            "mlflow_run_id": str(mlflow_run),
            "summary": md(markdown_text[:20_000]),
        }
    )

