"""``detect()``: the whole method on one DataFrame, for notebooks and scripts."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_pipelines.core.config import PipelineConfig, as_config
from anomaly_pipelines.core.detector import fit_detectors, score_series
from anomaly_pipelines.core.series import CustomerSeries, regularize

REQUIRED = ("customer_id", "timestamp", "cost")


def detect(
    usage: pd.DataFrame,
    config: PipelineConfig | dict[str, Any] | str | Path | None = None,
    *,
    online: bool = False,
) -> pd.DataFrame:
    """Score every customer's series in ``usage`` and return one row per customer and timestamp.

    ``usage`` is a long frame with ``customer_id``, ``timestamp`` and ``cost`` (other columns are
    ignored). Each series' frequency is inferred, so daily, hourly and 5-minute data all work.
    Series too short to model come back with ``is_anomaly`` False and the reason in ``reasons``.
    Gaps are filled to fit the models but only timestamps present in the input are returned,
    in the input's dtype and zone (naive in, naive out), so the result merges back onto
    ``usage`` by ``customer_id`` and ``timestamp``.

    A missing cost (NaN) is a missing observation: the models treat it as any other gap and
    its row comes back with ``status`` ``"missing"``. An infinite or negative cost (a credit or
    refund is not usage) is left out the same way, its row with ``status`` ``"invalid"``; both
    say why in ``reasons`` and are never flagged.

    ``online=True`` scores every step from data up to and including it only (models fitted on
    the training part as usual): each row is what the scheduled daily run would have reported
    that day, which is how quality should be judged. The default, retrospective, lets the window
    models use windows that reach a few steps past a step, which localises anomalies better in
    hindsight.
    """
    cfg = as_config(config)
    observed, left_out = observations(coerce(usage))
    series = regularize(observed, cfg.preprocess)
    fitted = fit_detectors(series, cfg)
    scores = score_series(series, fitted, cfg, online=online)
    out = with_left_out_rows(on_input_times(scores, observed, series), left_out)
    out["timestamp"] = as_input_time(out["timestamp"], usage["timestamp"])
    return out


def usage_series(usage: pd.DataFrame, config: PipelineConfig) -> list[CustomerSeries]:
    """``detect()``'s input checks and regularisation: one regular series per customer, from
    the rows with a usable cost."""
    return regularize(observations(coerce(usage))[0], config.preprocess)


def input_rows(scores: pd.DataFrame) -> pd.DataFrame:
    """Scores of the timestamps present in the input (gaps were filled only to fit the models)."""
    return scores[~scores["is_filled"].astype(bool)].drop(columns="is_filled").reset_index(drop=True)


MISSING, INVALID = "missing", "invalid"


def observations(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows the models see, one row per customer and timestamp that has no usable cost).

    A cost that is NaN, infinite or negative is left out, so the step becomes a gap that
    ``regularize`` fills like any other; a step with at least one usable row (a service's cost
    among others) is observed. The second frame carries ``status`` and ``reasons`` for the
    steps with none."""
    cost = frame["cost"].to_numpy(dtype=float)
    nan, inf, negative = np.isnan(cost), np.isinf(cost), cost < 0
    usable = ~(nan | inf | negative)
    observed = frame[usable]
    unusable = frame[~usable].assign(
        _nan=nan[~usable], _inf=inf[~usable], _negative=negative[~usable]
    )
    keys = ["customer_id", "timestamp"]
    if len(observed):
        known = pd.MultiIndex.from_frame(observed[keys])
        unusable = unusable[~pd.MultiIndex.from_frame(unusable[keys]).isin(known)]
    if unusable.empty:
        return observed, pd.DataFrame(columns=[*keys, "cost", "status", "reasons"])
    grouped = unusable.groupby(keys, sort=True)
    left_out = grouped.agg(
        cost=("cost", lambda c: c.sum(min_count=1)),
        _nan=("_nan", "all"),
        _inf=("_inf", "any"),
        _negative=("_negative", "any"),
    ).reset_index()
    left_out["status"] = np.where(left_out["_nan"], MISSING, INVALID)
    left_out["reasons"] = np.select(
        [left_out["_nan"], left_out["_inf"]],
        [
            "missing cost (NaN): treated as a gap",
            "infinite cost: left out, treated as a gap",
        ],
        "negative cost (credits and refunds are not usage): left out, treated as a gap",
    )
    return observed, left_out[[*keys, "cost", "status", "reasons"]]


