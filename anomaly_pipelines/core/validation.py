"""From rows of text to validated usage, with every input line accounted for.

Readers (``core.sources``) hand over ``RawRows``: one row per data line, values still text, plus
the lines they already rejected (broken quoting, wrong field counts). This module then

1. validates the text with ``RawUsage`` (lazily, so every failing row and check is found),
2. coerces what passed (numbers, timestamps in one format per file, UTC) and routes each row to
   usage or to the separate signals (credits, refunds, adjustments, tax),
3. validates the typed rows with ``ValidatedUsage`` / ``ValidatedRows``,
4. converts or refuses mixed currencies, applies the duplicate policy,
5. fails when a file's failure rate is above ``preprocess.max_failure_rate``.

Every input line ends in exactly one place: a usage row, a signal row, the ``duplicates`` report
(merged into a kept line by ``sum``/``last``) or the quarantine. ``LoadedUsage.accounting()``
lists that place per line, so the invariant is testable rather than promised.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandas.tseries.api import guess_datetime_format

from anomaly_pipelines.core.config import PreprocessConfig, SourceConfig
from anomaly_pipelines.core.schemas import CANONICAL_CATEGORIES, raw_schema, validated_schema

QUARANTINE_COLUMNS = ["source_file", "source_line", "column", "check", "value", "reason"]
DUPLICATE_COLUMNS = [
    "source_file",
    "source_line",
    "kept_file",
    "kept_line",
    "action",
    "customer_id",
    "timestamp",
]
TEXT_COLUMNS = [
    "customer_id",
    "timestamp",
    "cost",
    "service",
    "region",
    "charge_category",
    "charge_class",
    "currency",
]
DIMENSIONS = ["service", "region", "charge_category", "currency"]
RECORD = "_record"  # readers' key of a whole (or partial) source record, for duplicate checks
_MAX_VALUE_CHARS = 200
_FIRST_FAILURES = 5

_ISO = re.compile(
    r"^\d{4}-\d{2}-\d{2}"
    r"(?P<time>[T ]\d{2}(?::\d{2}(?::\d{2}(?:[.,]\d+)?)?)?)?"
    r"(?P<zone>\s*(?:Z|z|UTC|[+-]\d{2}(?::?\d{2})?))?$"
)
_TIME_DIRECTIVES = ("%H", "%I", "%M", "%S", "%p", "%f")
# Timestamps that can be floored to a day or an hour without leaving nanosecond range.
_FLOOR_LOW = pd.Timestamp("1678-01-01", tz="UTC")
_FLOOR_HIGH = pd.Timestamp("2262-01-01", tz="UTC")


class SourceError(ValueError):
    """A source cannot be loaded; the message names the file and, where known, line and column."""


@dataclass
class LoadedUsage:
    """Validated usage, quarantined rows and kept-apart signals of one load."""

    usage: pd.DataFrame
    quarantine: pd.DataFrame
    signals: pd.DataFrame
    input_rows: int
    files: list[str]
    # Lines merged into another line by the duplicate policy (sum / last): where each went.
    duplicates: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=DUPLICATE_COLUMNS)
    )
    # The step timestamps were floored to ("1D" for daily sources), for
    # ``preprocess.frequency``: sparse daily series must not have their grid inferred.
    frequency: str | None = None
    # Warnings about whole files (not lines), e.g. an empty re-delivery of a day.
    notices: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int | float]:
        """Counts per fate; ``input_rows == valid_rows + quarantined_rows`` always holds."""
        quarantined = int(
            self.quarantine[["source_file", "source_line"]].drop_duplicates().shape[0]
        )
        valid = len(self.usage) + len(self.duplicates) + len(self.signals)
        return {
            "input_rows": int(self.input_rows),
            "valid_rows": int(valid),
            "usage_rows": len(self.usage),
            "signal_rows": len(self.signals),
            "duplicate_rows": len(self.duplicates),
            "quarantined_rows": quarantined,
            "failure_rate": quarantined / self.input_rows if self.input_rows else 0.0,
            "customers": int(self.usage["customer_id"].nunique()) if len(self.usage) else 0,
        }

    def accounting(self) -> pd.DataFrame:
        """One row per input line and the place it ended in (usage, signal, duplicate, quarantine).

        A line appears once unless a bug put it in two places, which is what tests look for.
        """
        parts = [
            self.usage[["source_file", "source_line"]].assign(fate="usage"),
            self.signals[["source_file", "source_line"]].assign(fate="signal"),
            self.duplicates[["source_file", "source_line"]].assign(fate="duplicate"),
            self.quarantine[["source_file", "source_line"]]
            .drop_duplicates()
            .assign(fate="quarantine"),
        ]
        return pd.concat(parts, ignore_index=True)


@dataclass
class RawRows:
    """What a reader hands to validation."""

    # source_file, source_line, customer_id, timestamp, cost (+ optional dimension columns and
    # ``_record``), all text; one row per data line not rejected while reading.
    frame: pd.DataFrame
    rejected: pd.DataFrame  # QUARANTINE_COLUMNS: lines rejected while reading
    rows_per_file: dict[str, int]  # data lines read per file, including rejected ones
    floor: str | None  # floor timestamps to this step ("D" for daily sources)
    duplicate_key: list[str]  # canonical columns (or ``_record``) that identify one value
    file_days: dict[str, pd.Timestamp] | None = None  # daily files: rows must fall on that day
    # Clearer reasons for (column, check) pairs in a given source, e.g. a missing tag.
    reasons: dict[tuple[str, str], str] = field(default_factory=dict)
    # Warnings about whole files that are not about a line (e.g. an empty re-delivery).
    notices: list[str] = field(default_factory=list)
    # Per file, canonical column -> the file's own column name (quarantine entries use the latter).
    column_names: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        return list(self.rows_per_file)


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype=int if c == "source_line" else "str") for c in QUARANTINE_COLUMNS}
    )


def quarantine_entry(
    file: str, line: int, column: str, check: str, value: object, reason: str
) -> dict[str, object]:
    return {
        "source_file": file,
        "source_line": int(line),
        "column": column,
        "check": check,
        "value": _clip(value),
        "reason": reason,
    }


def validate_rows(
    raw: RawRows,
    source: SourceConfig,
    preprocess: PreprocessConfig,
    now: pd.Timestamp | None = None,
) -> LoadedUsage:
    """Validate ``raw`` into a ``LoadedUsage``; raise ``SourceError`` above the failure rate."""
    now = pd.Timestamp.now(tz="UTC") if now is None else now
    input_rows = sum(raw.rows_per_file.values())
    if input_rows == 0:
        raise SourceError(
            f"{', '.join(raw.files) or source.path}: no data rows (empty or header only)"
        )

    frame = raw.frame.reset_index(drop=True)
    text_columns = [c for c in TEXT_COLUMNS if c in frame.columns]
    original = frame[text_columns].copy()
    for column in text_columns:
        frame[column] = _clean_text(frame[column], source.null_values)
    frame["source_line"] = frame["source_line"].astype(np.int64)
    frame["source_file"] = frame["source_file"].astype("str")
    notes = _Notes(source, raw.reasons, raw.column_names)

    quarantine = [raw.rejected]
    entries, failed = _lazy_validate(raw_schema(source), frame, original, notes, typed=False)
    quarantine.append(entries)
    good = frame.drop(index=failed)

    typed, format_by_file = _coerce(good, source, raw.floor)
    notes.formats = format_by_file
    usage_mask = typed["route"] == "usage"
    valid_parts = []
    for is_usage in (True, False):
        part = typed[usage_mask if is_usage else ~usage_mask]
        entries, failed = _lazy_validate(
            validated_schema(source, usage=is_usage, now=now), part, original, notes, typed=True
        )
        quarantine.append(entries)
        valid_parts.append(part.drop(index=failed))
    valid = pd.concat(valid_parts)

    if raw.file_days:
        valid, entries = _check_file_days(valid, raw.file_days, original, notes)
        quarantine.append(entries)
    if "currency" in valid.columns:
        valid = _convert_currency(valid, source)
    order = {name: i for i, name in enumerate(raw.files)}
    valid = valid.assign(_file_order=valid["source_file"].map(order)).sort_values(
        ["_file_order", "source_line"], kind="stable"
    )
    valid, duplicates, entries = _apply_duplicates(
        valid, raw.duplicate_key, preprocess.duplicates, notes
    )
    quarantine.append(entries)

    quarantine_frame = _concat_quarantine(quarantine)
    loaded = LoadedUsage(
        usage=_output(valid[valid["route"] == "usage"], signals=False),
        quarantine=quarantine_frame,
        signals=_output(valid[valid["route"] == "signal"], signals=True),
        input_rows=input_rows,
        files=raw.files,
        duplicates=duplicates,
        frequency="1D" if raw.floor == "D" else raw.floor,
        notices=list(raw.notices),
    )
    _check_failure_rate(loaded, raw.rows_per_file, preprocess.max_failure_rate)
    return loaded


class _Notes:
    """Human reasons for quarantine entries, keyed by pandera check names."""

    def __init__(
        self,
        source: SourceConfig,
        overrides: dict[tuple[str, str], str],
        column_names: dict[str, dict[str, str]],
    ) -> None:
        self.source = source
        self.overrides = overrides
        self.column_names = column_names
        self.formats: dict[str, str] = {}

    def label(self, file: str, column: str) -> str:
        """The file's own name for a canonical column (or comma-separated columns)."""
        names = self.column_names.get(file, {})
        return ",".join(names.get(part, part) for part in column.split(","))

    def dst_check(self, value: str, file: str) -> str | None:
        """``dst_ambiguous`` / ``dst_nonexistent`` when ``value`` read with the file's format
        is a wall time that a daylight-saving change repeats or skips in ``source.timezone``."""
        if self.source.timezone == "UTC" or not value:
            return None
        fmt = self.formats.get(file)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if fmt and fmt != "ISO 8601":
                    naive = pd.to_datetime(value, format=fmt)
                else:
                    naive = pd.Timestamp(value)
            if naive is pd.NaT or naive.tzinfo is not None:
                return None
            zone = self.source.timezone
            if naive.tz_localize(zone, ambiguous=True, nonexistent="NaT") is pd.NaT:
                return "dst_nonexistent"
            if naive.tz_localize(zone, ambiguous="NaT", nonexistent="NaT") is pd.NaT:
                return "dst_ambiguous"
        except (ValueError, TypeError, OverflowError):
            return None
        return None

    def reason(self, column: str, check: str, value: str, file: str) -> str:
        if (column, check) in self.overrides:
            return self.overrides[(column, check)]
        rules = self.source.validation
        if check == "dst_ambiguous":
            return (
                f"timestamp '{_clip(value)}' exists twice in source.timezone = "
                f"{self.source.timezone} (the hour repeated when daylight saving time ends), so "
                "it cannot be placed in UTC; export times with their offset or in UTC"
            )
        if check == "dst_nonexistent":
            return (
                f"timestamp '{_clip(value)}' does not exist in source.timezone = "
                f"{self.source.timezone} (the hour skipped when daylight saving time starts); "
                "export times with their offset or in UTC"
            )
        if check == "timestamp_format":
            fmt = self.formats.get(file, "an unknown format")
            return (
                f"timestamp '{_clip(value)}' cannot be read with the file's format {fmt}; "
                "set source.timestamp_format if needed"
            )
        texts = {
            "not_nullable": f"{self.label(file, column)} is missing",
            "readable_text": (
                f"{self.label(file, column)} contains control characters or bytes that are not valid "
                f"{self.source.encoding} (set source.encoding if the file uses another one)"
            ),
            "is_number": f"cost '{_clip(value)}' is not a number",
            "currency_code": f"currency '{_clip(value)}' is not a 3-letter ISO 4217 code",
            "known_charge_category": (
                f"charge category '{_clip(value)}' is not one of "
                f"{sorted(self.source.charge_categories)} (source.charge_categories)"
            ),
            "max_customer_id_length": (
                f"customer id longer than {rules.max_customer_id_length} characters "
                "(source.validation.max_customer_id_length)"
            ),
            "finite": "cost is infinite",
            "non_negative": (
                "negative usage cost (a credit or refund exported as usage?); "
                "set source.validation.negative_usage to 'signal' or 'keep' to accept it"
            ),
            "max_abs_cost": (
                f"|cost| above source.validation.max_abs_cost = {rules.max_abs_cost:g}"
            ),
            "not_in_future": (
                f"timestamp more than {rules.max_future_days:g} day(s) in the future "
                "(source.validation.max_future_days)"
            ),
            "min_timestamp": f"timestamp before source.validation.min_timestamp = {rules.min_timestamp}",
            "accepted_currency": (
                f"currency '{_clip(value)}' is neither source.currency = {self.source.currency} "
                "nor in source.exchange_rates"
            ),
        }
        return texts.get(check, f"{column} failed check {check}")


