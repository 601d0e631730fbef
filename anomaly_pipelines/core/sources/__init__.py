"""Billing inputs: every source through configuration, every row accounted for.

``load_usage`` reads the configured source (``source.kind``), validates it
(``core.validation``) and returns a ``LoadedUsage``: validated usage rows, the quarantine, the
signals kept apart from usage, and the counts that tie them together. The Dagster layer calls
``list_daily_partitions`` / ``stage_daily_file`` / ``load_day`` for daily folders.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly_pipelines.core.config import PreprocessConfig, SourceConfig
from anomaly_pipelines.core.sources.daily import (
    daily_deliveries,
    daily_files,
    daily_rows,
    list_daily_partitions,
    parse_day,
    stage_daily_file,
)
from anomaly_pipelines.core.sources.focus import focus_rows
from anomaly_pipelines.core.sources.reading import expand_paths
from anomaly_pipelines.core.sources.synthetic import generate_usage
from anomaly_pipelines.core.sources.tabular import notebook_rows, table_rows
from anomaly_pipelines.core.validation import (
    LoadedUsage,
    RawRows,
    SourceError,
    empty_quarantine,
    validate_rows,
)

__all__ = [
    "LoadedUsage",
    "SourceError",
    "list_daily_partitions",
    "load_day",
    "load_usage",
    "read_raw_rows",
    "stage_daily_file",
    "synthetic_loaded",
]

log = logging.getLogger(__name__)

_FILE_READERS = {"notebook_csv": notebook_rows, "focus": focus_rows, "table": table_rows}


def load_usage(source: SourceConfig, preprocess: PreprocessConfig) -> LoadedUsage:
    """Read and validate the configured source; raise ``SourceError`` when it cannot be used."""
    if source.kind == "synthetic":
        return _synthetic(source)
    raw = read_raw_rows(source)
    return validate_rows(raw, source, preprocess)


def load_day(
    source: SourceConfig, preprocess: PreprocessConfig, day: str, path: Path | None = None
) -> LoadedUsage:
    """One day of a daily folder: its newest delivery, or ``path`` (e.g. the staged copy)."""
    if source.kind != "daily_folder":
        raise SourceError(f"load_day needs source.kind 'daily_folder', not {source.kind!r}")
    day = parse_day(day, "day")
    if path is None:
        found = daily_files(source).get(day)
        if found is None:
            raise SourceError(f"{source.path}: no file for day {day}")
        path = found
    return validate_rows(daily_rows(source, {day: Path(path)}), source, preprocess)


def read_raw_rows(source: SourceConfig) -> RawRows:
    """A file-based source as read (text values, reader rejections), before validation."""
    if source.kind == "daily_folder":
        files, notices = daily_deliveries(source)
        for notice in notices:
            log.warning("%s", notice)
        return daily_rows(source, files, notices)
    return _FILE_READERS[source.kind](source, expand_paths(source.path))


def _synthetic(source: SourceConfig) -> LoadedUsage:
    """The demo data in the same shape as a loaded file (generated rows are valid by design)."""
    data = generate_usage(**source.synthetic.model_dump())
    return synthetic_loaded(data.usage, source)


def synthetic_loaded(generated: pd.DataFrame, source: SourceConfig) -> LoadedUsage:
    """Generated rows as a ``LoadedUsage``: categories routed like a file's (credits apart)."""
    rows = generated.reset_index(drop=True).copy()
    rows["customer_id"] = rows["customer_id"].astype("str")
    rows["timestamp"] = pd.to_datetime(rows["timestamp"], utc=True).astype("datetime64[ns, UTC]")
    rows["cost"] = rows["cost"].astype(float)
    rows["source_file"] = "synthetic"
    rows["source_line"] = np.arange(1, len(rows) + 1, dtype=np.int64)
    routes = {key.casefold(): route for key, route in source.charge_categories.items()}
    category = rows["charge_category"].astype("str")
    is_signal = category.str.casefold().map(routes).eq("signal").to_numpy(dtype=bool)
    columns = ["customer_id", "timestamp", "cost", "service", "region", "charge_category"]
    signal_columns = ["customer_id", "timestamp", "charge_category", "cost", "service", "region"]
    return LoadedUsage(
        usage=rows.loc[~is_signal, [*columns, "source_file", "source_line"]].reset_index(drop=True),
        quarantine=empty_quarantine(),
        signals=rows.loc[is_signal, [*signal_columns, "source_file", "source_line"]].reset_index(
            drop=True
        ),
        input_rows=len(rows),
        files=["synthetic"],
        frequency="1D",
    )