def on_input_times(scores: pd.DataFrame, observed: pd.DataFrame, series: list[CustomerSeries]) -> pd.DataFrame:
    """``scores`` with one observed row per input timestamp of ``observed``, so the result merges
    back onto the input. Off-grid input (a jittered clock, a sample a minute late) was put on a
    step of its series' grid (``regularize``: the nearest for a jittered clock, else the one at
    or before it); each such input timestamp gets that step's scores."""
    keys = ["customer_id", "timestamp"]
    present = ~scores["is_filled"].astype(bool)
    wanted = observed[keys].drop_duplicates()
    stamp = pd.MultiIndex.from_arrays([scores["customer_id"], _instants(scores["timestamp"])])
    asked = pd.MultiIndex.from_arrays([wanted["customer_id"], _instants(wanted["timestamp"])])
    if asked.isin(stamp[present.to_numpy()]).all():
        return scores
    steps = scores[present].assign(_at=_instants(scores.loc[present, "timestamp"])).drop(columns="timestamp")
    steps = steps.sort_values("_at")
    wanted = wanted.assign(_at=_instants(wanted["timestamp"])).sort_values("_at")
    jittered = wanted["customer_id"].isin({s.customer_id for s in series if s.jittered})
    parts = [
        pd.merge_asof(wanted[mine], steps, on="_at", by="customer_id", direction=direction)
        for mine, direction in ((jittered, "nearest"), (~jittered, "backward"))
        if mine.any()
    ]
    rows = pd.concat(parts, ignore_index=True).drop(columns="_at")
    out = pd.concat([rows[list(scores.columns)], scores[~present]], ignore_index=True)
    return out.sort_values(keys, kind="stable").reset_index(drop=True)


def _instants(stamps: pd.Series) -> np.ndarray:
    return pd.to_datetime(stamps, utc=True).to_numpy(dtype="datetime64[ns]").view("int64")


def with_left_out_rows(scores: pd.DataFrame, left_out: pd.DataFrame) -> pd.DataFrame:
    """The input's observed rows (``input_rows``) plus one row per left-out step: its input
    cost, the expectation of the filled step where there is one, no signal and no flag."""
    kept = input_rows(scores)
    if left_out.empty:
        return kept
    keys = ["customer_id", "timestamp"]
    filled = scores[scores["is_filled"].astype(bool)][[*keys, "expected_cost", "split"]]
    rows = left_out.merge(filled, on=keys, how="left")
    rows["split"] = rows["split"].fillna("none")
    for name in kept.columns:
        if name not in rows.columns:
            # flags by name: when every row was left out, ``kept`` is empty and untyped
            flag = kept[name].dtype == bool or name.startswith("is_") or name.endswith("_flag")
            rows[name] = False if flag else np.nan
    if len(kept):
        rows = rows[list(kept.columns)].astype(kept.dtypes.to_dict())
    else:
        rows = rows[list(kept.columns)]
    out = pd.concat([kept, rows], ignore_index=True) if len(kept) else rows
    return out.sort_values(keys, kind="stable").reset_index(drop=True)


