"""The notebook format and generic long tables: columns named by configuration.

The notebook format is one row per customer per day (``Date``, ``TotalCost`` and a customer
column); a second row for the same customer and day is a duplicate. A generic table maps any
column names onto ``customer_id``, ``timestamp``, ``cost`` and optional dimensions, and keeps its
timestamps' resolution unless told to floor them, so 5-minute metrics stay 5-minute.
"""

from __future__ import annotations

from pathlib import Path

from anomaly_pipelines.core.config import SourceConfig
from anomaly_pipelines.core.sources.reading import FileRows, combine, find_column, read_rows
from anomaly_pipelines.core.validation import RawRows, SourceError

TABLE_DIMENSIONS = ("service", "region", "charge_category", "currency", "charge_class")


def _key_columns(source: SourceConfig, header: list[str], file: str) -> dict[str, str]:
    return {
        "customer_id": find_column(
            header, source.customer_column, file=file, setting="source.customer_column"
        ),
        "timestamp": find_column(
            header, source.timestamp_column, file=file, setting="source.timestamp_column"
        ),
        "cost": find_column(header, source.cost_column, file=file, setting="source.cost_column"),
    }


def read_notebook_file(source: SourceConfig, path: Path) -> FileRows:
    return read_rows(
        path,
        lambda header, file: _key_columns(source, header, file),
        delimiter=source.delimiter,
        encoding=source.encoding,
    )


def notebook_rows(source: SourceConfig, paths: list[Path]) -> RawRows:
    """One value per customer and UTC day; the day is the key for duplicates."""
    parts = [read_notebook_file(source, p) for p in paths]
    return combine(parts, floor="D", duplicate_key=["customer_id", "timestamp"])


def read_table_file(source: SourceConfig, path: Path) -> FileRows:
    unknown = sorted(set(source.table.columns) - set(TABLE_DIMENSIONS))
    if unknown:
        raise SourceError(
            f"source.table.columns: unknown dimension(s) {unknown}; allowed: {list(TABLE_DIMENSIONS)}"
        )

    def resolve(header: list[str], file: str) -> dict[str, str]:
        mapping = _key_columns(source, header, file)
        for name, column in source.table.columns.items():
            mapping[name] = find_column(
                header, column, file=file, setting=f"source.table.columns.{name}"
            )
        return mapping

    return read_rows(path, resolve, delimiter=source.delimiter, encoding=source.encoding)


def table_rows(source: SourceConfig, paths: list[Path]) -> RawRows:
    """Long rows; duplicates share customer, timestamp and every mapped dimension by default."""
    parts = [read_table_file(source, p) for p in paths]
    key = source.table.duplicate_key or [
        "customer_id",
        "timestamp",
        *[d for d in TABLE_DIMENSIONS if d in source.table.columns and d != "charge_class"],
    ]
    return combine(parts, floor=source.table.floor, duplicate_key=list(key))
