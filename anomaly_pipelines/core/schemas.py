"""pandera models of the two stages every billing row passes through.

``RawUsage`` describes rows as read from a file: every value is still text, so the checks ask
"is it there, is it readable, can it be a number". ``ValidatedUsage`` describes rows after
coercion: typed, UTC, finite, in range. Both are validated lazily so one pass reports every
failing row and check, which is what lets the quarantine account for each input line.

Limits that come from configuration (maximum cost, accepted currencies, ...) cannot live in a
static class body, so the ``*_schema`` factories add them to the models' schemas as named checks;
the check names are the vocabulary of the quarantine's ``check`` column.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from anomaly_pipelines.core.config import SourceConfig

# Control characters (tab excepted) and U+FFFD, the character undecodable bytes turn into.
_GARBLED = r"[\x00-\x08\x0a-\x1f\x7f\ufffd]"

# Canonical names of FOCUS charge categories; other configured categories keep their own name.
CANONICAL_CATEGORIES = {
    "usage": "Usage",
    "purchase": "Purchase",
    "tax": "Tax",
    "credit": "Credit",
    "refund": "Refund",
    "adjustment": "Adjustment",
}

UtcTimestamp = Annotated[pd.DatetimeTZDtype, "ns", "UTC"]


class RawUsage(pa.DataFrameModel):
    """One row per data line, values as text after null tokens became missing."""

    source_file: Series[str]
    source_line: Series[int]
    customer_id: Series[str] = pa.Field(nullable=False)
    timestamp: Series[str] = pa.Field(nullable=False)
    cost: Series[str] = pa.Field(nullable=False)
    service: Series[str] | None = pa.Field(nullable=True)
    region: Series[str] | None = pa.Field(nullable=True)
    charge_category: Series[str] | None = pa.Field(nullable=False)
    charge_class: Series[str] | None = pa.Field(nullable=True)
    currency: Series[str] | None = pa.Field(nullable=False)

    @pa.check(
        "customer_id", "service", "region", "charge_category", "currency", name="readable_text"
    )
    def readable_text(cls, values: Series[str]) -> Series[bool]:
        # A garbled id would silently become a new customer; garbled dimensions mislead
        # explanations. Both usually mean the file's encoding is not the configured one.
        return ~values.str.contains(_GARBLED, regex=True)

    @pa.check("cost", name="is_number")
    def is_number(cls, values: Series[str]) -> Series[bool]:
        return pd.Series(pd.to_numeric(values, errors="coerce"), index=values.index).notna()

    @pa.check("currency", name="currency_code")
    def currency_code(cls, values: Series[str]) -> Series[bool]:
        return values.str.fullmatch(r"[A-Za-z]{3}")

    class Config:
        strict = False  # readers add bookkeeping columns (duplicate keys, file days)


class ValidatedRows(pa.DataFrameModel):
    """Typed rows: the contract of ``LoadedUsage.usage`` and ``LoadedUsage.signals``."""

    customer_id: Series[str] = pa.Field(nullable=False)
    timestamp: Series[UtcTimestamp] = pa.Field(nullable=False)
    cost: Series[float] = pa.Field(nullable=False)
    charge_category: Series[str] = pa.Field(nullable=False)
    currency: Series[str] | None = pa.Field(nullable=False)
    source_file: Series[str]
    source_line: Series[int]

    @pa.check("cost", name="finite")
    def finite(cls, values: Series[float]) -> Series[bool]:
        return pd.Series(np.isfinite(values.to_numpy(dtype=float)), index=values.index)

    class Config:
        strict = False


class ValidatedUsage(ValidatedRows):
    """Rows that feed the models: usage cannot be negative (credits travel as signals)."""

    @pa.check("cost", name="non_negative")
    def non_negative(cls, values: Series[float]) -> Series[bool]:
        return values >= 0


def raw_schema(source: SourceConfig) -> pa.DataFrameSchema:
    """``RawUsage`` plus the configured id length and known charge categories."""
    schema = RawUsage.to_schema()
    limit = source.validation.max_customer_id_length
    schema = _add_checks(
        schema,
        "customer_id",
        pa.Check(lambda s: s.str.len() <= limit, name="max_customer_id_length"),
    )
    known = {key.casefold() for key in source.charge_categories}
    return _add_checks(
        schema,
        "charge_category",
        pa.Check(lambda s: s.str.casefold().isin(known), name="known_charge_category"),
    )


def validated_schema(source: SourceConfig, *, usage: bool, now: pd.Timestamp) -> pa.DataFrameSchema:
    """``ValidatedUsage`` (or ``ValidatedRows`` for signals) plus the configured limits."""
    rules = source.validation
    model = ValidatedUsage if usage and rules.negative_usage != "keep" else ValidatedRows
    schema = model.to_schema()
    max_abs = float(rules.max_abs_cost)
    schema = _add_checks(
        schema, "cost", pa.Check(lambda s: s.abs() <= max_abs, name="max_abs_cost")
    )
    latest = now + pd.Timedelta(days=rules.max_future_days)
    earliest = pd.Timestamp(rules.min_timestamp, tz="UTC")
    schema = _add_checks(
        schema,
        "timestamp",
        pa.Check(lambda s: s <= latest, name="not_in_future"),
        pa.Check(lambda s: s >= earliest, name="min_timestamp"),
    )
    if source.currency is not None:
        accepted = {source.currency.upper(), *(code.upper() for code in source.exchange_rates)}
        schema = _add_checks(
            schema, "currency", pa.Check(lambda s: s.isin(accepted), name="accepted_currency")
        )
    return schema


def _add_checks(schema: pa.DataFrameSchema, column: str, *checks: pa.Check) -> pa.DataFrameSchema:
    existing = list(schema.columns[column].checks)
    return schema.update_column(column, checks=[*existing, *checks])