def _lazy_validate(
    schema: pa.DataFrameSchema,
    frame: pd.DataFrame,
    original: pd.DataFrame,
    notes: _Notes,
    *,
    typed: bool,
) -> tuple[pd.DataFrame, pd.Index]:
    """Quarantine entries for every failing (row, column, check) and the failing row labels."""
    if frame.empty:
        return empty_quarantine(), pd.Index([])
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    else:
        return empty_quarantine(), pd.Index([])
    structural = cases[cases["index"].isna()]
    if not structural.empty:
        # Column-level failures (missing column, wrong dtype) mean a reader broke its contract.
        first = structural.iloc[0]
        raise SourceError(
            f"{', '.join(sorted(frame['source_file'].unique()))}: column '{first['column']}' "
            f"failed {first['check']} ({first['failure_case']})"
        )
    cases = cases.assign(index=cases["index"].astype(np.int64))
    cases = cases.drop_duplicates(["index", "column", "check"])
    rows = []
    for label, column, check, case in zip(
        cases["index"], cases["column"], cases["check"], cases["failure_case"], strict=True
    ):
        file = frame.at[label, "source_file"]
        value = original.at[label, column] if column in original.columns else case
        value = "" if _isna(value) else str(value)
        if typed and column == "timestamp" and check == "not_nullable":
            check = "timestamp_format"  # the text was there (raw stage) but could not be parsed
            check = notes.dst_check(value, file) or check
        rows.append(
            quarantine_entry(
                file,
                frame.at[label, "source_line"],
                notes.label(file, column),
                check,
                value,
                notes.reason(column, check, value, file),
            )
        )
    return pd.DataFrame(rows, columns=QUARANTINE_COLUMNS), pd.Index(cases["index"].unique())


