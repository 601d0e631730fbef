"""Ingest: read the configured source, validate it, register customers, stage daily files.

``raw_usage`` is what the readers return: every data line as text, plus lines they could not
parse. ``validated_usage`` runs the pandera models over it (lazily, so every failing row and
check is reported at once) and splits the result into usage, quarantine and signals. Customer
partitions are registered from the validated rows, so a new customer in the data becomes a
partition without a code change.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.ids import customer_key
from anomaly_pipelines.defs.metadata import markdown_table, md
from anomaly_pipelines.defs.partitions import CUSTOMERS, daily_partitions
from anomaly_pipelines.defs.resources import PipelineSettings


def read_raw(config: PipelineConfig) -> Any:
    """The source as read, before validation: ``RawRows`` for files and folders. The synthetic
    generator produces typed rows that are valid by construction, so for it the load itself
    (``LoadedUsage``, the same one ``detect()`` callers get) is the raw stage."""
    from anomaly_pipelines.core.sources import load_usage, read_raw_rows

    if config.source.kind == "synthetic":
        return load_usage(config.source, config.preprocess)
    return read_raw_rows(config.source)


def register_customers(context: AssetExecutionContext, customer_ids: pd.Series) -> list[str]:
    """Add a dynamic partition for every customer not registered yet; return the new keys."""
    keys = sorted(set(customer_ids.astype(str).map(customer_key)))
    known = set(context.instance.get_dynamic_partitions(CUSTOMERS))
    new = [k for k in keys if k not in known]
    if new:
        context.instance.add_dynamic_partitions(CUSTOMERS, new)
        context.log.info(f"registered {len(new)} new customer partition(s): {new[:10]}")
    return new


@dg.asset(group_name="ingest", kinds={"pandas"})
def raw_usage(
    context: AssetExecutionContext, pipeline_settings: PipelineSettings
) -> dg.Output[Any]:
    """Billing rows exactly as the configured source holds them (``source.kind``/``source.path``),
    values still text, plus the lines the readers could not parse. Kept apart from validation so
    a parse problem can be inspected without re-reading the files."""
    from anomaly_pipelines.core.validation import LoadedUsage

    config = pipeline_settings.config
    raw = read_raw(config)
    if isinstance(raw, LoadedUsage):
        metadata: dict[str, Any] = {
            "source_kind": config.source.kind,
            "input_rows": int(raw.input_rows),
            "files": ", ".join(raw.files),
            "preview": md(markdown_table(raw.usage.head(10))),
        }
    else:
        metadata = {
            "source_kind": config.source.kind,
            "input_rows": int(sum(raw.rows_per_file.values())),
            "files": len(raw.rows_per_file),
            "rejected_while_reading": len(raw.rejected),
            "rows_per_file": md(
                markdown_table(
                    pd.DataFrame(
                        {"file": list(raw.rows_per_file), "rows": list(raw.rows_per_file.values())}
                    )
                )
            ),
            "preview": md(markdown_table(raw.frame.head(10))),
        }
    return dg.Output(raw, metadata=metadata)


@dg.multi_asset(
    outs={
        "validated_usage": dg.AssetOut(
            kinds={"pandas", "pandera"},
            description=(
                "Typed usage rows that passed the pandera models: one row per customer, day and "
                "dimension, UTC timestamps, finite non-negative cost. Credits and tax are not here "
                "(see usage_signals) so they cannot hide a spike."
            ),
        ),
        "usage_quarantine": dg.AssetOut(
            kinds={"pandas"},
            description="Every rejected input line with file, line, column, failed check and reason.",
        ),
        "usage_signals": dg.AssetOut(
            kinds={"pandas"},
            description="Credits, refunds, adjustments and tax, kept apart from modelled usage.",
        ),
    },
    group_name="ingest",
)
def validated_usage(
    context: AssetExecutionContext, raw_usage: Any, pipeline_settings: PipelineSettings
) -> Iterator[dg.Output[pd.DataFrame]]:
    """Validate the raw rows lazily with the pandera models (``core.schemas``), route them, and
    register a customer partition for every customer found."""
    from anomaly_pipelines.core.validation import LoadedUsage, validate_rows

    config = pipeline_settings.config
    loaded = (
        raw_usage
        if isinstance(raw_usage, LoadedUsage)
        else validate_rows(raw_usage, config.source, config.preprocess)
    )
    new_keys = register_customers(context, loaded.usage["customer_id"])
    summary = loaded.summary()
    for notice in loaded.notices:
        context.log.warning(notice)
    by_check = (
        loaded.quarantine.groupby(["column", "check"]).size().rename("entries").reset_index()
        if len(loaded.quarantine)
        else pd.DataFrame()
    )
    yield dg.Output(
        loaded.usage,
        output_name="validated_usage",
        metadata={
            **{k: (float(v) if isinstance(v, float) else int(v)) for k, v in summary.items()},
            "row_count": len(loaded.usage),
            "new_customer_partitions": len(new_keys),
            "dagster/row_count": len(loaded.usage),
        },
    )
    yield dg.Output(
        loaded.quarantine,
        output_name="usage_quarantine",
        metadata={
            "row_count": len(loaded.quarantine),
            "quarantined_lines": int(summary["quarantined_rows"]),
            "by_check": md(markdown_table(by_check)),
            "first_entries": md(markdown_table(loaded.quarantine.head(10))),
            # Warnings about whole files, e.g. an empty re-delivery (source.daily.empty_redelivery).
            "file_notices": md(markdown_table(pd.DataFrame({"notice": loaded.notices}))),
        },
    )
    yield dg.Output(
        loaded.signals,
        output_name="usage_signals",
        metadata={
            "row_count": len(loaded.signals),
            "by_category": md(
                markdown_table(
                    loaded.signals.groupby("charge_category")["cost"]
                    .agg(["size", "sum"])
                    .reset_index()
                    if len(loaded.signals)
                    else pd.DataFrame()
                )
            ),
        },
    )


def daily_usage(
    context: AssetExecutionContext, pipeline_settings: PipelineSettings
) -> dg.Output[pd.DataFrame]:
    """One day of validated usage rows. For a ``daily_folder`` source the day's newest file is
    first copied to ``output.staging_directory`` (so a re-delivery mid-run cannot change what was
    read) and validated alone; for other sources the day is cut from the loaded source. New
    customers in the day's data are registered as partitions."""
    from anomaly_pipelines.core.sources import load_day, load_usage, stage_daily_file
    from anomaly_pipelines.core.sources.daily import daily_deliveries

    config = pipeline_settings.config
    day = context.partition_key
    staged: Path | None = None
    notices: list[str] = []
    if config.source.kind == "daily_folder":
        # An empty re-delivery of this day (source.daily.empty_redelivery) is reported here.
        notices = [n for n in daily_deliveries(config.source)[1] if f" of {day} " in n]
        for notice in notices:
            context.log.warning(notice)
        staged = stage_daily_file(config.source, day, Path(config.output.staging_directory))
        if staged is None:
            context.log.warning(f"no billing file for {day} in {config.source.path}")
            usage = _empty_usage()
        else:
            usage = load_day(config.source, config.preprocess, day, staged).usage
    else:
        window = context.partition_time_window
        start, end = (
            pd.Timestamp(window.start).tz_convert("UTC"),
            pd.Timestamp(window.end).tz_convert("UTC"),
        )
        loaded = load_usage(config.source, config.preprocess).usage
        usage = loaded[(loaded["timestamp"] >= start) & (loaded["timestamp"] < end)].reset_index(
            drop=True
        )
        if usage.empty:
            context.log.warning(f"the {config.source.kind} source has no rows on {day}")
    new_keys = register_customers(context, usage["customer_id"]) if len(usage) else []
    metadata: dict[str, Any] = {
        "row_count": len(usage),
        "customers": int(usage["customer_id"].nunique()) if len(usage) else 0,
        "new_customer_partitions": len(new_keys),
        "total_cost": float(usage["cost"].sum()) if len(usage) else 0.0,
    }
    if staged is not None:
        metadata["staged_file"] = dg.MetadataValue.path(str(staged))
    if notices:
        metadata["file_notices"] = md(markdown_table(pd.DataFrame({"notice": notices})))
    return dg.Output(usage, metadata=metadata)


def _empty_usage() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": pd.Series(dtype="str"),
            "timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
            "cost": pd.Series(dtype=float),
        }
    )


def daily_usage_asset(config: PipelineConfig) -> dg.AssetsDefinition:
    """``daily_usage`` on the code location's days (``orchestration`` of the configuration
    ``build_definitions`` resolved)."""
    return dg.asset(
        partitions_def=daily_partitions(config.orchestration), group_name="daily", kinds={"pandas"}
    )(daily_usage)
