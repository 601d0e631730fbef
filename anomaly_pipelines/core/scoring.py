"""Signals, thresholds learned from training data, and the hybrid rule.

Signals (each "higher = more anomalous"):

* ``residual``: distance of a value from its expected value (median of the same phase in the
  previous few cycles: same weekday for daily data, same time of day for sub-daily data), in units
  of the training residuals' robust spread. Recurring day-of-month charges seen in training are
  part of the expectation, so a normal first-of-month invoice does not alert.
* ``lstm``: reconstruction error of the window ending at a step (the notebook's signal).
* ``isolation_forest`` and ``local_outlier_factor``: outlier scores of that same window.
* ``decrease``: day-over-day change below the configured rate (the notebook's rule).

The hybrid rule: each continuous signal is divided by its own threshold, learned on the
training part of that series (a high quantile of its training scores), so 1.0 means "as unusual
as the rarest training behaviour". The hybrid score is the mean of the two largest normalised
signals, each capped at ``signal_cap`` (2.0). A step is an anomaly when the hybrid score reaches
``decision_threshold`` (1.25): so two detectors must agree, one at least at its threshold, the
other at least at half of it; however sure, one detector alone never alerts. ``reasons`` lists
each signal at or above its own threshold.
"""

from __future__ import annotations

import copy
from functools import cache

import numpy as np
import pandas as pd

MEDIAN_SAMPLE = 256
# Medians of at most this many values use a sorting network (``_median``).
_NETWORK_LIMIT = 16
# Steps per block of series computed at once by ``_lag_median`` (bounds its working memory).
_CHUNK_STEPS = 65536
MODEL_SIGNALS = ("lstm", "isolation_forest", "local_outlier_factor")
SIGNALS = ("residual", *MODEL_SIGNALS, "decrease")


def seasonal_expectation(
    values: np.ndarray, period: int | None, cycles: int, fallback: int, fill: bool = True
) -> np.ndarray:
    """Expected value of each step from the past only: a robust level plus a seasonal offset.

    The offset of a phase (Saturday, 14:05, ...) is the median, over the previous ``cycles``
    cycles, of how far that phase sat from the level of its time, so one anomalous cycle does
    not move it. The level is the median of the previous cycle *after removing the offsets*:
    without that, two bad days plus a weekend already pull a week's median to weekend level.
    A lasting level change is absorbed within about half a cycle. Without a cycle (or before
    the first one) the median of the previous ``fallback`` steps is used.

    ``values`` may be one series or a 2-D array of equally long series (time on the last axis),
    so thousands of customers are computed in one vectorised pass. NaN values are unknown (an
    incident removed from history): they are skipped, and when a whole cycle is missing the level
    comes from the last four cycles. Steps with no usable history are NaN unless ``fill``.
    """
    values = np.asarray(values, dtype=float)
    block = SeasonalExpectation(np.atleast_2d(values), period, cycles, fallback)
    return block.expected(fill).reshape(values.shape)


