"""Regular per-customer series: one value per step, gaps filled by policy and marked.

Models need evenly spaced values; billing exports skip days and 5-minute metrics drop samples.
The frequency is inferred per series (the most common step), so one call handles daily cost,
hourly usage and 5-minute metrics alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from anomaly_pipelines.core.config import PreprocessConfig
from anomaly_pipelines.core.ids import customer_key

_DAY_NS = pd.Timedelta(days=1).value
_MONTH_DAYS = 365.2425 / 12
# Largest (customers x distinct steps) table of step counts; beyond it steps are sorted instead.
_COUNT_TABLE_CELLS = 2**24
# Sampling intervals clocks are set to, for rounding the steps of a jittered clock.
_USUAL_STEPS = np.array(
    [pd.Timedelta(t).value for t in (
        "1s", "2s", "5s", "10s", "15s", "20s", "30s",
        "1min", "2min", "3min", "4min", "5min", "6min", "10min", "12min", "15min", "20min", "30min",
        "1h", "2h", "3h", "4h", "6h", "8h", "12h", "1D", "7D",
    )],
    dtype=np.int64,
)
# Fewer steps than this say too little about a clock to call it jittered.
_JITTER_MIN_STEPS = 10


@dataclass
class CustomerSeries:
    """One customer's regular series. ``filled`` marks steps that were gaps in the input;
    ``declared_normal`` (optional) steps a person marked normal (feedback ``not-anomaly`` or
    ``planned``), which history cleaning keeps however surprising they look."""

    customer_id: str
    timestamps: pd.DatetimeIndex
    values: np.ndarray
    filled: np.ndarray
    frequency: pd.Timedelta
    dimensions: pd.DataFrame | None = field(default=None, repr=False)
    declared_normal: np.ndarray | None = field(default=None, repr=False)
    # Its samples were put on the nearest grid step (a jittered clock), not floored to one.
    jittered: bool = False

    @property
    def key(self) -> str:
        return customer_key(self.customer_id)

    def __len__(self) -> int:
        return len(self.values)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "customer_id": self.customer_id,
                "timestamp": self.timestamps,
                "cost": self.values,
                "is_filled": self.filled,
            }
        )


def infer_frequency(timestamps: pd.Series | pd.DatetimeIndex) -> pd.Timedelta | None:
    """Most common positive step (ties: the smaller); the median would be fooled by runs of
    missing samples. None with fewer than two distinct timestamps."""
    ts = np.sort(pd.DatetimeIndex(timestamps).as_unit("ns").asi8)
    step = _common_steps(np.zeros(len(ts), dtype=np.int64), ts, 1)[0]
    return pd.Timedelta(int(step), unit="ns") if step else None


def regularize(
    frame: pd.DataFrame, config: PreprocessConfig | None = None, dimensions: pd.DataFrame | None = None
) -> list[CustomerSeries]:
    """Split a long frame (``customer_id``, ``timestamp``, ``cost``) into regular series.

    Duplicate timestamps are summed (costs of the same day add up); off-grid timestamps are
    floored to the inferred grid, or rounded to its nearest point for a jittered clock (see
    ``_common_steps``). Distinct timestamps sharing an inferred sub-daily step are averaged
    (samples of a slipping clock, see below). Gaps inside a series are filled by
    ``gap_policy``. The work is vectorised over all customers (one sort, one grouped sum, one
    fill and one timestamp index for all of them, laid end to end), since the daily run
    regularises thousands of customers at once. Timestamps in a time zone other than UTC keep
    it: a series whose step is whole days is a series of calendar days in that zone (a DST day
    has 23 or 25 hours), and its timestamps are those days' starts as in the input.
    """
    config = config or PreprocessConfig()
    if frame.empty:
        return []
    zone = _local_zone(frame["timestamp"])
    stamps = pd.to_datetime(frame["timestamp"], utc=True)
    instant = stamps.to_numpy(dtype="datetime64[ns]").view("int64")
    local = stamps.dt.tz_convert(zone) if zone is not None else stamps
    wall = local.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").view("int64")
    cost = pd.to_numeric(frame["cost"]).to_numpy(dtype=float)
    customers, code = _customer_codes(frame["customer_id"])
    # Rows by customer, then time; rows of one timestamp keep their input order, so duplicates
    # are summed in the same order as ever (a float sum depends on it).
    order = np.lexsort((instant, code))
    code, instant, wall, cost = code[order], instant[order], wall[order], cost[order]
    calendar = np.zeros(len(customers), dtype=bool)
    if zone is not None:
        # Days (and weeks) in a zone with DST are calendar days, 23 or 25 hours long twice a
        # year: on a grid of 24-hour steps two days would share one step (their costs summed)
        # and every later day would sit an hour off its input. Such series are put on a grid of
        # wall-clock days and placed back in the zone at the end.
        wall_steps = (
            np.full(len(customers), pd.Timedelta(config.frequency).value, dtype=np.int64)
            if config.frequency
            else _common_steps(code, wall, len(customers))
        )
        calendar = (wall_steps > 0) & (wall_steps % _DAY_NS == 0)
        ts = np.where(calendar[code], wall, instant)
        order = np.lexsort((ts, code))
        code, ts, cost = code[order], ts[order], cost[order]
    else:
        ts = instant
    first = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    if config.frequency:
        freq = np.full(len(customers), pd.Timedelta(config.frequency).value, dtype=np.int64)
        jittered = np.zeros(len(customers), dtype=bool)
    else:  # a customer with a single timestamp gets a day
        freq, jittered = _steps_and_jitter(code, ts, len(customers))
        freq[freq == 0] = _DAY_NS
    # Months are 28 to 31 days long: on a grid of the most common month length two months
    # would share a step every few years (their costs summed) and leave the next one a gap.
    # A step of whole months (or quarters, years) is a step in calendar months: each row goes
    # to its month's step, counted from the customer's first month.
    months = _months_per_step(freq, ts, first)
    month_grid = months[code] > 0
    real_origin = ts[first]
    if month_grid.any():
        index = ts.astype("datetime64[ns]").astype("datetime64[M]").astype(np.int64)
        relative = (index - index[first][code]) // np.maximum(months[code], 1)
        ts = np.where(month_grid, real_origin[code] + relative * freq[code], ts)
    origin = ts[first]
    step = freq[code]
    # A jittered clock's sample goes to the nearest grid point: floored, a sample a second
    # early would land on the step before and leave its own step a gap.
    half = np.where(jittered[code], step // 2, 0)
    grid = origin[code] + ((ts - origin[code] + half) // step) * step
    g_code, g_ts, summed, samples = _sum_steps(code, grid, ts, cost)
    if config.frequency is None:
        # A sub-daily step inferred from the data is the series' own sampling interval: where
        # a clock drifts, several samples at different times land in one step. Their sum would
        # double that step against its neighbours (a spike in every such step, and residual
        # thresholds inflated by them), so they are averaged. Rows at one timestamp are still
        # added up (line items of the same period), and so are a day's or longer step's rows.
        summed = np.where((freq < _DAY_NS)[g_code], summed / samples, summed)
    # Rows are in time order within a customer, so its last step is its last grid point.
    last = g_ts[np.r_[np.flatnonzero(g_code[1:] != g_code[:-1]), len(g_code) - 1]]
    lengths = (last - origin) // freq + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.full(offsets[-1], np.nan)
    values[offsets[g_code] + (g_ts - origin[g_code]) // freq[g_code]] = summed
    filled = np.isnan(values)
    values = _fill_segments(values, offsets, config.gap_policy)
    # Every series' timestamps at once, in each form some series needs; a series takes a slice.
    owner = np.repeat(np.arange(len(customers)), lengths)
    points = origin[owner] + (np.arange(offsets[-1]) - offsets[owner]) * freq[owner]
    for c in np.flatnonzero(months > 0):
        points[offsets[c] : offsets[c + 1]] = _month_points(real_origin[c], int(lengths[c]), int(months[c]))
    stamps_all = {kind: _timestamps(points, zone, kind) for kind in map(bool, np.unique(calendar))}
    dims_by_customer = (
        dict(tuple(dimensions.groupby("customer_id", sort=False)))
        if dimensions is not None and not dimensions.empty
        else {}
    )
    frequencies = {int(f): pd.Timedelta(int(f), unit="ns") for f in np.unique(freq)}
    out: list[CustomerSeries] = []
    for c, customer_id in enumerate(customers):
        lo, hi = offsets[c], offsets[c + 1]
        out.append(
            CustomerSeries(
                customer_id=str(customer_id),
                timestamps=stamps_all[bool(calendar[c])][lo:hi],
                values=values[lo:hi],
                filled=filled[lo:hi],
                frequency=frequencies[int(freq[c])],
                dimensions=dims_by_customer.get(customer_id),
                jittered=bool(jittered[c]),
            )
        )
    return out


def _months_per_step(freq: np.ndarray, ts: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Calendar months in each customer's step (0 where its rows are not calendar months): a
    step near a whole number of months (the most common step of monthly rows is 31 days, of
    quarterly ones 92, of yearly ones 365) whose rows all sit on one day of the month (or
    on month ends) at one time of day. Rows every 30 days drift through the month and keep
    their fixed grid."""
    days = freq / _DAY_NS
    months = np.rint(days / _MONTH_DAYS).astype(np.int64)
    whole = (months >= 1) & (np.abs(days - months * _MONTH_DAYS) <= 1.5) & (freq % _DAY_NS == 0)
    ends = np.r_[first[1:], len(ts)]
    for c in np.flatnonzero(whole):
        rows = pd.DatetimeIndex(ts[first[c] : ends[c]].astype("datetime64[ns]"))
        same_day = rows.day.nunique() == 1 or bool(rows.is_month_end.all())
        whole[c] = same_day and (rows - rows.normalize()).nunique() == 1
    return np.where(whole, months, 0)