def _clean_text(values: pd.Series, null_values: list[str]) -> pd.Series:
    text = values.astype("str").str.strip()
    return text.mask(text.isin(null_values) | values.isna())


def _coerce(
    frame: pd.DataFrame, source: SourceConfig, floor: str | None
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Typed columns, the route of each row and the timestamp format used per file."""
    out = frame.copy()
    out["cost"] = pd.to_numeric(out["cost"], errors="coerce").astype(float)
    formats: dict[str, str] = {}
    parts = [pd.Series(pd.NaT, index=out.index[:0], dtype="datetime64[ns, UTC]")]
    for file, rows in out.groupby("source_file", sort=False):
        parsed, formats[str(file)] = parse_timestamps(
            rows["timestamp"], source.timestamp_format, source.timezone, str(file)
        )
        parts.append(parsed)
    # One concatenation: assigning each file's rows into a frame-long column costs a pass
    # over the whole column per file, which a daily folder of hundreds of files pays.
    stamps = pd.concat(parts).reindex(out.index)
    if floor:
        # Values pinned to the nanosecond bounds (year 1677 or 2262: typos such as 0001-01-01)
        # cannot be floored without overflowing; they stay as they are and the range checks
        # quarantine them with their text.
        inside = stamps.notna() & (stamps > _FLOOR_LOW) & (stamps < _FLOOR_HIGH)
        stamps.loc[inside] = _floor(stamps[inside], floor, source.timezone)
    out["timestamp"] = stamps
    names = {
        key.casefold(): CANONICAL_CATEGORIES.get(key.casefold(), key)
        for key in source.charge_categories
    }
    routes = {key.casefold(): route for key, route in source.charge_categories.items()}
    if "charge_category" in out.columns:
        folded = out["charge_category"].str.casefold()
        out["charge_category"] = folded.map(names).astype("str")
        out["route"] = folded.map(routes).astype("str")
    else:
        out["charge_category"] = "Usage"
        out["route"] = "usage"
    if "charge_class" in out.columns:
        correction = out["charge_class"].str.casefold().eq("correction").fillna(False).astype(bool)
        out.loc[correction, "route"] = source.corrections
    if source.validation.negative_usage == "signal":
        out.loc[(out["route"] == "usage") & (out["cost"] < 0), "route"] = "signal"
    for column in ("service", "region"):
        if column in out.columns:
            out[column] = _canonical_spelling(out[column])
    if "currency" in out.columns:
        out["currency"] = out["currency"].str.upper()
    return out, formats


def _floor(stamps: pd.Series, floor: str, timezone: str) -> pd.Series:
    """Floor UTC timestamps to ``floor``. Whole days are days of ``source.timezone``: 00:30 in
    Berlin is that day's cost, not the previous UTC day's. The day is then labelled like a
    date-only value (its midnight in UTC), so dated and timed rows of one day agree."""
    step = pd.tseries.frequencies.to_offset(floor)
    day = pd.tseries.frequencies.to_offset("D")
    if timezone == "UTC" or not (step.rule_code == day.rule_code and step.n >= 1):
        return stamps.dt.floor(floor)
    wall = stamps.dt.tz_convert(timezone).dt.tz_localize(None)
    return wall.dt.floor(floor).dt.tz_localize("UTC")


def _canonical_spelling(values: pd.Series) -> pd.Series:
    """Map case variants ("COMPUTE", "Compute") to their most frequent spelling."""
    counts = values.value_counts()
    if counts.empty:
        return values
    table = pd.DataFrame({"value": counts.index.astype("str"), "n": counts.to_numpy()})
    table["key"] = table["value"].str.casefold()
    best = table.sort_values(["key", "n", "value"], ascending=[True, False, True]).drop_duplicates(
        "key"
    )
    mapping = dict(zip(best["key"], best["value"], strict=True))
    return values.str.casefold().map(mapping).astype("str").where(values.notna())


def parse_timestamps(
    values: pd.Series, fmt: str | None, timezone: str, file: str
) -> tuple[pd.Series, str]:
    """Parse text timestamps to UTC with one format per file; unparseable values become NaT.

    Without a configured format the file's format is the one that reads the most values: ISO
    8601 (any precision, with or without offset) or a format guessed from the other values.
    When two formats read the same values differently (01/06/2024: 1 June or 6 January?) the
    file is refused instead of guessed. Date-only values are UTC day labels and are not shifted
    by ``timezone``, which only applies to values with a time and no offset.
    """
    known = values.notna().to_numpy()
    present = values[known]
    if present.empty:
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]"), fmt or "ISO 8601"
    unique = pd.Index(present.unique()).astype("str")
    if fmt is not None:
        parsed, description = _parse_format(unique, fmt, timezone), fmt
    else:
        parsed, description = _infer_and_parse(unique, timezone, file)
    parsed = _clip_to_ns(parsed)
    codes = unique.get_indexer(present.astype("str"))
    # As integers (NaT included): a column of Timestamp objects costs a Python object per row.
    stamps = np.full(len(values), np.datetime64("NaT", "ns")).view(np.int64)
    stamps[known] = parsed.array.asi8[codes]
    result = pd.Series(stamps.view("datetime64[ns]"), index=values.index).dt.tz_localize("UTC")
    return result, description


def _infer_and_parse(unique: pd.Index, timezone: str, file: str) -> tuple[pd.Series, str]:
    candidates: dict[str, pd.Series] = {}
    is_iso = np.asarray(unique.str.match(_ISO), dtype=bool)
    if is_iso.any():
        candidates["ISO 8601"] = _parse_iso(unique, is_iso, timezone)
    guesses: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for value in unique[~is_iso][:200]:
            for dayfirst in (False, True):
                guess = guess_datetime_format(value, dayfirst=dayfirst)
                if guess and not _year_day_month(guess):
                    guesses.add(guess)
    for guess in sorted(guesses):
        candidates[guess] = _parse_format(unique, guess, timezone)
    if not candidates:
        return pd.Series(
            pd.NaT, index=unique, dtype="datetime64[ns, UTC]"
        ), "no recognisable date format"
    counts = {name: int(parsed.notna().sum()) for name, parsed in candidates.items()}
    best = max(counts.values())
    tied = [name for name, count in counts.items() if count == best]
    chosen = tied[0]
    for other in tied[1:]:
        both = candidates[chosen].notna() & candidates[other].notna()
        differ = both & (candidates[chosen] != candidates[other])
        if differ.any():
            example = unique[np.flatnonzero(differ.to_numpy())[0]]
            raise SourceError(
                f"{file}: column timestamp: dates such as '{example}' read differently as "
                f"{chosen} and {other}; set source.timestamp_format to the file's format"
            )
    return candidates[chosen], chosen


def _year_day_month(fmt: str) -> bool:
    # "%Y/%d/%m" is a guess pandas offers for "2024/01/05" with dayfirst; nobody writes dates so.
    positions = [fmt.find(d) for d in ("%Y", "%d", "%m")]
    return all(p >= 0 for p in positions) and positions[0] < positions[1] < positions[2]


def _parse_iso(unique: pd.Index, is_iso: np.ndarray, timezone: str) -> pd.Series:
    out = pd.Series(pd.NaT, index=unique, dtype="datetime64[ns, UTC]")
    parts = unique.str.extract(_ISO)
    has_time = parts["time"].notna().to_numpy() & is_iso
    has_zone = parts["zone"].notna().to_numpy() & is_iso
    text = (
        pd.Series(unique, index=unique)
        .str.replace(r"\s*UTC$", "+00:00", regex=True)
        .str.replace(r"z$", "Z", regex=True)  # the pattern accepts both; pandas only "Z"
        .str.replace(r"(?<=:\d\d),(?=\d)", ".", regex=True)  # ISO's decimal comma
    )
    zoned = is_iso & has_zone
    if zoned.any():
        parsed = pd.to_datetime(text[zoned], format="ISO8601", utc=True, errors="coerce")
        out[zoned] = _clip_to_ns(parsed)
    local = is_iso & has_time & ~has_zone
    if local.any():
        parsed = pd.to_datetime(text[local], format="ISO8601", errors="coerce")
        out[local] = _localize(parsed, timezone)
    dates = is_iso & ~has_time & ~has_zone
    if dates.any():
        parsed = pd.to_datetime(text[dates], format="ISO8601", errors="coerce")
        out[dates] = _localize(parsed, "UTC")
    return out


def _parse_format(unique: pd.Index, fmt: str, timezone: str) -> pd.Series:
    text = pd.Series(unique, index=unique)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "%z" in fmt or "%Z" in fmt:
            return _clip_to_ns(pd.to_datetime(text, format=fmt, utc=True, errors="coerce"))
        parsed = pd.to_datetime(text, format=fmt, errors="coerce")
    has_time = any(directive in fmt for directive in _TIME_DIRECTIVES)
    return _localize(parsed, timezone if has_time else "UTC")


def _localize(naive: pd.Series, timezone: str) -> pd.Series:
    if naive.empty:
        return naive.astype("datetime64[ns, UTC]")
    naive = _clip_to_ns(naive)
    if timezone == "UTC":
        return naive.dt.tz_localize("UTC")
    # Ambiguous or skipped wall times (DST) cannot be placed in UTC: NaT, hence quarantined.
    return naive.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")


def _clip_to_ns(series: pd.Series) -> pd.Series:
    """Nanosecond timestamps end in 2262; later (or pre-1677) values are pinned to the bounds so
    the range checks quarantine them with their original text instead of overflowing."""
    low, high = pd.Timestamp.min.ceil("us"), pd.Timestamp.max.floor("us")
    if series.dt.tz is None:
        return series.mask(series > high, high).mask(series < low, low).astype("datetime64[ns]")
    series = series.dt.tz_convert("UTC")
    low, high = low.tz_localize("UTC"), high.tz_localize("UTC")
    return series.mask(series > high, high).mask(series < low, low).astype("datetime64[ns, UTC]")


def _check_file_days(
    valid: pd.DataFrame, file_days: dict[str, pd.Timestamp], original: pd.DataFrame, notes: _Notes
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A daily file replaces its day's data, so rows of other days would be lost on redelivery."""
    day = valid["source_file"].map(file_days)
    outside = day.notna() & (valid["timestamp"].dt.floor("D") != day)
    rows = [
        quarantine_entry(
            file,
            line,
            notes.label(file, "timestamp"),
            "file_day",
            original.at[label, "timestamp"],
            f"row is not on the file's day {file_days[file].date()}",
        )
        for label, file, line in zip(
            valid.index[outside],
            valid["source_file"][outside],
            valid["source_line"][outside],
            strict=True,
        )
    ]
    return valid[~outside], pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)


