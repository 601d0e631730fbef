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

import numpy as np
import pandas as pd

MEDIAN_SAMPLE = 256
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
    n = values.shape[-1]
    short = _lagged_median(values, list(range(1, fallback + 1)))
    if not period or period * 2 >= n:
        expected = short
    else:
        lags = [period * k for k in range(1, cycles + 1)]
        rough_level = _past_median(values, 2 * period)
        offset = np.nan_to_num(_lagged_median(values - rough_level, lags), nan=0.0)
        level = _past_median(values - offset, period)
        level = np.where(np.isnan(level), _past_median(values - offset, 4 * period, period // 2), level)
        offset = _lagged_median(values - level, lags)
        expected = np.where(np.isnan(offset), short, level + offset)
    if not fill:
        return expected
    first = values[..., :1] if n else np.zeros((*values.shape[:-1], 1))
    return np.where(np.isnan(expected), first, expected)


def _nanmedian(values: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN; NaN where nothing is known.

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
    out[count == 0] = np.nan
    return out


def _past_median(values: np.ndarray, steps: int, min_count: int | None = None) -> np.ndarray:
    """Median of the previous ``steps`` values (the current one excluded); NaN until at least
    ``min_count`` (default: half) of them are known, so early offsets are not measured against
    a one-value "level"."""
    pad = np.full((*values.shape[:-1], steps), np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(np.concatenate([pad, values], axis=-1), steps, axis=-1)
    # A long cycle (a day of minutes) is summarised by an evenly spaced sample of at most
    # MEDIAN_SAMPLE values: the same level for a fraction of the cost.
    stride = -(-steps // MEDIAN_SAMPLE)
    windows = windows[..., : values.shape[-1], ::-1][..., ::stride]
    steps = windows.shape[-1]
    min_count = None if min_count is None else -(-min_count // stride)
    out = _nanmedian(windows)
    needed = max(steps // 2 if min_count is None else min_count, 1)
    out[np.sum(~np.isnan(windows), axis=-1) < needed] = np.nan
    return out


def _lagged_median(values: np.ndarray, lags: list[int], min_count: int = 1) -> np.ndarray:
    n = values.shape[-1]
    lagged = np.full((*values.shape, len(lags)), np.nan)
    for j, lag in enumerate(lags):
        if lag < n:
            lagged[..., lag:, j] = values[..., : n - lag]
    out = _nanmedian(lagged)
    out[np.sum(~np.isnan(lagged), axis=-1) < min_count] = np.nan
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


def day_of_month_offsets(
    timestamps: pd.DatetimeIndex, residuals: np.ndarray, sigma: float, min_months: int = 3
) -> dict[int, float]:
    """Day-of-month effects that recur in training (month-start invoices, monthly jobs).

    A day gets an offset when its median residual over the training months is beyond three
    robust spreads and has the same sign in at least 75% of those months.
    """
    offsets: dict[int, float] = {}
    frame = pd.DataFrame({"dom": timestamps.day, "res": residuals}).dropna()
    for dom, group in frame.groupby("dom"):
        if len(group) < min_months:
            continue
        median = float(group["res"].median())
        same_sign = float(np.mean(np.sign(group["res"]) == np.sign(median)))
        if abs(median) > 3 * sigma and same_sign >= 0.75:
            offsets[int(dom)] = median
    return offsets


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
    lagged = padded[:, previous.T]  # (series, steps, occurrences); position -1 is the NaN pad
    median = np.median(lagged, axis=-1)  # NaN unless all occurrences are known
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


def repeats(flags: np.ndarray, quiet: int) -> np.ndarray:
    """Flagged steps whose run of flags started within ``quiet`` steps after an earlier flagged
    step: the same incident flaring up again, not a new one.

    Only flags before a run's first step decide, so a day's answer never changes later, and the
    daily run needs just ``quiet`` steps of earlier flags to give the same answer.
    """
    flags = np.asarray(flags, dtype=bool)
    if quiet <= 0 or not flags.any():
        return np.zeros_like(flags)
    previous = np.concatenate([[False], flags[:-1]])
    onsets = flags & ~previous
    before = np.concatenate([[0], np.cumsum(flags)])
    idx = np.arange(len(flags))
    # flagged steps in [t - quiet, t - 1] (t - 1 is never flagged at an onset)
    recent = before[idx] - before[np.maximum(idx - quiet, 0)]
    run = np.cumsum(onsets)  # run number of each step (0 before the first onset)
    repeated_run = np.concatenate([[False], (recent > 0)[onsets]])
    return flags & repeated_run[run]


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


def trailing_any(mask: np.ndarray, span: int) -> np.ndarray:
    """True where any of the last ``span`` steps (including the current one) is True: the
    windows ending at a step that contain a marked step."""
    counts = np.cumsum(np.concatenate([[0], np.asarray(mask, dtype=np.int64)]))
    idx = np.arange(len(mask))
    return (counts[idx + 1] - counts[np.maximum(0, idx + 1 - span)]) > 0


def normalise(scores: np.ndarray, center: float, threshold: float) -> np.ndarray:
    """Map a signal so 0 is its typical training value and 1 is its learned threshold."""
    out = (np.asarray(scores, dtype=float) - center) / (threshold - center)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1e3)


def hybrid(normalised: dict[str, np.ndarray], weights: dict[str, float], cap: float = np.inf) -> np.ndarray:
    """Mean of the two largest weighted normalised signals, each capped at ``cap`` (see module
    docstring)."""
    names = [name for name in normalised if weights.get(name, 1.0) > 0]
    if not names:
        raise ValueError("hybrid needs at least one signal with a positive weight")
    stacked = np.minimum(np.vstack([normalised[name] * weights.get(name, 1.0) for name in names]), cap)
    if len(names) == 1:
        return stacked[0]
    top2 = -np.sort(-stacked, axis=0)[:2]
    return top2.mean(axis=0)


def reasons(normalised: dict[str, np.ndarray], flags: dict[str, np.ndarray]) -> np.ndarray:
    """Per step, the comma-separated names (sorted) of the signals at or above their threshold
    and of the raised flags. Each step's set is coded as bits, so thousands of customers' steps
    cost one string per distinct combination, not one per step."""
    names = sorted(set(normalised) | set(flags))
    n = len(next(iter(normalised.values())))
    code = np.zeros(n, dtype=np.int64)
    for bit, name in enumerate(names):
        fired = np.zeros(n, dtype=bool)
        if name in normalised:
            fired |= np.asarray(normalised[name]) >= 1.0
        if name in flags:
            fired |= np.asarray(flags[name], dtype=bool)
        code |= fired.astype(np.int64) << bit
    distinct, position = np.unique(code, return_inverse=True)
    text = np.array(
        [",".join(name for bit, name in enumerate(names) if int(c) >> bit & 1) for c in distinct], dtype=object
    )
    return text[position.reshape(-1)] if n else np.array([], dtype=object)