def _month_points(origin: np.int64, length: int, months: int) -> np.ndarray:
    """``length`` steps of ``months`` calendar months from ``origin`` (ns), as ns: month ends
    stay month ends (Jan 31, Feb 29, Mar 31), other days keep their day of the month."""
    start = pd.Timestamp(int(origin))
    if start.is_month_end:
        stamps = [start + pd.offsets.MonthEnd(k * months) for k in range(length)]
    else:
        stamps = [start + pd.DateOffset(months=k * months) for k in range(length)]
    return pd.DatetimeIndex(stamps).as_unit("ns").asi8


def _customer_codes(customer_id: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(customer ids as text, sorted; each row's position among them). One hashing pass over
    the rows; only the few distinct ids are sorted."""
    codes, uniques = pd.factorize(customer_id.astype(str))
    uniques = np.asarray(uniques, dtype=object)
    ranked = np.argsort(uniques, kind="stable")
    position = np.empty(len(uniques), dtype=np.int64)
    position[ranked] = np.arange(len(uniques))
    return uniques[ranked], position[codes]


def _sum_steps(
    code: np.ndarray, grid: np.ndarray, ts: np.ndarray, cost: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(customer, grid point, summed cost, distinct timestamps) of each occupied step, from
    rows sorted by customer and time. Grouped by one running step number rather than by the
    (customer, grid point) pair: the groups, their order and so pandas' way of summing them
    are the same, without hashing two keys of every row."""
    start = np.r_[True, (code[1:] != code[:-1]) | (grid[1:] != grid[:-1])]
    summed = pd.Series(cost).groupby(np.cumsum(start) - 1, sort=True).sum(min_count=1)
    new_time = np.r_[True, (code[1:] != code[:-1]) | (ts[1:] != ts[:-1])].astype(np.int64)
    samples = np.add.reduceat(new_time, np.flatnonzero(start))
    return code[start], grid[start], summed.to_numpy(), samples


def _fill_segments(values: np.ndarray, offsets: np.ndarray, policy: str) -> np.ndarray:
    """The gaps (NaN) of every series filled by ``policy``, the series laid end to end (series
    ``c`` is ``values[offsets[c]:offsets[c + 1]]``), exactly as pandas fills one series:
    ``fillna(0.0)`` ("zero"), ``ffill().bfill()`` ("ffill") or ``interpolate("linear",
    limit_direction="both")``; a series with no known value stays NaN.

    Linear interpolation between a series' known steps is the same arithmetic whether the
    steps are counted from the series' start or from the whole array's (the distances are
    the same whole numbers), so one ``np.interp`` over all series gives each series' own
    values; steps before a series' first known value or after its last take that value."""
    missing = np.isnan(values)
    if not missing.any():
        return values
    if policy == "zero":
        return np.where(missing, 0.0, values)
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(values))
    known = np.flatnonzero(~missing)
    # Per step: the last known step at or before it and the first at or after it, in its own
    # series (-1 / len(values): none there).
    before = np.maximum.accumulate(np.where(missing, -1, position))
    after = np.minimum.accumulate(np.where(missing, len(values), position)[::-1])[::-1]
    before = np.where((before >= 0) & (before >= offsets[owner]), before, -1)
    after = np.where((after < len(values)) & (after < offsets[owner + 1]), after, len(values))
    out = values.copy()
    gaps = np.flatnonzero(missing)
    has_before, has_after = before[gaps] >= 0, after[gaps] < len(values)
    if policy == "ffill":
        out[gaps] = np.where(
            has_before,
            values[np.maximum(before[gaps], 0)],
            np.where(has_after, values[np.minimum(after[gaps], len(values) - 1)], np.nan),
        )
        return out
    inside = gaps[has_before & has_after]
    if inside.size:
        out[inside] = np.interp(inside, known, values[known])
    leading = gaps[~has_before & has_after]
    out[leading] = values[after[leading]]
    trailing = gaps[has_before & ~has_after]
    out[trailing] = values[before[trailing]]
    return out


def _local_zone(timestamps: pd.Series) -> Any | None:
    """The zone of tz-aware timestamps other than UTC (None for naive or UTC ones, which are
    regularised in UTC)."""
    dtype = getattr(timestamps, "dtype", None)
    if not isinstance(dtype, pd.DatetimeTZDtype):
        return None
    zone = dtype.tz
    return None if str(zone) in ("UTC", "utc", "Etc/UTC", "UTC+00:00") else zone


def _timestamps(grid: np.ndarray, zone: Any | None, calendar: bool) -> pd.DatetimeIndex:
    """Grid points (ns) as timestamps: UTC instants, the same instants shown in ``zone``, or
    wall-clock days of ``zone`` (a skipped wall time moves forward, a repeated one is the first)."""
    index = pd.DatetimeIndex(grid.astype("datetime64[ns]"))
    if zone is None:
        return index.tz_localize("UTC")
    if not calendar:
        return index.tz_localize("UTC").tz_convert(zone)
    return index.tz_localize(zone, ambiguous=np.ones(len(index), dtype=bool), nonexistent="shift_forward")


def _common_steps(code: np.ndarray, ts: np.ndarray, customers: int) -> np.ndarray:
    """Most common positive step per customer in ns (ties: the smaller; 0 when there is none)
    from timestamps sorted within each customer code. A jittered clock (a 5-minute sensor whose
    samples arrive a few seconds early or late) has no single most common step: there, each step
    is first rounded to the nearest usual sampling interval (``_USUAL_STEPS``)."""
    return _steps_and_jitter(code, ts, customers)[0]


def _steps_and_jitter(code: np.ndarray, ts: np.ndarray, customers: int) -> tuple[np.ndarray, np.ndarray]:
    """``_common_steps`` and, per customer, whether its clock is jittered: its most common exact
    step is under half of its steps (at least ``_JITTER_MIN_STEPS`` of them)."""
    same = code[1:] == code[:-1]
    step = (ts[1:] - ts[:-1])[same]
    owner = code[1:][same]
    positive = step > 0
    step, owner = step[positive], owner[positive]
    mode, count = _mode_steps(step, owner, customers)
    total = np.bincount(owner, minlength=customers)
    jittered = (total >= _JITTER_MIN_STEPS) & (2 * count < total)
    if jittered.any():
        mine = jittered[owner]
        rounded, _ = _mode_steps(_usual(step[mine]), owner[mine], customers)
        mode = np.where(jittered, rounded, mode)
    return mode, jittered


def _usual(step: np.ndarray) -> np.ndarray:
    """Each step rounded to the nearest of ``_USUAL_STEPS`` on a log scale (steps beyond the
    longest stay as they are)."""
    logs = np.log(_USUAL_STEPS.astype(float))
    x = np.log(step.astype(float))
    hi = np.clip(np.searchsorted(logs, x), 1, len(logs) - 1)
    nearest = np.where(x - logs[hi - 1] <= logs[hi] - x, hi - 1, hi)
    return np.where(step > _USUAL_STEPS[-1], step, _USUAL_STEPS[nearest])


def _mode_steps(step: np.ndarray, owner: np.ndarray, customers: int) -> tuple[np.ndarray, np.ndarray]:
    """(most common step, its count) per customer; ties: the smaller step; 0 and 0 for none."""
    out = np.zeros(customers, dtype=np.int64)
    counted = np.zeros(customers, dtype=np.int64)
    if not step.size:
        return out, counted
    # Series have few distinct steps: count them in a (customer, distinct step) table, the
    # steps in ascending order so the first largest count is the smaller step of a tie.
    kinds = np.sort(pd.unique(step))
    if customers * len(kinds) <= _COUNT_TABLE_CELLS:
        which = np.searchsorted(kinds, step)
        counts = np.bincount(owner * len(kinds) + which, minlength=customers * len(kinds))
        counts = counts.reshape(customers, len(kinds))
        best = counts.argmax(axis=1)
        counted = counts[np.arange(customers), best]
        return np.where(counted > 0, kinds[best], 0), counted
    order = np.lexsort((step, owner))
    step, owner = step[order], owner[order]
    start = np.flatnonzero(np.r_[True, (owner[1:] != owner[:-1]) | (step[1:] != step[:-1])])
    count = np.diff(np.r_[start, len(step)])
    # Runs sorted by customer, then count descending, then step ascending: the first run of
    # each customer is its answer.
    runs = np.lexsort((step[start], -count, owner[start]))
    first = runs[np.r_[True, owner[start][runs][1:] != owner[start][runs][:-1]]]
    out[owner[start][first]] = step[start][first]
    counted[owner[start][first]] = count[first]
    return out, counted


def series_to_frame(series: list[CustomerSeries]) -> pd.DataFrame:
    if not series:
        return pd.DataFrame(
            {
                "customer_id": pd.Series(dtype=str),
                "timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
                "cost": pd.Series(dtype=float),
                "is_filled": pd.Series(dtype=bool),
            }
        )
    return pd.concat([s.to_frame() for s in series], ignore_index=True)


def frame_to_series(frame: pd.DataFrame) -> list[CustomerSeries]:
    """Inverse of ``series_to_frame`` for frames already regular (as stored between assets)."""
    out = []
    for customer_id, group in frame.groupby("customer_id", sort=True):
        group = group.sort_values("timestamp")
        ts = pd.DatetimeIndex(group["timestamp"])
        freq = infer_frequency(ts) or pd.Timedelta(days=1)
        out.append(
            CustomerSeries(
                customer_id=str(customer_id),
                timestamps=ts,
                values=group["cost"].to_numpy(dtype=float),
                filled=group["is_filled"].to_numpy(dtype=bool)
                if "is_filled" in group
                else np.zeros(len(group), dtype=bool),
                frequency=freq,
            )
        )
    return out