def as_input_time(stamps: pd.Series, original: pd.Series) -> pd.Series:
    """Output timestamps (UTC) in the input's dtype and zone: naive in, naive out (UTC wall
    time, which is how naive input was read); zoned in, the same zone out. Text or objects come
    back as the datetimes they were read as: naive, one zone, or UTC for a mix of zones."""
    dtype = original.dtype
    utc = pd.to_datetime(stamps, utc=True)
    if isinstance(dtype, pd.DatetimeTZDtype):
        return utc.dt.tz_convert(dtype.tz).astype(dtype)
    if pd.api.types.is_datetime64_dtype(dtype):
        return utc.dt.tz_localize(None).astype(dtype)
    try:
        parsed = pd.to_datetime(original)
    except (ValueError, TypeError, OverflowError):
        return utc
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        return utc.dt.tz_convert(parsed.dtype.tz)
    if pd.api.types.is_datetime64_dtype(parsed.dtype):
        return utc.dt.tz_localize(None)
    return utc


def coerce(usage: pd.DataFrame) -> pd.DataFrame:
    """The three input columns, typed, or a ``ValueError`` that names the column and first row.

    A notebook frame has no quarantine, so anything that would otherwise be guessed (a missing
    id or time, ids that only look alike, a boolean cost) is refused here, before it can fail
    deep inside numpy or change a number silently. Rules applied (documented in the README):
    ids are text (``1`` becomes ``"1"``); naive timestamps are UTC and zoned ones keep their
    zone (daily data is then a calendar day in that zone); rows sharing a customer and
    timestamp are summed (a step's services and regions), with a warning that counts the rows
    that differ from an earlier one in no column at all (likely copies).
    """
    missing = [c for c in REQUIRED if c not in usage.columns]
    if missing:
        raise ValueError(
            f"detect(): input frame is missing column(s) {missing}; it has {list(usage.columns)}. "
            "Rename yours, e.g. usage.rename(columns={'account': 'customer_id', 'date': "
            "'timestamp', 'amount': 'cost'})"
        )
    repeated = [c for c in REQUIRED if list(usage.columns).count(c) > 1]
    if repeated:
        raise ValueError(
            f"detect(): input frame has more than one column named {repeated}; drop or rename "
            "the duplicates (e.g. usage.loc[:, ~usage.columns.duplicated()])"
        )
    frame = usage[list(REQUIRED)].copy()
    frame["customer_id"] = _customer_ids(frame["customer_id"])
    frame["timestamp"] = _timestamps(frame["timestamp"])
    frame["cost"] = _costs(frame["cost"])
    copies = _copies(frame, usage)
    if copies.any():
        first = frame.loc[copies].iloc[0]
        warnings.warn(
            f"detect(): {int(copies.sum())} row(s) repeat the customer_id, timestamp and every "
            f"other column of an earlier row and are summed into it, first customer "
            f"{first['customer_id']!r} at {first['timestamp']}; drop them first if they are copies",
            DuplicateRowsWarning,
            stacklevel=3,
        )
    return frame


def _copies(frame: pd.DataFrame, usage: pd.DataFrame) -> pd.Series:
    """Rows that share customer and timestamp with an earlier row and differ from it in no
    other column of the input. Rows told apart by another column (service, region) are parts
    of one step's cost and summed without a warning; rows that are not are likely copies."""
    key = frame[["customer_id", "timestamp"]]
    repeated = key.duplicated(keep=False)
    if not repeated.any():
        return repeated
    others = [c for c in usage.columns if c not in REQUIRED]
    try:
        return key.join(usage[others]).duplicated(keep="first") if others else key.duplicated()
    except TypeError:  # unhashable values (lists, dicts) in another column: judge by the key
        return key.duplicated()


class DuplicateRowsWarning(UserWarning):
    """``detect()`` summed rows that share a customer and timestamp (costs of one step)."""


def _first_row(mask: pd.Series) -> object:
    return mask.index[mask.to_numpy(dtype=bool)][0]


