"""FinOps FOCUS exports (1.0 and later) to one daily series per customer.

FOCUS rows are charges per resource, SKU and (usually) hour. The customer is a column
(``SubAccountId`` by default) or a key of the JSON ``Tags`` column; the day is the UTC day of
``ChargePeriodStart``; the cost column is configurable (``BilledCost`` or ``EffectiveCost``).
``ServiceName``, ``RegionId`` and ``ChargeCategory`` travel along for explanations, and
``ChargeCategory`` / ``ChargeClass`` decide whether a row is usage or a separate signal.
Missing values are the text "NULL" in real exports (``source.null_values``).
"""

from __future__ import annotations

import json
from pathlib import Path

from anomaly_pipelines.core.config import SourceConfig
from anomaly_pipelines.core.sources.reading import (
    FileRows,
    combine,
    find_column,
    optional_column,
    read_rows,
)
from anomaly_pipelines.core.validation import RECORD, RawRows, quarantine_entry

TAG_PREFIX = "tag:"
# Optional FOCUS columns, newest name first (FOCUS 0.5 called RegionId "Region").
OPTIONAL = {
    "service": ("ServiceName",),
    "region": ("RegionId", "Region"),
    "currency": ("BillingCurrency",),
    "charge_class": ("ChargeClass",),
}


def _tag_key(source: SourceConfig) -> str | None:
    key = source.focus.customer_key
    return key[len(TAG_PREFIX) :] if key.startswith(TAG_PREFIX) else None


def read_focus_file(source: SourceConfig, path: Path) -> FileRows:
    focus = source.focus
    tag = _tag_key(source)

    def resolve(header: list[str], file: str) -> dict[str, str]:
        mapping = {
            "timestamp": find_column(
                header, focus.timestamp_column, file=file, setting="source.focus.timestamp_column"
            ),
            "cost": find_column(
                header, focus.cost_column, file=file, setting="source.focus.cost_column"
            ),
            "charge_category": find_column(
                header, "ChargeCategory", file=file, setting="FOCUS ChargeCategory"
            ),
        }
        if tag is None:
            mapping["customer_id"] = find_column(
                header, focus.customer_key, file=file, setting="source.focus.customer_key"
            )
        else:
            mapping["tags"] = find_column(
                header, "Tags", file=file, setting="source.focus.customer_key (tag:)"
            )
        for name, candidates in OPTIONAL.items():
            column = optional_column(header, *candidates)
            if column is not None:
                mapping[name] = column
        return mapping

    rows = read_rows(
        path,
        resolve,
        delimiter=source.delimiter,
        encoding=source.encoding,
        record_columns=list(focus.duplicate_key) if focus.duplicate_key else True,
    )
    if tag is not None:
        rows = _customer_from_tags(rows, tag, source)
    return rows


def _customer_from_tags(rows: FileRows, tag: str, source: SourceConfig) -> FileRows:
    """Customer id from the ``Tags`` JSON; rows whose tags cannot be read are rejected."""
    frame = rows.frame
    text = frame.pop("tags").astype("str").str.strip()
    text = text.mask(text.isin(source.null_values))
    values: dict[str, str | None] = {}
    broken: set[str] = set()
    for raw in text.dropna().unique():
        try:
            tags = json.loads(raw)
        except ValueError:
            broken.add(raw)
            continue
        if not isinstance(tags, dict):
            broken.add(raw)
            continue
        value = tags.get(tag)
        values[raw] = None if value is None or str(value).strip() == "" else str(value)
    bad = text.isin(broken)
    for line, raw in zip(frame.loc[bad, "source_line"], text[bad], strict=True):
        rows.rejected.append(
            quarantine_entry(rows.path, line, "Tags", "tags_json", raw, "Tags is not a JSON object")
        )
    frame = frame[~bad].copy()
    customer = text[~bad].map(values)
    if source.focus.untagged_customer is not None:
        customer = customer.fillna(source.focus.untagged_customer)
    frame.insert(2, "customer_id", customer.astype("str"))
    rows.frame = frame
    rows.columns["customer_id"] = rows.columns.pop("tags")
    return rows


def focus_rows(source: SourceConfig, paths: list[Path]) -> RawRows:
    """FOCUS files to rows; a row repeated in every column (or ``duplicate_key``) is a duplicate."""
    parts = [read_focus_file(source, p) for p in paths]
    tag = _tag_key(source)
    reasons = {}
    if tag is not None:
        reasons[("customer_id", "not_nullable")] = (
            f"no '{tag}' tag (source.focus.customer_key) and source.focus.untagged_customer is unset"
        )
    return combine(parts, floor="D", duplicate_key=[RECORD], reasons=reasons)