def _convert_currency(valid: pd.DataFrame, source: SourceConfig) -> pd.DataFrame:
    if source.currency is not None:
        target = source.currency.upper()
        rates = {code.upper(): float(rate) for code, rate in source.exchange_rates.items()}
        rates[target] = 1.0
        valid = valid.copy()
        valid["cost"] = valid["cost"] * valid["currency"].map(rates).astype(float)
        valid["currency"] = target
        return valid
    per_customer = valid.groupby("customer_id")["currency"].nunique()
    mixed = per_customer[per_customer > 1]
    if not mixed.empty:
        customer = mixed.index[0]
        rows = valid[valid["customer_id"] == customer]
        examples = rows.drop_duplicates("currency").head(3)
        where = ", ".join(
            f"{f} line {line}: {cur}"
            for f, line, cur in zip(
                examples["source_file"], examples["source_line"], examples["currency"], strict=True
            )
        )
        raise SourceError(
            f"column currency: customer '{customer}' has costs in {sorted(rows['currency'].unique())} "
            f"({where}); they cannot be summed. Set source.currency (and source.exchange_rates) "
            f"to convert them or quarantine the others. {len(mixed)} customer(s) affected."
        )
    return valid


def _apply_duplicates(
    valid: pd.DataFrame, key: list[str], policy: str, notes: _Notes
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Apply ``preprocess.duplicates`` to rows sharing ``key``.

    ``sum``: the group becomes its first line with the summed cost; ``last``: its last line wins.
    The other lines are listed in the duplicates report (they are valid, just merged).
    ``reject``: every line of the group is quarantined.
    """
    empty_dups = pd.DataFrame(columns=DUPLICATE_COLUMNS)
    missing = [c for c in key if c not in valid.columns]
    if missing:
        raise SourceError(
            f"duplicate key column(s) {missing} are not in the source (check its duplicate_key)"
        )
    if valid.empty:
        return valid, empty_dups, empty_quarantine()
    # The route is always part of the key: a credit must never be summed into usage.
    key = [*dict.fromkeys([*key, "route"])]
    groups = valid.groupby(key, sort=False, dropna=False)
    size = groups["cost"].transform("size")
    if not (size > 1).any():
        return valid, empty_dups, empty_quarantine()
    group_id = groups.ngroup()
    position = groups.cumcount()
    is_dup = size > 1
    where = valid["source_file"] + ":" + valid["source_line"].astype("str")
    if policy == "reject":
        members = where[is_dup].groupby(group_id[is_dup]).agg(list)
        rows = []
        shown = [c for c in key if c not in (RECORD, "route")]
        for label in valid.index[is_dup]:
            others = [w for w in members[group_id[label]] if w != where[label]]
            file = valid.at[label, "source_file"]
            columns = notes.label(file, ",".join(shown)) if shown else "(row)"
            rows.append(
                quarantine_entry(
                    file,
                    valid.at[label, "source_line"],
                    columns,
                    "duplicate",
                    "|".join(str(valid.at[label, c]) for c in shown) or "(whole row)",
                    f"same {columns.replace(',', ', ') if shown else 'row'} as "
                    f"{', '.join(others)} (preprocess.duplicates = reject)",
                )
            )
        return valid[~is_dup], empty_dups, pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)
    keep = position == 0 if policy == "sum" else position == size - 1
    kept = valid[keep].set_index(group_id[keep])
    valid = valid.copy()
    if policy == "sum":
        valid["cost"] = groups["cost"].transform("sum")
    merged = valid[~keep]
    report = pd.DataFrame(
        {
            "source_file": merged["source_file"].to_numpy(),
            "source_line": merged["source_line"].to_numpy(),
            "kept_file": kept["source_file"].reindex(group_id[~keep]).to_numpy(),
            "kept_line": kept["source_line"].reindex(group_id[~keep]).to_numpy(),
            "action": "summed" if policy == "sum" else "superseded",
            "customer_id": merged["customer_id"].to_numpy(),
            "timestamp": merged["timestamp"].to_numpy(),
        }
    )
    return valid[keep], report, empty_quarantine()


def _output(rows: pd.DataFrame, *, signals: bool) -> pd.DataFrame:
    columns = ["customer_id", "timestamp", "cost"]
    if signals:
        columns = ["customer_id", "timestamp", "charge_category", "cost"]
        columns += [c for c in ("currency", "service", "region") if c in rows.columns]
    else:
        columns += [c for c in DIMENSIONS if c in rows.columns]
    columns += ["source_file", "source_line"]
    out = rows[columns].sort_values(
        ["customer_id", "timestamp", "source_file", "source_line"], kind="stable"
    )
    out = out.reset_index(drop=True)
    out["timestamp"] = out["timestamp"].astype("datetime64[ns, UTC]")
    out["cost"] = out["cost"].astype(float)
    out["source_line"] = out["source_line"].astype(np.int64)
    return out


def _concat_quarantine(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if not p.empty]
    if not parts:
        return empty_quarantine()
    out = pd.concat(parts, ignore_index=True)
    out["source_line"] = out["source_line"].astype(np.int64)
    for column in ("source_file", "column", "check", "value", "reason"):
        out[column] = out[column].astype("str")
    return out.sort_values(["source_file", "source_line", "column"], kind="stable").reset_index(
        drop=True
    )


def _check_failure_rate(loaded: LoadedUsage, rows_per_file: dict[str, int], limit: float) -> None:
    lines = loaded.quarantine[["source_file", "source_line"]].drop_duplicates()
    failed = lines.groupby("source_file").size()
    for file, count in failed.items():
        total = rows_per_file.get(str(file), 0)
        if total and count / total > limit:
            first = loaded.quarantine[loaded.quarantine["source_file"] == file].head(
                _FIRST_FAILURES
            )
            details = "\n".join(
                f"  line {row.source_line}, column {row.column} ({row.check}): {row.reason}"
                for row in first.itertuples()
            )
            raise SourceError(
                f"{file}: {count} of {total} rows ({count / total:.1%}) failed validation, above "
                f"preprocess.max_failure_rate = {limit:.1%}. First failing rows:\n{details}"
            )


def _clip(value: object) -> str:
    text = "" if _isna(value) else str(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def _isna(value: object) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