class SeasonalExpectation:
    """``seasonal_expectation`` of a (series, steps) block, with its intermediate medians kept.

    Cleaning history (``detector._expectations``) computes the expectation again and again on
    the same values with a few surprising steps left out (NaN). Each step's expectation depends
    only on a few cycles before it, so ``update`` recomputes every intermediate median only at
    the steps whose inputs changed, in the series that changed: a cleaning pass then costs a
    small fraction of a full one, and gives exactly the numbers a full computation would.
    """

    def __init__(self, values: np.ndarray, period: int | None, cycles: int, fallback: int) -> None:
        self.values = np.asarray(values, dtype=float)
        n = self.values.shape[-1]
        self.short_lags = np.arange(1, fallback + 1)
        self.cyclic = bool(period) and period * 2 < n
        if self.cyclic:
            assert period is not None
            # lags of each median and how many of them must be known
            self.cycle_lags = np.array([period * k for k in range(1, cycles + 1)])
            self.rough_lags = _past_lags(2 * period)
            self.level_lags = _past_lags(period)
            self.wide_lags = _past_lags(4 * period, period // 2)
        self.short = _lag_median(self.values, self.short_lags, 1)
        if not self.cyclic:
            self._expected = self.short
            return
        self.rough = _lag_median(self.values, *self.rough_lags)
        self.offset = np.nan_to_num(_lag_median(self.values - self.rough, self.cycle_lags, 1), nan=0.0)
        self.level_one = _lag_median(self.values - self.offset, *self.level_lags)
        # Where the last cycle is mostly unknown, the level comes from the last four cycles.
        wide = _lag_median(self.values - self.offset, *self.wide_lags, at=np.isnan(self.level_one))
        self.level = np.where(np.isnan(self.level_one), wide, self.level_one)
        self.seasonal = _lag_median(self.values - self.level, self.cycle_lags, 1)
        self._expected = np.where(np.isnan(self.seasonal), self.short, self.level + self.seasonal)

    def expected(self, fill: bool = True) -> np.ndarray:
        """The expectation of every step; steps without usable history take the first value if
        ``fill``, else NaN."""
        if not fill or self.values.shape[-1] == 0:
            return self._expected
        return np.where(np.isnan(self._expected), self.values[..., :1], self._expected)

    def update(self, values: np.ndarray) -> SeasonalExpectation:
        """The expectation of ``values`` (same shape), recomputed only where they differ from
        this block's values and where those differences reach."""
        values = np.asarray(values, dtype=float)
        changed = ~_same(values, self.values)
        rows = np.flatnonzero(changed.any(axis=-1))
        out = copy.copy(self)
        out.values = values
        if rows.size == 0:
            return out
        names = ("short", "_expected") + (("rough", "offset", "level_one", "level", "seasonal") if self.cyclic else ())
        part = copy.copy(self)
        for name in names:
            setattr(part, name, getattr(self, name)[rows])
        part._recompute(values[rows], changed[rows])
        for name in names:
            whole = getattr(self, name).copy()
            whole[rows] = getattr(part, name)
            setattr(out, name, whole)
        return out

    def _recompute(self, values: np.ndarray, changed: np.ndarray) -> None:
        """Bring every intermediate up to date with ``values``, which differ from the current
        ones at ``changed``: each median is recomputed only where one of its inputs changed."""
        self.values = values
        self.short, _ = _refresh(self.short, values, self.short_lags, 1, changed)
        if not self.cyclic:
            self._expected = self.short
            return
        self.rough, moved = _refresh(self.rough, values, *self.rough_lags, changed)
        self.offset, moved = _refresh(self.offset, values - self.rough, self.cycle_lags, 1, changed | moved, unknown=0.0)
        shifted, inputs = values - self.offset, changed | moved
        self.level_one, moved = _refresh(self.level_one, shifted, *self.level_lags, inputs)
        wide_at = np.isnan(self.level_one) & (moved | _reach(inputs, self.wide_lags[0]))
        wide = _lag_median(shifted, *self.wide_lags, at=wide_at)
        level = np.where(moved | wide_at, np.where(np.isnan(self.level_one), wide, self.level_one), self.level)
        moved = ~_same(level, self.level)
        self.level = level
        self.seasonal, moved = _refresh(self.seasonal, values - level, self.cycle_lags, 1, changed | moved)
        self._expected = np.where(np.isnan(self.seasonal), self.short, self.level + self.seasonal)


def _past_lags(steps: int, min_count: int | None = None) -> tuple[np.ndarray, int]:
    """Lags of the previous ``steps`` values (the current one excluded), and how many must be
    known: at least ``min_count`` (default: half), so early offsets are not measured against a
    one-value "level". A long cycle (a day of minutes) is summarised by an evenly spaced sample
    of at most MEDIAN_SAMPLE values: the same level for a fraction of the cost."""
    if steps <= MEDIAN_SAMPLE:
        lags = np.arange(1, steps + 1)
    else:
        # Evenly spread, not every k-th lag: with every second one, odd and even steps drew on
        # disjoint halves of the history, and cleaning it could settle into odd steps expecting
        # the old level and even steps a new one (a 5-minute shift alternated for an hour).
        lags = np.unique(np.round(np.linspace(1, steps, MEDIAN_SAMPLE)).astype(int))
    needed = len(lags) // 2 if min_count is None else -(-min_count * len(lags) // steps)
    return lags, max(needed, 1)


def _lag_median(values: np.ndarray, lags: np.ndarray, needed: int, at: np.ndarray | None = None) -> np.ndarray:
    """Median of the values ``lags`` steps before each step of a (series, steps) block, NaN
    where fewer than ``needed`` of them are known; only at the steps marked in ``at`` (NaN
    elsewhere) when given."""
    rows, n = values.shape
    if at is None:
        # A few hundred series at a time, so the lagged copies stay in the CPU's cache.
        out = np.empty((rows, n))
        chunk = max(1, _CHUNK_STEPS // max(n, 1))
        for start in range(0, rows, chunk):
            block = values[start : start + chunk]
            lagged = []
            for lag in lags:
                column = np.full(block.shape, np.nan)
                column[:, lag:] = block[:, : max(n - lag, 0)]
                lagged.append(column)
            out[start : start + chunk] = _median(lagged, needed)
        return out
    out = np.full((rows, n), np.nan)
    row, col = np.nonzero(at)
    if row.size:
        source = col[None, :] - lags[:, None]
        gathered = values[row[None, :], np.maximum(source, 0)]
        gathered[source < 0] = np.nan
        out[row, col] = _median(list(gathered), needed)
    return out


def _median(columns: list[np.ndarray], needed: int = 1) -> np.ndarray:
    """Element-wise median across ``columns`` (equally shaped arrays) ignoring NaN; NaN where
    fewer than ``needed`` values (at least one) are known.

    Up to ``_NETWORK_LIMIT`` columns, a sorting network (Batcher's odd-even merge sort) of
    element-wise min/max orders them: a few dozen whole-array operations instead of one tiny
    sort per step, and the same numbers as ``_nanmedian``.
    """
    if not columns or len(columns) > _NETWORK_LIMIT:
        return _nanmedian(np.stack(columns, axis=-1) if columns else np.empty((0,)), needed)
    ordered = list(columns)
    for a, b in _sorting_network(len(ordered)):
        # NaN sorts last: fmin keeps the known value, maximum the NaN.
        ordered[a], ordered[b] = np.fmin(ordered[a], ordered[b]), np.maximum(ordered[a], ordered[b])
    count = np.zeros(columns[0].shape, dtype=np.int64)
    for column in columns:
        count += ~np.isnan(column)
    size = len(columns)
    low, high = ordered[(size - 1) // 2].copy(), ordered[size // 2].copy()
    partly = count < size  # the middle pair of the known values sits elsewhere
    if partly.any():
        known = count[partly]
        rest = [column[partly] for column in ordered]
        low[partly] = np.choose(np.maximum((known - 1) // 2, 0), rest)
        high[partly] = np.choose(known // 2, rest)
    out = (low + high) / 2
    out[count < max(needed, 1)] = np.nan
    return out


@cache
def _sorting_network(size: int) -> tuple[tuple[int, int], ...]:
    """Comparators (i < j) of Batcher's odd-even merge sort for ``size`` inputs: the network of
    the next power of two without the comparators that only touch the missing inputs."""
    total = 1 << max(size - 1, 0).bit_length()
    pairs = []
    p = 1
    while p < total:
        k = p
        while k >= 1:
            for j in range(k % p, total - k, 2 * k):
                for i in range(min(k, total - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple((a, b) for a, b in pairs if b < size)


def _refresh(
    current: np.ndarray,
    values: np.ndarray,
    lags: np.ndarray,
    needed: int,
    changed: np.ndarray,
    unknown: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``current`` (a ``_lag_median`` of earlier values, NaN replaced by ``unknown`` if given)
    brought up to date with ``values``, which differ at ``changed``; and where it moved."""
    at = _reach(changed, lags)
    median = _lag_median(values, lags, needed, at)
    if unknown is not None:
        median = np.nan_to_num(median, nan=unknown)
    fresh = np.where(at, median, current)
    return fresh, at & ~_same(fresh, current)


def _reach(changed: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """Steps that have a changed step ``lags`` steps before them (for many lags, anywhere in
    their range: a superset is only extra work)."""
    out = np.zeros_like(changed)
    n = changed.shape[-1]
    if len(lags) <= 8:
        for lag in lags:
            if lag < n:
                out[:, lag:] |= changed[:, : n - lag]
        return out
    low, high = int(lags[0]), int(lags[-1])
    total = np.concatenate([np.zeros((len(changed), 1), dtype=np.int64), np.cumsum(changed, axis=-1)], axis=-1)
    idx = np.arange(n)
    return total[:, np.clip(idx - low + 1, 0, n)] > total[:, np.clip(idx - high, 0, n)]


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _nanmedian(values: np.ndarray, needed: int = 1) -> np.ndarray:
    """Median over the last axis ignoring NaN; NaN where fewer than ``needed`` values (at least
    one) are known.

    ``np.nanmedian`` handles these shapes with masked arrays or a Python loop per row; sorting
    once (NaN sorts last) and averaging the middle pair of the known values gives the same
    numbers an order of magnitude faster.
    """
    if values.shape[-1] == 0:
        return np.full(values.shape[:-1], np.nan)
    ordered = np.sort(values, axis=-1)
    count = np.sum(~np.isnan(values), axis=-1)
    low = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0)[..., None], axis=-1)[..., 0]
    high = np.take_along_axis(ordered, (count // 2)[..., None], axis=-1)[..., 0]
    out = (low + high) / 2
    out[count < max(needed, 1)] = np.nan
    return out


def forward_fill(values: np.ndarray) -> np.ndarray:
    """The last known (non-NaN) value at every step along the last axis; NaN before the first."""
    values = np.asarray(values, dtype=float)
    index = np.where(np.isnan(values), 0, np.arange(values.shape[-1]))
    np.maximum.accumulate(index, axis=-1, out=index)
    filled = np.take_along_axis(values, index, axis=-1)
    return filled


def trailing_mean(values: np.ndarray, span: int) -> np.ndarray:
    """Mean of the last ``span`` values including the current one (fewer at the start)."""
    n = values.shape[-1]
    zero = np.zeros((*values.shape[:-1], 1))
    total = np.concatenate([zero, np.cumsum(values, axis=-1)], axis=-1)
    idx = np.arange(n)
    low = np.maximum(0, idx - span + 1)
    return (total[..., idx + 1] - total[..., low]) / (idx + 1 - low)


def robust_sigma(values: np.ndarray, floor: float) -> float:
    """Spread of residuals as a normal sigma: 1.4826 MAD, or, when more than half of them are
    identical (MAD 0: a flat line with occasional bursts, an idle metric), the mean absolute
    deviation scaled the same way, so the bursts set the spread instead of a near-zero floor
    that would make every later wiggle billions of spreads away."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return max(floor, 1e-9)
    deviation = np.abs(values - np.median(values))
    spread = float(np.median(deviation)) * 1.4826
    if spread <= floor:
        spread = float(np.mean(deviation)) * 1.2533
    return max(spread, floor, 1e-9)


def weekends_apart(values: np.ndarray, timestamps: pd.DatetimeIndex, per_day: int, min_change: float) -> bool:
    """Whether the weekends of ``values`` (a training part with a daily cycle of ``per_day``
    steps) sit at a level of their own.

    Each whole day is summarised by its median, which compares days' levels whatever the
    cycle's shape. Weekends are apart when every whole weekend day lies the same way from the
    weekdays' median, by half the weekend days' median deviation at least, and that median
    deviation is a ratio of ``1 + min_change`` or more (or its inverse or less) and beyond
    three of the weekdays' own day-to-day spreads: one incident on a weekend, or a series that
    wanders from day to day, is not a weekly pattern. Levels are compared as ratios (load and
    demand scale), so series that reach zero or below are left alone.
    """
    if min_change <= 0 or per_day < 2 or len(values) < per_day:
        return False
    days = pd.Series(np.asarray(values, dtype=float), index=timestamps.normalize())
    grouped = days.groupby(level=0)
    medians = grouped.median()[(grouped.count() == per_day).to_numpy()]
    weekend = np.asarray(medians.index.day_of_week >= 5)
    if weekend.sum() < 1 or (~weekend).sum() < 3 or not (medians.to_numpy() > 0).all():
        return False
    logs = np.log(medians.to_numpy())
    weekday = np.median(logs[~weekend])
    noise = 1.4826 * np.median(np.abs(logs[~weekend] - weekday))
    deviation = logs[weekend] - weekday
    typical = float(np.median(deviation))
    consistent = (np.sign(deviation) == np.sign(typical)) & (np.abs(deviation) >= 0.5 * abs(typical))
    return bool(abs(typical) >= np.log1p(min_change) and abs(typical) > 3 * noise and consistent.all())


def day_of_month_offsets(
    timestamps: pd.DatetimeIndex, residuals: np.ndarray, sigma: float, min_months: int = 3
) -> dict[int, float]:
    """Day-of-month effects that recur in training (month-start invoices, monthly jobs).

    A day gets an offset when its median residual over the training months is beyond three
    robust spreads and has the same sign in at least 75% of those months.
    """
    # All days at once on the residuals sorted by (day, value): a group's median is its middle
    # value (the mean of the two middle ones), as pandas takes it; a loop of pandas groups cost
    # milliseconds per customer, which thousands of customers pay at every training.
    residuals = np.asarray(residuals, dtype=float)
    known = ~np.isnan(residuals)
    days, res = np.asarray(timestamps.day)[known], residuals[known]
    order = np.lexsort((res, days))
    days, res = days[order], res[order]
    if not len(days):
        return {}
    start = np.flatnonzero(np.r_[True, days[1:] != days[:-1]])
    size = np.diff(np.r_[start, len(days)])
    low, high = res[start + (size - 1) // 2], res[start + size // 2]
    median = np.where(size % 2 == 1, low, (low + high) / 2)
    same_sign = np.add.reduceat(np.sign(res) == np.repeat(np.sign(median), size), start) / size
    chosen = (size >= min_months) & (np.abs(median) > 3 * sigma) & (same_sign >= 0.75)
    return {int(d): float(m) for d, m in zip(days[start][chosen], median[chosen], strict=True)}


def recent_day_of_month_offsets(
    residuals: np.ndarray, days: np.ndarray, sigma: np.ndarray, prior: np.ndarray, occurrences: int = 3
) -> np.ndarray:
    """Day-of-month effect at every step, from that day's residuals in the last few months.

    Month-start invoices change size (a bigger commitment, a level shift that scales them), so a
    fixed offset learned once goes stale. The offset of the 1st of a month is the median of the
    residuals of the previous ``occurrences`` 1sts, kept only when beyond three spreads: two
    recent months agreeing make a recurring charge, one odd month does not. Until a day has
    ``occurrences`` measured earlier occurrences, ``prior`` (learned on training) is used.

    ``residuals`` is (series, steps) against the weekly expectation, ``days`` the day of month
    of each step, ``sigma`` (series, 1) the residual spread, ``prior`` (series, 32) by day.
    """
    # previous[j, t]: position of the (j+1)-th earlier step with the same day of month (-1: none)
    previous = np.full((occurrences, len(days)), -1)
    for day in np.unique(days):
        idx = np.flatnonzero(days == day)
        for j in range(min(occurrences, len(idx) - 1)):
            previous[j, idx[j + 1 :]] = idx[: len(idx) - j - 1]
    padded = np.concatenate([residuals, np.full((residuals.shape[0], 1), np.nan)], axis=1)
    # position -1 is the NaN pad; NaN unless all occurrences are known
    median = _median([padded[:, earlier] for earlier in previous], needed=occurrences)
    recent = np.where(np.abs(median) > 3 * sigma, median, 0.0)
    return np.where(np.isnan(median), prior[:, days], recent)


def decrease_rate(values: np.ndarray) -> np.ndarray:
    """Step-over-step relative change; undefined (NaN) where the previous value is zero."""
    values = np.asarray(values, dtype=float)
    rate = np.full(len(values), np.nan)
    if len(values) > 1:
        prev = values[:-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            rate[1:] = np.where(np.abs(prev) > 1e-12, (values[1:] - prev) / np.abs(prev), np.nan)
    return rate


def learn_threshold(
    train_scores: np.ndarray, quantile: float, reach: float, minimum: float = 0.0
) -> tuple[float, float]:
    """(center, threshold) of a signal from its training scores.

    Training history is never clean (it holds the incidents nobody labelled), so an extreme
    quantile would learn the incidents themselves as normal. Instead the threshold reaches
    ``reach`` times the distance from the median to a moderate quantile beyond that quantile:
    a few percent of contamination barely moves it, while heavy-tailed signals still get a
    proportionally higher threshold.
    """
    scores = np.asarray(train_scores, dtype=float)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return 0.0, max(minimum, 1.0)
    center = float(np.median(scores))
    upper = float(np.quantile(scores, quantile))
    threshold = max(upper + reach * (upper - center), minimum)
    # A signal that barely varies in training must not turn tiny wiggles into alarms.
    threshold = max(threshold, center + max(abs(center) * 0.1, 1e-6))
    return center, threshold


def tail_quantile(scores: np.ndarray, p: float, base: float = 0.98, min_excesses: int = 10) -> float:
    """The score exceeded with probability ``p``, extrapolated beyond the data by peaks over
    threshold (extreme value theory).

    Above the ``base`` quantile, excesses follow a generalised Pareto distribution whatever the
    score's distribution (Pickands-Balkema-de Haan); its shape and scale come from probability
    weighted moments (Hosking and Wallis, 1987): closed form, so thousands of series calibrate
    in milliseconds, and stable on few excesses where maximum likelihood is not. The shape is
    kept within [-0.5, 0.5]. Where ``p`` is not in the tail (``p >= 1 - base``) the empirical
    quantile is returned; with too few excesses to fit, the largest score.
    """
    values = np.asarray(scores, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return -np.inf
    if p >= 1.0 - base:
        return float(np.quantile(values, 1.0 - p))
    start = float(np.quantile(values, base))
    excess = np.sort(values[values > start] - start)
    if excess.size < min_excesses:
        return float(values.max())
    share = excess.size / values.size
    plotting = (np.arange(1, excess.size + 1) - 0.35) / excess.size
    a0, a1 = float(excess.mean()), float(np.mean((1.0 - plotting) * excess))
    if a0 - 2 * a1 <= 0:
        return float(values.max())
    shape = float(np.clip(2.0 - a0 / (a0 - 2 * a1), -0.5, 0.5))  # xi = -k of Hosking-Wallis
    scale = 2 * a0 * a1 / (a0 - 2 * a1)
    if abs(shape) < 1e-6:
        return start + scale * float(np.log(share / p))
    return start + scale / shape * ((p / share) ** (-shape) - 1.0)


def above_ties(scores: np.ndarray, threshold: float, p: float) -> float:
    """``threshold``, or just above it where more training scores reach it than ``p`` allows.

    A step is flagged at its threshold or beyond, so a threshold that lands on a value many
    training steps share (a count's every spike of the same height, a metric clipped at a
    ceiling) would flag all of them: the budget is broken by the tie, not by the tail. One
    step is always allowed: a threshold at the training maximum is meant to flag its equal."""
    values = np.asarray(scores, dtype=float)
    values = values[np.isfinite(values)]
    if np.sum(values >= threshold) > max(1.0, p * values.size):
        return float(np.nextafter(threshold, np.inf))
    return threshold


def preceding_peak(values: np.ndarray, span: int) -> np.ndarray:
    """The largest of the ``span`` values before each step (not the step itself; 0 where
    there are none, NaN counted as 0), along the last axis: a sparse-table maximum in
    O(n log span), for one series or a (series, steps) block."""
    values = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)

    def shifted(x: np.ndarray, by: int) -> np.ndarray:
        out = np.zeros_like(x)
        if by < x.shape[-1]:
            out[..., by:] = x[..., : x.shape[-1] - by]
        return out

    if span <= 0 or values.shape[-1] == 0:
        return np.zeros_like(values)
    before = shifted(values, 1)
    peak, width = before, 1
    while 2 * width <= span:
        peak = np.maximum(peak, shifted(peak, width))
        width *= 2
    return np.maximum(peak, shifted(peak, span - width))


def settled_shift(
    values: np.ndarray, z: np.ndarray, spread: np.ndarray, span: int, limit: float, share: float, noise: float
) -> np.ndarray:
    """``z`` where a lasting shift has settled: measured from the new level as well, and the
    smaller of the two deviations kept.

    A shift has settled at a step when at least ``share`` of the ``span`` steps before it lay
    beyond ``limit`` spreads the same way and scattered around their median no wider than
    ``noise`` spreads (interquartile range / 1.349): a metric that moved to a new plateau and
    stays there with its usual noise. The seasonal history takes about half its cycles to learn
    such a level, and every step flagged meanwhile is an alarm about old news. A bursty incident
    scatters too widely to settle; a step back to the old level stays near its expectation and a
    spike on the plateau is far from both, so neither is hidden.
    """
    if span < 2 or len(values) <= span:
        return z
    beyond = pd.DataFrame({"up": z > limit, "down": z < -limit}, dtype=float).rolling(span).mean().shift(1)
    recent = pd.Series(values, dtype=float).rolling(span, min_periods=span)
    level = recent.median().shift(1).to_numpy()
    scatter = (recent.quantile(0.75) - recent.quantile(0.25)).shift(1).to_numpy() / 1.349
    with np.errstate(invalid="ignore"):
        settled = ((beyond["up"] >= share) | (beyond["down"] >= share)).to_numpy() & (scatter <= noise * spread)
        from_level = (values - level) / spread
        return np.where(settled & (np.abs(from_level) < np.abs(z)), from_level, z)


def carry_over(flags: np.ndarray, skip: np.ndarray) -> np.ndarray:
    """``flags`` with each ``skip`` step taking the flag of the latest step before it that is
    not skipped (False before any); along the last axis, for one series or a block."""
    flags, skip = np.asarray(flags, dtype=bool), np.asarray(skip, dtype=bool)
    if not skip.any():
        return flags
    idx = np.arange(flags.shape[-1])
    latest = np.maximum.accumulate(np.where(skip, -1, idx), axis=-1)
    carried = np.take_along_axis(flags, np.maximum(latest, 0), axis=-1)
    return np.where(skip, carried & (latest >= 0), flags)


def repeats(flags: np.ndarray, quiet: int) -> np.ndarray:
    """Flagged steps whose run of flags started within ``quiet`` steps after an earlier flagged
    step: the same incident flaring up again, not a new one. ``flags`` may be one series or a
    (series, steps) block.

    Only flags before a run's first step decide, so a day's answer never changes later, and the
    daily run needs just ``quiet`` steps of earlier flags to give the same answer.
    """
    flags = np.asarray(flags, dtype=bool)
    if quiet <= 0 or not flags.any():
        return np.zeros_like(flags)
    lead = np.zeros((*flags.shape[:-1], 1), dtype=bool)
    onsets = flags & ~np.concatenate([lead, flags[..., :-1]], axis=-1)
    before = np.concatenate([lead.astype(np.int64), np.cumsum(flags, axis=-1)], axis=-1)
    idx = np.arange(flags.shape[-1])
    # flagged steps in [t - quiet, t - 1] (t - 1 is never flagged at an onset)
    recent = before[..., idx] - before[..., np.maximum(idx - quiet, 0)]
    # each flagged step is a repeat when its run's onset (the latest onset so far) is one
    onset = np.maximum.accumulate(np.where(onsets, idx, 0), axis=-1)
    return flags & np.take_along_axis(onsets & (recent > 0), onset, axis=-1)


def long_runs(mask: np.ndarray, length: int) -> np.ndarray:
    """``mask`` where it is part of a run of at least ``length`` consecutive True steps."""
    mask = np.asarray(mask, dtype=bool)
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    out = np.zeros_like(mask)
    for start, end in zip(starts, ends, strict=True):
        if end - start >= length:
            out[start:end] = True
    return out


def constant_runs(values: np.ndarray, breaks: np.ndarray) -> np.ndarray:
    """Per step of a (series, steps) block, how many steps in a row, this one included, have
    had exactly this value (1 where it differs from the step before); a step marked in
    ``breaks`` (a filled gap: a straight line between two equal values is flat by
    construction) starts afresh and is 0 itself."""
    values = np.asarray(values, dtype=float)
    breaks = np.asarray(breaks, dtype=bool)
    same = np.zeros(values.shape, dtype=bool)
    same[..., 1:] = (values[..., 1:] == values[..., :-1]) & ~breaks[..., :-1]
    same &= ~breaks
    position = np.broadcast_to(np.arange(values.shape[-1]), values.shape)
    first = np.maximum.accumulate(np.where(same, 0, position), axis=-1)
    return np.where(breaks, 0, position - first + 1)


def trailing_any(mask: np.ndarray, span: int) -> np.ndarray:
    """True where any of the last ``span`` steps (including the current one) is True: the
    windows ending at a step that contain a marked step."""
    counts = np.cumsum(np.concatenate([[0], np.asarray(mask, dtype=np.int64)]))
    idx = np.arange(len(mask))
    return (counts[idx + 1] - counts[np.maximum(0, idx + 1 - span)]) > 0


def normalise(scores: np.ndarray, center: float | np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """Map a signal so 0 is its typical training value and 1 is its learned threshold (per
    series of a block: ``center`` and ``threshold`` broadcast against ``scores``)."""
    out = (np.asarray(scores, dtype=float) - center) / (threshold - center)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1e3)


def hybrid(normalised: dict[str, np.ndarray], weights: dict[str, float], cap: float = np.inf) -> np.ndarray:
    """Mean of the two largest weighted normalised signals, each capped at ``cap`` (see module
    docstring); step by step, for one series or a (series, steps) block."""
    names = [name for name in normalised if weights.get(name, 1.0) > 0]
    if not names:
        raise ValueError("hybrid needs at least one signal with a positive weight")
    stacked = np.minimum(np.stack([normalised[name] * weights.get(name, 1.0) for name in names]), cap)
    if len(names) == 1:
        return stacked[0]
    top2 = -np.sort(-stacked, axis=0)[:2]
    return top2.mean(axis=0)


def reasons(normalised: dict[str, np.ndarray], flags: dict[str, np.ndarray]) -> np.ndarray:
    """Per step (of one series or a (series, steps) block), the comma-separated names (sorted)
    of the signals at or above their threshold and of the raised flags. Each step's set is coded
    as bits, so thousands of customers' steps cost one string per distinct combination, not one
    per step."""
    names = sorted(set(normalised) | set(flags))
    shape = np.shape(next(iter(normalised.values())))
    code = np.zeros(shape, dtype=np.int64)
    for bit, name in enumerate(names):
        fired = np.zeros(shape, dtype=bool)
        if name in normalised:
            fired |= np.asarray(normalised[name]) >= 1.0
        if name in flags:
            fired |= np.asarray(flags[name], dtype=bool)
        code |= fired.astype(np.int64) << bit
    if not code.size:
        return np.empty(shape, dtype=object)
    distinct, position = np.unique(code, return_inverse=True)
    text = np.array(
        [",".join(name for bit, name in enumerate(names) if int(c) >> bit & 1) for c in distinct], dtype=object
    )
    return text[position.reshape(-1)].reshape(shape)