def _customer_ids(ids: pd.Series) -> pd.Series:
    """Ids as text; a missing id, or two ids that differ only in type (``1`` and ``"1"``), is
    an error: summing two customers into one series would hide both."""
    absent = ids.isna()
    if absent.any():
        raise ValueError(
            f"detect(): column 'customer_id' has {int(absent.sum())} missing value(s), first at "
            f"row {_first_row(absent)}; every row needs the customer it belongs to"
        )
    text = ids.map(str).astype(str)
    is_text = ids.map(lambda value: isinstance(value, str))
    if not is_text.all() and is_text.any():
        kinds = pd.DataFrame({"text": text, "is_text": is_text}).groupby("text")["is_text"].nunique()
        clashes = kinds[kinds > 1]
        if not clashes.empty:
            example = clashes.index[0]
            rows = ids.index[(text == example).to_numpy()][:2]
            raise ValueError(
                f"detect(): column 'customer_id' holds {len(clashes)} id(s) both as text and as "
                f"another type, e.g. {ids[rows[0]]!r} (row {rows[0]}) and {ids[rows[1]]!r} "
                f"(row {rows[1]}); they would become one customer. Convert the column to one type"
            )
    return text


def _timestamps(values: pd.Series) -> pd.Series:
    """Timestamps with a zone: naive ones are UTC, zoned ones keep theirs. Missing or
    unreadable ones are errors (a NaT has no place in a series)."""
    numbers = (
        pd.Series(True, index=values.index)
        if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype)
        else values.map(lambda v: isinstance(v, int | float | np.number) and not isinstance(v, bool))
    )
    if len(values) and numbers.any():
        # pandas reads numbers as nanoseconds since 1970: 1704067200 (seconds) would become a
        # timestamp in January 1970 without a word.
        raise ValueError(
            f"detect(): column 'timestamp' holds {int(numbers.sum())} number(s), first at row "
            f"{_first_row(numbers)}; convert them to dates first, e.g. "
            "pd.to_datetime(column, unit='s') for seconds since 1970"
        )
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        stamps = values
    else:
        try:
            stamps = pd.to_datetime(values, utc=True)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ValueError(
                f"detect(): column 'timestamp' cannot be read as dates: {exc}; pass datetimes or "
                "ISO 8601 strings (e.g. pd.to_datetime(usage['timestamp'], format=...))"
            ) from exc
    stamps = pd.Series(stamps, index=values.index)
    if not isinstance(stamps.dtype, pd.DatetimeTZDtype):
        # A column mixing zones comes back as objects; UTC instants keep every value's meaning.
        stamps = pd.to_datetime(stamps, utc=True)
    missing = stamps.isna()
    if missing.any():
        raise ValueError(
            f"detect(): column 'timestamp' has {int(missing.sum())} missing value(s) (NaT), "
            f"first at row {_first_row(missing)}; drop or fill them first"
        )
    return stamps


def _costs(values: pd.Series) -> pd.Series:
    """Costs as floats; booleans are refused (True is not a cost of 1.0). Missing (NaN),
    infinite and negative values stay: ``observations`` leaves them out with a reason."""
    is_bool = (
        pd.Series(True, index=values.index)
        if pd.api.types.is_bool_dtype(values.dtype)
        else values.map(lambda value: isinstance(value, bool | np.bool_))
    )
    if is_bool.any():
        raise ValueError(
            f"detect(): column 'cost' has {int(is_bool.sum())} boolean value(s), first at row "
            f"{_first_row(is_bool)}; costs must be numbers"
        )
    is_complex = (
        pd.Series(True, index=values.index)
        if pd.api.types.is_complex_dtype(values.dtype)
        else values.map(lambda value: isinstance(value, complex | np.complexfloating))
    )
    if len(values) and is_complex.any():
        raise ValueError(
            f"detect(): column 'cost' has {int(is_complex.sum())} complex value(s), first at row "
            f"{_first_row(is_complex)}; costs must be real numbers"
        )
    try:
        cost = pd.to_numeric(values, errors="raise").astype(float)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"detect(): column 'cost' is not numeric: {exc}; convert it first, e.g. "
            "pd.to_numeric(usage['cost'].str.replace(',', ''))"
        ) from exc
    return cost
