"""Fit the detectors on each series' training part, then score every step.

This is the one place that runs the method; ``detect()`` and the Dagster assets both call
``fit_detectors`` and ``score_series`` so a notebook and a scheduled run give the same scores.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from anomaly_pipelines.core import scoring
from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.model_settings import ModelSettings
from anomaly_pipelines.core.models import lstm_autoencoder as lstm
from anomaly_pipelines.core.models import lstm_workers
from anomaly_pipelines.core.models.outlier import (
    CustomerOutlierModels,
    anomaly_score,
    fit_isolation_forest,
    fit_local_outlier_factor,
    pooled,
    window_detector,
    window_features,
)

# The scores table's columns and types are defined once, by its pandera model.
from anomaly_pipelines.core.score_schema import SCORE_COLUMNS
from anomaly_pipelines.core.series import CustomerSeries
from anomaly_pipelines.core.windows import WEEK, Scaler, season_period, sliding_windows, window_size


class Expectation(NamedTuple):
    """Expected value and spread of each step of a series."""

    expected: np.ndarray
    spread: np.ndarray
    # The expected value before calendar recurrence (``_calendar_recurrence``): what the step
    # usually is on its weekday and day of the month, with last year's holidays not yet
    # explained away. Portfolio moves are counted on it.
    usual: np.ndarray


@dataclass
class Calibration:
    """Everything scoring needs about one customer besides the fitted models."""

    customer_id: str
    window: int
    period: int | None
    scaler: Scaler
    train_size: int
    # First timestamp with two cycles of history before it: earlier steps are warm-up.
    warm_until: pd.Timestamp
    train_end: pd.Timestamp
    residual_sigma: float
    # Median |value| of the training part: the spread grows with the level above it.
    typical_level: float
    # Day-of-month effects seen in training; None: the series has no monthly calendar (sub-daily
    # or too short), so no day-of-month effects are modelled at all.
    day_of_month_offsets: dict[int, float] | None
    # signal -> (center, threshold), learned on the training part
    thresholds: dict[str, tuple[float, float]]
    lstm_notebook_threshold: float
    # The window models' thresholds for hindsight scoring (the least anomalous covering window
    # scores lower than the window ending on a step); None: models trained before they existed,
    # which use the online ones.
    retrospective_thresholds: dict[str, tuple[float, float]] | None = None
    # Weekends follow their own daily cycle and level, learned from earlier weekend days only
    # (``hybrid.weekend_level_change``); False: every day is alike (or the cycle is weekly).
    weekends_apart: bool = False
    # With weekends apart, weekend steps before this one have less than two weekend days of
    # history: warm-up, like the steps before ``warm_until``.
    weekend_warm_until: pd.Timestamp | None = None


@dataclass
class FittedDetectors:
    """The trained model of a set of customers (one training run), with the settings it was
    trained under.

    Thresholds only mean something under the settings they were learned with, so the model
    keeps its own copy (``settings``) and scoring refuses a configuration that changes one of
    them (``check_settings``); ``save``/``load`` keep models and settings together on disk
    (``core.model_files``), and the registry stores that directory as it is.
    """

    calibrations: dict[str, Calibration] = field(default_factory=dict)
    autoencoders: list[lstm.AutoencoderFit] = field(default_factory=list)
    isolation_forest: CustomerOutlierModels = field(
        default_factory=lambda: CustomerOutlierModels("isolation_forest")
    )
    local_outlier_factor: CustomerOutlierModels = field(
        default_factory=lambda: CustomerOutlierModels("local_outlier_factor")
    )
    skipped: dict[str, str] = field(default_factory=dict)
    # None only for a model that holds no customer (nothing was trained).
    settings: ModelSettings | None = None
    # The series it was fitted on, scored by every model to learn the thresholds: scoring the
    # same series under the same configuration next (``detect()``) reuses them. Never saved.
    fit_scores: dict[str, tuple[bytes, dict[str, Any]]] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "fit_scores": {}}

    def check_settings(self, config: PipelineConfig) -> None:
        """Raise ``model_settings.SettingsMismatch`` naming each defining setting that
        ``config`` changes (decision-time settings may differ; see ``model_settings.LIVE``)."""
        if self.settings is not None:
            self.settings.check(config, "the fitted model")
        elif self.calibrations:
            raise ValueError(
                "the fitted model does not record the settings it was trained under; retrain it"
            )

    def save(self, directory: str | Path) -> Path:
        """Write the model to ``directory`` (see ``core.model_files`` for the layout)."""
        from anomaly_pipelines.core import model_files

        return model_files.save(self, Path(directory))

    @classmethod
    def load(cls, directory: str | Path) -> FittedDetectors:
        """A model written by ``save``, settings included."""
        from anomaly_pipelines.core import model_files

        return model_files.load(Path(directory))

    def subset(self, customer_ids: Iterable[str]) -> FittedDetectors:
        """The models of ``customer_ids`` only (a stacked autoencoder stays shared, not copied);
        a customer this model does not hold keeps its reason if it was skipped."""
        wanted = set(customer_ids) & set(self.calibrations)
        autoencoders = []
        for fit in self.autoencoders:
            rows = [i for i, cid in enumerate(fit.customer_ids) if cid in wanted]
            if rows:
                autoencoders.append(
                    lstm.AutoencoderFit(
                        fit.built,
                        [fit.customer_ids[i] for i in rows],
                        np.asarray(fit.train_loss)[rows],
                        np.asarray(fit.val_loss)[rows],
                        np.asarray(fit.epochs)[rows],
                        fit.history,  # the stacked model's curve: shared, like the model
                    )
                )
        return FittedDetectors(
            calibrations={cid: cal for cid, cal in self.calibrations.items() if cid in wanted},
            autoencoders=autoencoders,
            isolation_forest=self.isolation_forest.subset(wanted),
            local_outlier_factor=self.local_outlier_factor.subset(wanted),
            skipped={cid: why for cid, why in self.skipped.items() if cid in set(customer_ids)},
            settings=self.settings,
        )

    @classmethod
    def combine(cls, parts: list[FittedDetectors], skipped: dict[str, str]) -> FittedDetectors:
        """One model from models of disjoint customer sets trained under the same defining
        settings (the champions of several trainings), plus the customers ``skipped`` and why."""
        out = FittedDetectors(skipped=dict(skipped), settings=parts[0].settings if parts else None)
        for part in parts:
            if part.settings is None or out.settings is None:
                raise ValueError("combine(): every part must record its settings")
            part.settings.check(out.settings.config(), "combine(): a part")
            overlap = set(part.calibrations) & set(out.calibrations)
            if overlap:
                raise ValueError(f"combine(): customers in more than one part: {sorted(overlap)}")
            out.calibrations.update(part.calibrations)
            out.autoencoders.extend(part.autoencoders)
            out.isolation_forest.models.update(part.isolation_forest.models)
            out.local_outlier_factor.models.update(part.local_outlier_factor.models)
        return out

    def autoencoder_for(self, customer_id: str) -> Any:
        model = self.autoencoders_by_customer().get(customer_id)
        if model is None:
            raise KeyError(f"no autoencoder trained for customer {customer_id!r}")
        return model

    def autoencoders_by_customer(self) -> dict[str, Any]:
        """Each customer's stacked model (the first that holds it): one pass over the models,
        where a search per customer would cost thousands of customers times the models."""
        out: dict[str, Any] = {}
        for fit in self.autoencoders:
            for cid in fit.customer_ids:
                out.setdefault(cid, fit.model)
        return out

    def training_summary(self) -> pd.DataFrame:
        """One row per trained customer: how its LSTM trained, and what its expectation is
        built from (``cycle_steps``: steps per seasonal cycle, none for a series too short or
        too coarse for one; ``weekends_apart``; ``scored_from``, the first step past the
        warm-up, and with weekends apart ``weekends_scored_from``, the first weekend step
        with a weekend before it), so a user who sees steps reported as ``warmup`` can tell why."""
        rows = []
        for fit in self.autoencoders:
            for i, cid in enumerate(fit.customer_ids):
                cal = self.calibrations[cid]
                rows.append(
                    {
                        "customer_id": cid,
                        "train_size": cal.train_size,
                        "window": cal.window,
                        "epochs": int(fit.epochs[i]),
                        "train_loss": float(fit.train_loss[i]),
                        "val_loss": float(fit.val_loss[i]),
                        "lstm_threshold": cal.lstm_notebook_threshold,
                        "residual_threshold": cal.thresholds["residual"][1],
                        "cycle_steps": cal.period,
                        "weekends_apart": cal.weekends_apart,
                        "scored_from": cal.warm_until,
                        "weekends_scored_from": cal.weekend_warm_until,
                    }
                )
        return pd.DataFrame(rows)


@dataclass
class PortfolioMoves:
    """At each timestamp, how many warmed-up daily series were scored and how many of them
    deviated beyond ``hybrid.portfolio_move_z`` spreads down and up: what tells a move of the
    whole portfolio (a public holiday, a provider-wide change) from one customer's incident.
    Counted over every series scored together, their whole history, so the daily run (which
    scores only the newest steps) and a full scoring see the same counts.

    Deviations are counted from what each step usually is (``Expectation.usual``), before
    calendar recurrence: in a holiday's second year most series expect it from last year and
    no longer deviate, so counted after recurrence the holiday stopped being a move, and the
    few series whose last year did not match (it fell on a Sunday, the account was new) were
    flagged alone."""

    stamps: np.ndarray  # sorted unique timestamps (ns)
    counted: np.ndarray
    down: np.ndarray
    up: np.ndarray

    @classmethod
    def count(
        cls, items: list[tuple[CustomerSeries, int, np.ndarray]], fitted: FittedDetectors, config: PipelineConfig
    ) -> PortfolioMoves | None:
        """The moves of ``(series, start, usual_z from step start on)``; None when the rule is
        off or too few daily series are scored together for it to apply anywhere."""
        hybrid = config.hybrid
        daily = [item for item in items if item[0].frequency >= pd.Timedelta(days=1)]
        if hybrid.portfolio_move_share <= 0 or len(daily) <= hybrid.portfolio_move_min_series:
            return None
        # Series on one time grid are counted as one (series, steps) block: a Python step per
        # series cost seconds at 10,000 customers, which the daily run must not pay.
        grids: dict[tuple[Any, ...], list[tuple[CustomerSeries, int, np.ndarray]]] = defaultdict(list)
        for series, start, z in daily:
            first = series.timestamps[start] if start < len(series) else None
            grids[(first, len(series) - start, series.frequency)].append((series, start, z))
        stamps, counted, down, up = [], [], [], []
        for members in grids.values():
            series, start, _ = members[0]
            grid = series.timestamps.as_unit("ns").asi8[start:]
            cals = [fitted.calibrations[s.customer_id] for s, _, _ in members]
            starts = np.array([start for _, start, _ in members])
            scored = ~_warm_up(grid[None, :], starts, cals, series.frequency)
            z = np.nan_to_num(np.vstack([z for _, _, z in members]), nan=0.0)
            stamps.append(grid)
            counted.append(scored.sum(axis=0))
            down.append((scored & (z < -hybrid.portfolio_move_z)).sum(axis=0))
            up.append((scored & (z > hybrid.portfolio_move_z)).sum(axis=0))
        unique, at = np.unique(np.concatenate(stamps), return_inverse=True)
        if not unique.size:
            return None
        total = [np.bincount(at, weights=np.concatenate(part), minlength=unique.size).astype(np.int64) for part in (counted, down, up)]
        return cls(unique, *total)

    def explains(self, stamps: np.ndarray, z: np.ndarray, counted: np.ndarray, config: PipelineConfig) -> np.ndarray:
        """Which steps (timestamps ``stamps``, deviations ``z``, ``counted`` if among the
        counted steps) deviate the way at least ``portfolio_move_share`` of the other counted
        series did at that time."""
        hybrid = config.hybrid
        at = np.minimum(np.searchsorted(self.stamps, stamps), len(self.stamps) - 1)
        known = counted & (self.stamps[at] == stamps)
        down = known & (np.nan_to_num(z, nan=0.0) < -hybrid.portfolio_move_z)
        up = known & (np.nan_to_num(z, nan=0.0) > hybrid.portfolio_move_z)
        others = self.counted[at] - known
        alike = np.where(down, self.down[at] - 1, np.where(up, self.up[at] - 1, 0))
        return (down | up) & (others >= hybrid.portfolio_move_min_series) & (alike >= hybrid.portfolio_move_share * others)


def _warm_up(stamps: np.ndarray, starts: np.ndarray, cals: list[Calibration], frequency: pd.Timedelta) -> np.ndarray:
    """(series, steps): the warm-up steps of series ``cals`` at ``stamps`` (ns; one row per
    series, or one row for all), their first step being step ``starts`` of each series: before
    two cycles of history and the window after them, before the first whole window, or (weekends
    apart) on the first weekend. Never flagged, never counted in a portfolio move."""
    warm_until = np.array([(c.warm_until + (c.window - 1) * frequency).as_unit("ns").value for c in cals])
    position = starts[:, None] + np.arange(stamps.shape[-1])
    warm = (stamps < warm_until[:, None]) | (position < np.array([c.window for c in cals])[:, None] - 1)
    return warm | _first_weekend(stamps, cals)


def _first_weekend(stamps: np.ndarray, cals: list[Calibration]) -> np.ndarray:
    """(series, steps): weekend steps (``stamps`` in ns) before ``weekend_warm_until``."""
    stamps = np.atleast_2d(stamps)
    until = [c.weekend_warm_until for c in cals]
    if all(t is None for t in until):
        return np.zeros((len(cals), stamps.shape[-1]), dtype=bool)
    limit = np.array([np.iinfo(np.int64).min if t is None else t.as_unit("ns").value for t in until])
    # Days since the epoch, a Thursday: Saturday and Sunday are 2 and 3.
    weekend = (stamps // 86_400_000_000_000 + 3) % 7 >= 5
    return weekend & (stamps < limit[:, None])


def _model_input(
    series: CustomerSeries,
    cal: Calibration,
    config: PipelineConfig,
    expectation: Expectation | None = None,
    start: int = 0,
) -> np.ndarray:
    """What the window models see (from step ``start`` on): standardised residuals by default,
    so growth, seasonality and scale are already removed and a model trained on the past still
    fits the present; or the notebook's scaled raw values (``windows.representation: scaled``)."""
    if config.windows.representation == "scaled":
        return cal.scaler.transform(series.values[start:])
    return np.clip(_standardised(series, expectation or _expectation(series, cal, config), config, start), -50.0, 50.0)


def _standardised(
    series: CustomerSeries, expectation: Expectation, config: PipelineConfig, start: int = 0
) -> np.ndarray:
    """Each step's deviation from its expectation in spreads (from step ``start`` on); on
    sub-daily series, from a settled lasting shift's new level where that is nearer
    (``scoring.settled_shift``). Only the shift span before ``start`` is read: the daily run
    standardises its newest steps, not the whole history again."""
    hybrid = config.hybrid
    span = 0
    if series.frequency < pd.Timedelta(days=1) and pd.Timedelta(hybrid.shift_span) > pd.Timedelta(0):
        # A median and quartiles of fewer than a dozen steps say little about a new level.
        span = max(int(pd.Timedelta(hybrid.shift_span) / series.frequency), 12)
    first = max(0, start - span)
    values, expected, spread = series.values[first:], expectation.expected[first:], expectation.spread[first:]
    z = (values - expected) / spread
    if span:
        z = scoring.settled_shift(values, z, spread, span, hybrid.shift_z, hybrid.shift_share, hybrid.shift_noise)
    return z[start - first :]


def _warmup(cal: Calibration) -> int:
    """Steps before the expectation has two cycles of history; they are neither trained on nor
    flagged (identical placeholder windows would also break LOF's density estimate)."""
    return 2 * (cal.period or 0)


def _in_warmup(series: CustomerSeries, cal: Calibration) -> np.ndarray:
    """Steps neither flagged nor trained on: before two cycles of history, and the first window
    after them, whose windows still hold warm-up steps. Timestamps, not positions, so a tail of
    the series (daily scoring) agrees with the full one."""
    return np.asarray(series.timestamps < cal.warm_until + (cal.window - 1) * series.frequency)


def _seasonal(values: np.ndarray, cals: list[Calibration], config: PipelineConfig) -> scoring.SeasonalExpectation:
    """Seasonal (weekly or daily) expectation of a (customers, steps) block sharing one time grid
    and cycle."""
    cal = cals[0]
    return scoring.SeasonalExpectation(values, cal.period, config.hybrid.seasonal_cycles, fallback=max(cal.window, 3))


def _day_types(timestamps: pd.DatetimeIndex, cals: list[Calibration]) -> list[np.ndarray]:
    """Positions of the steps each expectation of a block is computed on alone: all of them, or,
    for series whose weekends are apart, the weekdays and the weekend days. Removing whole days
    keeps every step's phase in the daily cycle, so each part is a series with a daily cycle of
    its own: a Monday follows Friday, a Saturday follows last Sunday."""
    if not cals[0].weekends_apart:
        return [np.arange(len(timestamps))]
    weekend = np.asarray(timestamps.day_of_week >= 5)
    return [steps for steps in (np.flatnonzero(~weekend), np.flatnonzero(weekend)) if steps.size]


def _unlearned(series: CustomerSeries, cal: Calibration) -> np.ndarray:
    """Warm-up steps (``_in_warmup``) and, for series whose weekends are apart, weekend steps
    with less than two weekend days of history: the first weekend is expected from the last
    hour's median, which lags the daily wave by hours, so its windows look like a slow drop.
    None of them is learned from, by the window models or the thresholds."""
    return _in_warmup(series, cal) | _first_weekend(np.asarray(series.timestamps.as_unit("ns").asi8), [cal])[0]


def _day_type_warm_up(start: pd.Timestamp, frequency: pd.Timedelta, period: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First weekday and first weekend step with two days of their own kind before them, in a
    series starting at ``start`` (16 days hold at least four weekend days from any start)."""
    stamps = pd.date_range(start, periods=16 * period, freq=frequency)
    weekend = np.asarray(stamps.day_of_week >= 5)
    return stamps[~weekend][2 * period], stamps[weekend][2 * period]


def _warmed_up(timestamps: pd.DatetimeIndex, cals: list[Calibration]) -> np.ndarray:
    """(customers, steps): the step has two cycles of history before it. Compared in one time
    unit, since pandas 3 keeps microseconds from many readers."""
    ts = np.asarray(timestamps.as_unit("ns").asi8)
    warmed = ts[None, :] >= np.array([c.warm_until.as_unit("ns").value for c in cals])[:, None]
    return warmed & ~_first_weekend(ts, cals)


def _monthly(values: np.ndarray, seasonal: np.ndarray, timestamps: pd.DatetimeIndex, cals: list[Calibration]) -> np.ndarray:
    """Day-of-month effect per step (zero for series without a monthly calendar), measured on
    the raw values against their seasonal expectation: cleaned history would have lost the
    very month-start charges being learned."""
    # Only daily steps have a day-of-month effect (models logged before the None convention
    # carry {} on sub-daily series too).
    daily = len(timestamps) > 1 and timestamps[1] - timestamps[0] == pd.Timedelta(days=1)
    monthly = np.array([daily and c.day_of_month_offsets is not None for c in cals])
    if not monthly.any():
        return np.zeros_like(values)
    prior = np.zeros((len(cals), 32))
    for row, c in enumerate(cals):
        for day, offset in (c.day_of_month_offsets or {}).items():
            prior[row, day] = offset
    # Before two cycles of history the seasonal expectation is too rough to measure against.
    residuals = np.where(_warmed_up(timestamps, cals), values - seasonal, np.nan)
    sigma = np.array([c.residual_sigma for c in cals])[:, None]
    offsets = scoring.recent_day_of_month_offsets(residuals, np.asarray(timestamps.day), sigma, prior)
    return np.where(monthly[:, None], offsets, 0.0)


def _spread(expected: np.ndarray, cals: list[Calibration]) -> np.ndarray:
    """Residual spread per step. Cost noise is roughly proportional to cost, so when a series
    grows past its training level the spread grows with it (following the mean expectation of
    the last eight cycles: slow enough that an incident does not widen its own tolerance); it
    never shrinks below training's."""
    sigma = np.array([c.residual_sigma for c in cals])[:, None]
    typical = np.array([c.typical_level for c in cals])[:, None]
    span = 8 * (cals[0].period or cals[0].window)
    level = scoring.trailing_mean(np.abs(expected), span)
    with np.errstate(divide="ignore", invalid="ignore"):
        growth = np.where(typical > 1e-12, level / typical, 1.0)
    return sigma * np.maximum(1.0, growth)


def _expectations(
    series_list: list[CustomerSeries], cals: dict[str, Calibration], config: PipelineConfig
) -> dict[str, Expectation]:
    """Expected value and spread per step of each series, learned from cleaned history.

    Values far from their expectation (``clean_history_z`` spreads) are left out (NaN) and the
    expectation is computed again from what remains, ``clean_history_passes`` times, so an
    incident (a week-long runaway ramp, say) does not become the baseline that its own end is
    then compared with. Replacing them by their expectation instead would keep the incident in
    the history: that expectation had already drifted up with the ramp. A lasting change still
    becomes the new baseline: once an expectation has absorbed it (about half a cycle), its
    values are no longer surprising.

    Series on the same time grid with the same cycle are computed together as one 2-D block.
    """
    groups: dict[tuple[Any, ...], list[CustomerSeries]] = defaultdict(list)
    for series in series_list:
        cal = cals[series.customer_id]
        start = series.timestamps[0] if len(series) else None
        key = (len(series), start, series.frequency, cal.period, cal.window, cal.weekends_apart)
        groups[key].append(series)
    out: dict[str, Expectation] = {}
    for members in groups.values():
        block_cals = [cals[s.customer_id] for s in members]
        timestamps = members[0].timestamps
        values = np.vstack([s.values for s in members]) if members[0].values.size else np.zeros((len(members), 0))
        declared = np.vstack([_declared_normal(s) for s in members])
        expected, spread = np.empty_like(values), np.empty_like(values)
        for steps in _day_types(timestamps, block_cals):
            expected[:, steps], spread[:, steps] = _cleaned_expectation(
                values[:, steps], declared[:, steps], timestamps[steps], block_cals, config
            )
        usual = expected
        expected = _calendar_recurrence(values, expected, spread, timestamps, block_cals, config)
        for row, series in enumerate(members):
            out[series.customer_id] = Expectation(expected[row], spread[row], usual[row])
    return out


def _cleaned_expectation(
    values: np.ndarray,
    declared: np.ndarray,
    timestamps: pd.DatetimeIndex,
    cals: list[Calibration],
    config: PipelineConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """(expected, spread) of a (customers, steps) block from its cleaned history (see
    ``_expectations``)."""
    limit = config.hybrid.clean_history_z
    history = _seasonal(values, cals, config)
    seasonal = history.expected()
    monthly = _monthly(values, seasonal, timestamps, cals)
    expected = seasonal + monthly
    spread = _spread(expected, cals)
    if limit > 0:
        warmed_up = _warmed_up(timestamps, cals)
        first = expected
        for _ in range(config.hybrid.clean_history_passes):
            surprising = np.abs(values - expected) > limit * spread
            # Early expectations are too rough to replace data with; what a person
            # declared normal stays.
            surprising &= warmed_up & ~declared
            if not surprising.any():
                break
            # Recomputed only where this pass's cleaning differs from the last one's.
            history = history.update(np.where(surprising, np.nan, values))
            second = history.expected(fill=False) + monthly
            # Inside an incident longer than a cycle the cleaned history has nothing left:
            # keep expecting what was expected before it (the raw expectation would be the
            # incident itself, and the days after it would look like a collapse).
            expected = scoring.forward_fill(second)
            expected = np.where(np.isnan(expected), first, expected)
            spread = _spread(expected, cals)
    return expected, spread


def _declared_normal(series: CustomerSeries) -> np.ndarray:
    if series.declared_normal is None:
        return np.zeros(len(series), dtype=bool)
    return np.asarray(series.declared_normal, dtype=bool)


def _calendar_recurrence(
    values: np.ndarray,
    expected: np.ndarray,
    spread: np.ndarray,
    timestamps: pd.DatetimeIndex,
    cals: list[Calibration],
    config: PipelineConfig,
) -> np.ndarray:
    """Daily series: a deviation that repeats the same calendar date's deviation a year ago
    (public holidays, year-end freezes) or, in a month's last 5 days, the deviation as many days
    before the end of the month a quarter ago (quarter-end closes and batches) is expected.

    Neither the weekly cycle nor the day of the month knows these dates, and a year of history
    holds each one once: projecting last year's deviation onto every future occurrence would
    also project last year's incidents onto this year's ordinary days. So a date's deviation is
    only explained when it matches: back then that date was beyond three spreads, and today
    deviates the same way by between half and twice the same share of the expectation. A
    normal day after last year's incident is then still normal, and an incident on last year's
    holiday (the other way, or far larger) still stands out.
    """
    daily = len(timestamps) > 1 and timestamps[1] - timestamps[0] == pd.Timedelta(days=1)
    if not daily:
        return expected
    if config.hybrid.annual_recurrence:
        year_ago = timestamps.get_indexer(timestamps - pd.DateOffset(years=1))
        expected = _recurrence(values, expected, spread, timestamps, cals, year_ago)
    if config.hybrid.quarterly_recurrence:
        expected = _recurrence(values, expected, spread, timestamps, cals, _quarter_end_ago(timestamps))
    return expected


def _quarter_end_ago(timestamps: pd.DatetimeIndex) -> np.ndarray:
    """Position of the day as many days before its month's end three months earlier, for the
    last 5 days of a month (-1 elsewhere or before the series): the 30th of June answers to the
    31st of March, the 30th of September to the 30th of June."""
    days = timestamps.normalize()
    to_end = (days + pd.offsets.MonthEnd(0)) - days
    earlier = (days - pd.DateOffset(months=3)) + pd.offsets.MonthEnd(0) - to_end
    return np.where(to_end < pd.Timedelta(days=5), days.get_indexer(earlier), -1)


def _recurrence(
    values: np.ndarray,
    expected: np.ndarray,
    spread: np.ndarray,
    timestamps: pd.DatetimeIndex,
    cals: list[Calibration],
    earlier: np.ndarray,
) -> np.ndarray:
    """``expected`` plus the deviation at position ``earlier`` of each step where today's
    deviation matches it (see ``_calendar_recurrence``)."""
    if (earlier < 0).all():
        return expected
    deviation = np.where(_warmed_up(timestamps, cals), values - expected, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(np.abs(expected) > 1e-12, deviation / np.abs(expected), np.nan)
        beyond = np.abs(deviation) > 3 * spread
    pad = np.full((len(cals), 1), np.nan)
    last_share = np.concatenate([share, pad], axis=1)[:, earlier]
    last_beyond = np.concatenate([beyond, pad.astype(bool)], axis=1)[:, earlier]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = share / last_share
    matched = last_beyond & (ratio >= 0.5) & (ratio <= 2.0)
    return np.where(matched, expected + np.abs(expected) * np.nan_to_num(last_share, nan=0.0), expected)


def _expectation(
    series: CustomerSeries, cal: Calibration, config: PipelineConfig
) -> Expectation:
    return _expectations([series], {series.customer_id: cal}, config)[series.customer_id]


def _decrease_applies(frequency: pd.Timedelta, config: PipelineConfig) -> bool:
    """The decrease rule is a daily-cost rule: a 5-minute CPU or request series drops 30% from
    one step to the next all the time, a day's spend does not."""
    return config.decrease_rule.enabled and frequency >= pd.Timedelta(days=1)


def _decrease_signal(rate: np.ndarray, config: PipelineConfig) -> np.ndarray:
    return np.clip(np.nan_to_num(rate / config.decrease_rule.threshold, nan=0.0), 0.0, 1e3)


def _window_signal(values: np.ndarray, n: int, window: int, online: bool = True) -> np.ndarray:
    """Per-step score from per-window scores. ``values[i]`` is the window starting at step ``i``.

    Online (what the daily run can know): a step gets the score of the window ending on it.
    Retrospective: the minimum over all windows covering the step. Attributing a window's score
    to its last step makes every anomaly echo for a window length afterwards (each later window
    still contains it); the least anomalous covering window localises it, but needs windows that
    reach into the step's future. The newest steps are covered by fewer windows, the newest by
    one.
    """
    out = np.full(n, np.nan)
    if len(values) == 0:
        return out
    if online:
        out[window - 1 : window - 1 + len(values)] = values[: max(n - window + 1, 0)]
        return out
    padded = np.r_[values, np.full(window - 1, np.inf)]
    covered = pd.Series(padded).rolling(window, min_periods=1).min().to_numpy()
    out[: len(covered)] = covered[:n]
    return out


def _calibrate_expectation(series: CustomerSeries, cal: Calibration, config: PipelineConfig) -> None:
    """Learn the residual spread and recurring day-of-month effects from the training part.

    The spread is estimated twice: first against the raw expectation (to know what counts as
    surprising when cleaning history), then against the final, cleaned expectation.
    """
    n = cal.train_size
    floor = max(cal.typical_level * 1e-3, 1e-9)
    if cal.period and cal.period * series.frequency == pd.Timedelta(days=1):
        cal.weekends_apart = scoring.weekends_apart(
            series.values[:n], series.timestamps[:n], cal.period, config.hybrid.weekend_level_change
        )
        if cal.weekends_apart:
            weekday, cal.weekend_warm_until = _day_type_warm_up(series.timestamps[0], series.frequency, cal.period)
            cal.warm_until = max(cal.warm_until, weekday)
    raw = np.empty(len(series))
    for steps in _day_types(series.timestamps, [cal]):
        raw[steps] = _seasonal(series.values[None, steps], [cal], config).expected()[0]
    train_res = (series.values - raw)[:n]
    cal.residual_sigma = scoring.robust_sigma(train_res, floor=floor)
    if series.frequency == pd.Timedelta(days=1) and n >= 90:
        cal.day_of_month_offsets = scoring.day_of_month_offsets(
            series.timestamps[:n], train_res, cal.residual_sigma
        )
    expected, spread, _ = _expectation(series, cal, config)
    scaled = ((series.values - expected) / spread * cal.residual_sigma)[:n]
    cal.residual_sigma = scoring.robust_sigma(scaled, floor=floor)


def _learn_thresholds(
    cal: Calibration,
    sig: dict[str, np.ndarray],
    series: CustomerSeries,
    config: PipelineConfig,
    names: tuple[str, ...],
) -> dict[str, tuple[float, float]]:
    """(center, threshold) of each of ``names`` from its scores on the training part.

    Training history holds the incidents nobody labelled. One-step outliers barely move the
    robust rule (``scoring.learn_threshold``), but a fortnight-long incident is a tenth of a
    year's steps and lifts every upper quantile to its own size, after which nothing smaller is
    ever flagged. So runs of at least ``threshold_exclude_run`` steps beyond ``clean_history_z``
    spreads (and the windows touching them) are left out first. The threshold is then raised,
    never lowered, to the tail quantile that keeps the signal's own exceedances within
    ``alarm_budget_per_month`` (``scoring.tail_quantile``, peaks over threshold): a heavy-tailed
    5-minute series crosses a fixed number of spreads thousands of times more often per month
    than a daily one does, and the budget is what follows the frequency.
    """
    point, window = _threshold_masks(series, cal, sig["z"], config)
    out = {}
    for name in names:
        minimum = config.hybrid.residual_min_z if name == "residual" else 0.0
        scores = sig[name][: cal.train_size][point if name == "residual" else window]
        center, threshold = _threshold(scores, series.frequency, config, minimum)
        out[name] = (0.0 if name == "residual" else center, threshold)
    return out


def _threshold_masks(
    series: CustomerSeries, cal: Calibration, z: np.ndarray, config: PipelineConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Training steps a point signal (and a window signal) learns its threshold from: past the
    warm-up (``_unlearned``), outside long runs of surprising steps (and windows touching them)."""
    n = cal.train_size
    usable = ~_unlearned(series, cal)[:n] & (np.arange(n) >= cal.window - 1)
    excluded = np.zeros(n, dtype=bool)
    if config.hybrid.threshold_exclude_run > 0 and config.hybrid.clean_history_z > 0:
        surprising = np.abs(np.nan_to_num(z[:n], nan=0.0)) > config.hybrid.clean_history_z
        surprising &= ~_declared_normal(series)[:n]
        excluded = scoring.long_runs(surprising, config.hybrid.threshold_exclude_run)
    return usable & ~excluded, usable & ~scoring.trailing_any(excluded, cal.window)


def _threshold(
    scores: np.ndarray, frequency: pd.Timedelta, config: PipelineConfig, minimum: float
) -> tuple[float, float]:
    hybrid = config.hybrid
    center, threshold = scoring.learn_threshold(scores, hybrid.component_quantile, hybrid.threshold_reach, minimum)
    if hybrid.alarm_budget_per_month > 0:
        p = hybrid.alarm_budget_per_month / (pd.Timedelta(days=30.44) / frequency)
        threshold = max(threshold, scoring.tail_quantile(scores, p, hybrid.tail_quantile))
        threshold = scoring.above_ties(scores, threshold, p)
    return center, threshold


def window_detector_scores(
    series_list: list[CustomerSeries], fitted: FittedDetectors, config: PipelineConfig, names: Iterable[str]
) -> dict[str, dict[str, np.ndarray]]:
    """Online score of each named PyOD window detector (``outlier.WINDOW_DETECTORS``), fitted
    and thresholded exactly as the hybrid's own window models are (pooled training windows of
    each cohort; thresholds from each series' clean training scores), normalised so 1.0 is its
    threshold and zero in the warm-up: what the evaluation compares window detectors with.
    The expectations, windows and threshold masks are the same for every detector, so they
    are computed once (on Cloud Monitoring the expectations alone took 12 s per detector)."""
    names = list(names)
    known = [s for s in series_list if s.customer_id in fitted.calibrations]
    expectations = _expectations(known, fitted.calibrations, config)
    cohorts: dict[int, list[CustomerSeries]] = defaultdict(list)
    for series in known:
        cohorts[fitted.calibrations[series.customer_id].window].append(series)
    seed = config.training.seed
    out: dict[str, dict[str, np.ndarray]] = {name: {} for name in names}
    for window, members in cohorts.items():
        cals = {s.customer_id: fitted.calibrations[s.customer_id] for s in members}
        inputs = {s.customer_id: _model_input(s, cals[s.customer_id], config, expectations[s.customer_id]) for s in members}
        train = window_features(
            pooled(
                [sliding_windows(inputs[s.customer_id][_warmup(cals[s.customer_id]) : cals[s.customer_id].train_size], window) for s in members],
                config.isolation_forest.max_training_windows,
                seed,
            )
        )
        scored = {s.customer_id: sliding_windows(inputs[s.customer_id], window) for s in members}
        usable = {}
        for series in members:
            expected, spread, _ = expectations[series.customer_id]
            usable[series.customer_id] = _threshold_masks(series, cals[series.customer_id], (series.values - expected) / spread, config)[1]
        for name in names:
            model = window_detector(name, seed).fit(train)
            for series in members:
                cid, cal = series.customer_id, cals[series.customer_id]
                score = _window_signal(anomaly_score(model, scored[cid]), len(series), window)
                center, threshold = _threshold(score[: cal.train_size][usable[cid]], series.frequency, config, 0.0)
                out[name][cid] = np.where(_unlearned(series, cal), 0.0, scoring.normalise(score, center, threshold))
    return out


def training_layout(series: CustomerSeries, config: PipelineConfig) -> tuple[int, int]:
    """(training steps, window size) of a series: the first ``train_fraction`` of its history
    (at least 2 steps, at most all of them) and the configured window, never more than a
    quarter of the training steps so a short series still yields several windows."""
    n_train = min(len(series), max(int(len(series) * config.training.train_fraction), 2))
    window = min(window_size(series.frequency, config.windows), max(n_train // 4, 2))
    return n_train, window


def _cycle(series: CustomerSeries, n_train: int, window: int, config: PipelineConfig) -> int | None:
    """Steps per seasonal cycle: ``season_period``, or for a sub-daily series a week where that
    explains its training part clearly better (``hybrid.weekly_cycle_gain``)."""
    period = season_period(series.frequency)
    gain = config.hybrid.weekly_cycle_gain
    if not period or series.frequency >= pd.Timedelta(days=1) or gain <= 0 or n_train < 4 * 7 * period:
        return period
    week = 7 * period
    values = series.values[None, :n_train]
    spread = []
    for cycle in (period, week):
        expected = scoring.SeasonalExpectation(values, cycle, config.hybrid.seasonal_cycles, max(window, 3)).expected()
        spread.append(float(np.nanmedian(np.abs(values - expected)[0, 2 * week :])))
    return week if spread[1] < gain * spread[0] else period


def fit_detectors(
    series_list: list[CustomerSeries],
    config: PipelineConfig,
    progress: Callable[[str], None] | None = None,
) -> FittedDetectors:
    """Train all three models per customer and learn every threshold from the training part.

    ``progress`` receives a line per LSTM epoch (customers done of total, epoch, losses, time
    left), so a training of thousands of customers shows it is alive in a run log.
    """
    fitted = FittedDetectors(settings=ModelSettings.of(config))
    calibrated: dict[str, tuple[CustomerSeries, Calibration]] = {}
    for series in series_list:
        if len(series) < config.preprocess.min_history:
            fitted.skipped[series.customer_id] = (
                f"insufficient history: {len(series)} steps, need {config.preprocess.min_history}"
            )
            continue
        n_train, window = training_layout(series, config)
        period = _cycle(series, n_train, window, config)
        # A cycle is only used when training still has enough windows after the warm-up.
        if period and n_train - 2 * period < 4 * window:
            period = None
        cal = Calibration(
            customer_id=series.customer_id,
            window=window,
            period=period,
            scaler=Scaler.fit(series.values[:n_train], config.windows.scaler),
            train_size=n_train,
            warm_until=series.timestamps[2 * (period or 0)],
            train_end=series.timestamps[n_train - 1],
            residual_sigma=1.0,
            typical_level=float(np.median(np.abs(series.values[:n_train]))),
            day_of_month_offsets=None,
            thresholds={},
            lstm_notebook_threshold=np.inf,
        )
        _calibrate_expectation(series, cal, config)
        calibrated[series.customer_id] = (series, cal)
    expectations = _expectations([s for s, _ in calibrated.values()], {cid: cal for cid, (_, cal) in calibrated.items()}, config)
    # Per window length: each customer, its calibration, training windows and whole model input.
    prepared: dict[int, list[tuple[CustomerSeries, Calibration, np.ndarray, np.ndarray]]] = defaultdict(list)
    for cid, (series, cal) in calibrated.items():
        model_input = _model_input(series, cal, config, expectations[cid])
        windows = sliding_windows(model_input[_warmup(cal) : cal.train_size], cal.window)
        # With weekends apart, the warm-up does not end with the first two days: windows
        # touching the first weekend (or weekdays before two weekdays) are left out too.
        stamps = np.asarray(series.timestamps.as_unit("ns").asi8)
        rough = _first_weekend(stamps, [cal])[0] | (stamps < cal.warm_until.as_unit("ns").value)
        rough = rough[_warmup(cal) : cal.train_size]
        if rough.any():
            windows = windows[~scoring.trailing_any(rough, cal.window)[cal.window - 1 :]]
        prepared[cal.window].append((series, cal, windows, model_input))

    seed = config.training.seed
    # The stacked LSTM trains in smaller groups than the cohort the window models pool: the
    # weights and Adam state of a few dozen customers stay in the CPU's cache. Training also
    # scores every window of each customer, which the thresholds below need.
    step = config.lstm.customers_per_step
    chunk = config.lstm.customers_per_model
    groups: list[lstm_workers.Group] = []
    for window_group in prepared.values():
        for start in range(0, len(window_group), chunk):
            part = window_group[start : start + chunk]
            for first in range(0, len(part), step):
                members = part[first : first + step]
                groups.append(
                    ([s.customer_id for s, *_ in members], [w for _, _, w, _ in members], [x for *_, x in members])
                )
    report = _TrainingProgress(sum(len(group) for group in prepared.values()), progress)
    fitted.autoencoders.extend(lstm_workers.train_groups(groups, config.lstm, seed, report))
    for window_group in prepared.values():
        for start in range(0, len(window_group), chunk):
            part = window_group[start : start + chunk]
            windows = [w for _, _, w, _ in part]
            train = pooled(windows, config.isolation_forest.max_training_windows, seed)
            forest = fit_isolation_forest(train, config.isolation_forest, seed)
            train = pooled(windows, config.local_outlier_factor.max_training_windows, seed)
            lof = fit_local_outlier_factor(train, config.local_outlier_factor)
            for _, cal, _, _ in part:
                fitted.isolation_forest.models[cal.customer_id] = forest
                fitted.local_outlier_factor.models[cal.customer_id] = lof
                fitted.calibrations[cal.customer_id] = cal

    # Thresholds come from the training part's own scores, series by series: online ones, and
    # for hindsight scoring the window models' own (the models score the windows once).
    lstm_errors: dict[str, np.ndarray] = {}
    for fit in fitted.autoencoders:
        if fit.scored is not None:
            lstm_errors.update(zip(fit.customer_ids, fit.scored, strict=True))
            fit.scored = None  # kept in fit_scores below; the model would carry it into every pickle
    scored = _window_scored([s for s, _ in calibrated.values()], fitted, config, expectations, lstm_errors)
    settings = _settings_digest(config)
    fitted.fit_scores = {cid: (_scoring_key(calibrated[cid][0], settings), raw) for cid, raw in scored.items()}
    for cid, raw in scored.items():
        series, cal = calibrated[cid]
        cal.retrospective_thresholds = _learn_thresholds(cal, _per_step(raw, False), series, config, scoring.MODEL_SIGNALS)
        sig = _per_step(raw, True)
        cal.thresholds = _learn_thresholds(cal, sig, series, config, ("residual", *scoring.MODEL_SIGNALS))
        n = cal.train_size
        train_err = sig["lstm"][:n]
        train_err = train_err[np.isfinite(train_err)]
        cal.lstm_notebook_threshold = (
            float(train_err.mean() + config.lstm.threshold_sigma * train_err.std())
            if train_err.size
            else np.inf
        )
    return fitted


class _TrainingProgress:
    """Progress lines for ``fit_detectors``: customers done of total, the current cohort's epoch
    and losses, and the time left, extrapolated from the customers trained so far (the first
    cohort, from its epochs so far)."""

    # At most a line this often (seconds), so thousands of customers do not flood the log.
    INTERVAL = 10.0

    def __init__(self, total: int, say: Callable[[str], None] | None) -> None:
        self.total, self.say, self.done, self.cohort = total, say, 0, 0
        self.started = time.perf_counter()
        self.last = -np.inf

    def start_cohort(self, size: int) -> None:
        self.cohort = size

    def end_cohort(self, size: int) -> None:
        self.done += size

    def epoch(self, epoch: int, epochs: int, train_loss: float, val_loss: float) -> None:
        now = time.perf_counter()
        if self.say is None or (epoch > 1 and now - self.last < self.INTERVAL):
            return
        self.last = now
        elapsed = now - self.started
        share = (self.done + self.cohort * epoch / epochs) / max(self.total, 1)
        left = elapsed * (1 - share) / share if share > 0 else float("nan")
        self.say(
            f"LSTM training: {self.done} of {self.total} customers done; cohort of {self.cohort}, "
            f"epoch {epoch}/{epochs} (at most), loss {train_loss:.4g}, validation {val_loss:.4g}; "
            f"about {left:.0f} s left"
        )


def _window_scored(
    series_list: list[CustomerSeries],
    fitted: FittedDetectors,
    config: PipelineConfig,
    expectations: dict[str, Expectation] | None = None,
    lstm_errors: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """Point signals per step and each window model's score per window: the expensive part,
    done once whichever way (online or in hindsight) windows are then attributed to steps.
    ``expectations`` and ``lstm_errors`` are what the caller has already computed."""
    expectations = expectations or _expectations(series_list, fitted.calibrations, config)
    windows_of = {
        s.customer_id: sliding_windows(
            _model_input(s, fitted.calibrations[s.customer_id], config, expectations[s.customer_id]),
            fitted.calibrations[s.customer_id].window,
        )
        for s in series_list
    }
    window_scores = _score_windows(fitted, windows_of, lstm_errors or {})
    out: dict[str, dict[str, Any]] = {}
    for series in series_list:
        cid = series.customer_id
        out[cid] = {
            **_point_signals(series, expectations[cid], config),
            "windows": window_scores[cid],
            "layout": (len(series), fitted.calibrations[cid].window),
        }
    return out


def _point_signals(
    series: CustomerSeries, expectation: Expectation, config: PipelineConfig, start: int = 0
) -> dict[str, np.ndarray]:
    """The signals of single steps (from step ``start`` on): expected value, standardised
    residual and the step-over-step change; for daily series also ``usual_z``, the deviation
    from what the step usually is, which portfolio moves are counted on."""
    expected, z = expectation.expected[start:], _standardised(series, expectation, config, start)
    rate = scoring.decrease_rate(series.values[max(start - 1, 0) :])[1 if start else 0 :]
    signals = {"expected": expected, "z": z, "residual": np.abs(z), "decrease_rate": rate}
    if series.frequency >= pd.Timedelta(days=1):
        signals["usual_z"] = _usual_z(series, expectation, start)
    return signals


def _usual_z(series: CustomerSeries, expectation: Expectation, start: int = 0) -> np.ndarray:
    """Deviation in spreads from what each step usually is (``Expectation.usual``)."""
    return (series.values[start:] - expectation.usual[start:]) / expectation.spread[start:]


def _score_windows(
    fitted: FittedDetectors, windows_of: dict[str, np.ndarray], lstm_errors: dict[str, np.ndarray]
) -> dict[str, dict[str, np.ndarray]]:
    """Each window model's score of each customer's windows; one call per shared model. An
    autoencoder is only used (and so built) for customers ``lstm_errors`` does not cover."""
    by_model: dict[int, list[str]] = defaultdict(list)
    models: dict[int, Any] = {}
    missing = [cid for cid in windows_of if cid not in lstm_errors]
    model_of = fitted.autoencoders_by_customer() if missing else {}
    for cid in missing:
        model = model_of[cid]
        models[id(model)] = model
        by_model[id(model)].append(cid)
    lstm_errors = dict(lstm_errors)
    for model_id, members in by_model.items():
        errors = lstm.reconstruction_errors(models[model_id], members, [windows_of[cid] for cid in members])
        lstm_errors.update(zip(members, errors, strict=True))
    forest_scores = fitted.isolation_forest.score_many(windows_of)
    lof_scores = fitted.local_outlier_factor.score_many(windows_of)
    return {
        cid: {"lstm": lstm_errors[cid], "isolation_forest": forest_scores[cid], "local_outlier_factor": lof_scores[cid]}
        for cid in windows_of
    }


def _settings_digest(config: PipelineConfig) -> Any:
    """The settings' part of ``_scoring_key``, hashed once per call rather than per series."""
    return hashlib.blake2b(config.model_dump_json().encode(), digest_size=16)


def _scoring_key(series: CustomerSeries, settings: Any) -> bytes:
    """What ``_window_scored`` depends on besides the model: the series and the settings
    (``_settings_digest``)."""
    digest = settings.copy()
    for part in (series.timestamps.asi8, series.values, series.filled, series.declared_normal):
        if part is not None:
            digest.update(np.ascontiguousarray(part).tobytes())
    return digest.digest()


def _per_step(raw: dict[str, Any], online: bool) -> dict[str, np.ndarray]:
    """``_window_scored``'s output with each window model's scores attributed to steps."""
    n, window = raw["layout"]
    out = {k: v for k, v in raw.items() if k not in ("windows", "layout")}
    for name, scores in raw["windows"].items():
        out[name] = _window_signal(scores, n, window, online)
    return out


def score_series(
    series_list: list[CustomerSeries],
    fitted: FittedDetectors,
    config: PipelineConfig,
    online: bool = True,
) -> pd.DataFrame:
    """Score every step of every series; customers without a model come back unscored with
    the reason (``score_latest`` scores only the newest steps, the daily run).

    ``online`` (the default, and what the pipeline's assets report): every step is scored from
    data up to and including it only, exactly what a daily run on that step would have reported.
    Otherwise (retrospective, ``detect()``'s default) a window model's score at a step may use
    windows reaching into its future (see ``_window_signal``).

    ``config`` must hold the settings ``fitted`` was trained under, but for the decision-time
    ones (``FittedDetectors.check_settings``).
    """
    fitted.check_settings(config)
    known = [s for s in series_list if s.customer_id in fitted.calibrations]
    raw: dict[str, dict[str, Any]] = {}
    settings = _settings_digest(config) if fitted.fit_scores else None
    for series in known:
        key, scores = fitted.fit_scores.get(series.customer_id, (b"", None))
        if scores is not None and settings is not None and key == _scoring_key(series, settings):
            raw[series.customer_id] = scores
    raw.update(_window_scored([s for s in known if s.customer_id not in raw], fitted, config))
    items = [(s, 0, _per_step(raw[s.customer_id], online)) for s in known]
    moves = PortfolioMoves.count([(s, 0, sig["usual_z"]) for s, _, sig in items if "usual_z" in sig], fitted, config)
    scored = _score_columns(items, fitted, config, online, moves)
    return _frame([scored.get(s.customer_id) or _unscored(s, fitted) for s in series_list])


def score_latest(
    series_list: list[CustomerSeries], fitted: FittedDetectors, config: PipelineConfig, steps: int = 1
) -> pd.DataFrame:
    """Score only the newest ``steps`` of each series (the daily run): exactly the last rows of
    ``score_series(..., online=True)``, at a fraction of the cost.

    The expectation needs the whole history (cleaned of incidents pass by pass, and compared with
    the same date a year ago), but after its first pass only the few steps cleaning changes are
    computed again. Whether a newest step's flag repeats an earlier one depends on the flags of
    the quiet period before its run of flags began, so those steps are scored too (the whole
    series where a run reaches further back). The window models, the costly part of the rest,
    score the newest steps and only those earlier steps whose flag they can decide: most steps
    are too close to their expectation to be flagged whatever the window models say.
    """
    fitted.check_settings(config)
    known = [s for s in series_list if s.customer_id in fitted.calibrations]
    expectations = _expectations(known, fitted.calibrations, config)
    quiet = {s.customer_id: quiet_steps(s.frequency, fitted.calibrations[s.customer_id].window, config) for s in known}
    starts = {s.customer_id: max(0, len(s) - steps - quiet[s.customer_id]) for s in known}
    # Only daily series are counted in portfolio moves: the others' deviations are not needed.
    daily = [s for s in known if s.frequency >= pd.Timedelta(days=1)]
    moves = PortfolioMoves.count([(s, 0, _usual_z(s, expectations[s.customer_id])) for s in daily], fitted, config)
    scored = _latest_columns(known, fitted, config, expectations, starts, steps, moves)
    longer = [
        s for s in known
        if not _repeats_settled(scored[s.customer_id], steps, quiet[s.customer_id], starts[s.customer_id])
    ]
    scored.update(_latest_columns(longer, fitted, config, expectations, dict.fromkeys(starts, 0), steps, moves))
    parts = []
    for series in series_list:
        part = scored.get(series.customer_id) or _unscored(series, fitted)
        parts.append({k: v[-steps:] if isinstance(v, np.ndarray) else v for k, v in part.items()})
    return _frame(parts)


def _latest_columns(
    series_list: list[CustomerSeries],
    fitted: FittedDetectors,
    config: PipelineConfig,
    expectations: dict[str, Expectation],
    starts: dict[str, int],
    steps: int,
    moves: PortfolioMoves | None,
) -> dict[str, dict[str, Any]]:
    """Online score columns of each series from its step in ``starts`` on, the window models
    run only where they matter: on the newest ``steps``, and where the flag of a step differs
    with the window models' votes at nothing and at their most (the hybrid score only grows
    with each vote)."""
    points = [(s, starts[s.customer_id], _point_signals(s, expectations[s.customer_id], config, starts[s.customer_id])) for s in series_list]

    def flagged(vote: float) -> dict[str, np.ndarray]:
        votes = [(s, start, {**sig, **dict.fromkeys(scoring.MODEL_SIGNALS, np.full(len(s) - start, vote))}) for s, start, sig in points]
        return {cid: cols["is_anomaly"] | cols["is_repeat"] for cid, cols in _score_columns(votes, fitted, config, True, moves).items()}

    low, high = flagged(np.nan), flagged(np.inf)
    windows_of, ends = {}, {}
    for series, start, _ in points:
        cid, cal = series.customer_id, fitted.calibrations[series.customer_id]
        undecided = high[cid] != low[cid]
        undecided[-steps:] = True
        # steps whose window ends inside the series (earlier ones have no window signal)
        ends[cid] = start + np.flatnonzero(undecided)
        ends[cid] = ends[cid][ends[cid] >= cal.window - 1]
        first = max(0, start - cal.window + 1)
        x = _model_input(series, cal, config, expectations[cid], first)
        windows_of[cid] = sliding_windows(x, cal.window)[ends[cid] - cal.window + 1 - first]
    window_scores = _score_windows(fitted, windows_of, {})
    for series, start, sig in points:
        cid = series.customer_id
        for name, scores in window_scores[cid].items():
            sig[name] = np.full(len(series) - start, np.nan)
            sig[name][ends[cid] - start] = scores
    return _score_columns(points, fitted, config, True, moves)


def _repeats_settled(columns: dict[str, Any], steps: int, quiet: int, start: int) -> bool:
    """Whether the repeat flags of the newest ``steps`` in ``columns`` (scored from step
    ``start`` on) are those of the whole series: the earliest flagged one's run of flags began
    at least ``quiet`` steps after ``start``, so the flags that decide are all known."""
    if start == 0 or quiet <= 0:
        return True
    flagged = columns["is_anomaly"] | columns["is_repeat"]
    recent = np.flatnonzero(flagged[-steps:])
    if not recent.size:
        return True
    calm = np.flatnonzero(~flagged[: len(flagged) - steps + recent[0]])
    return bool(calm.size) and calm[-1] + 1 >= quiet


def _unscored(series: CustomerSeries, fitted: FittedDetectors) -> dict[str, Any]:
    return _unscored_columns(series, fitted.skipped.get(series.customer_id, "no trained model for this customer"))


def _score_columns(
    items: list[tuple[CustomerSeries, int, dict[str, np.ndarray]]],
    fitted: FittedDetectors,
    config: PipelineConfig,
    online: bool,
    moves: PortfolioMoves | None,
) -> dict[str, dict[str, Any]]:
    """Every score column of each ``(series, start, signals)`` (its steps from ``start`` on,
    ``signals`` per step), by customer. Series with as many steps, frequency and window are
    scored together as one (series, steps) block: per-series arrays of a few steps each would
    cost more in calls than in arithmetic. ``moves``: those of every series scored together,
    over their whole history (``PortfolioMoves.count``)."""
    blocks: dict[tuple[Any, ...], list[tuple[CustomerSeries, int, dict[str, np.ndarray]]]] = defaultdict(list)
    for item in items:
        series, start, _ = item
        blocks[(len(series) - start, series.frequency, fitted.calibrations[series.customer_id].window)].append(item)
    out: dict[str, dict[str, Any]] = {}
    for block in blocks.values():
        out.update(_score_block(block, fitted, config, online, moves))
    return out


def _score_block(
    items: list[tuple[CustomerSeries, int, dict[str, np.ndarray]]],
    fitted: FittedDetectors,
    config: PipelineConfig,
    online: bool,
    moves: PortfolioMoves | None,
) -> dict[str, dict[str, Any]]:
    """``_score_columns`` of series with as many steps, one frequency and one window."""
    hybrid = config.hybrid
    frequency = items[0][0].frequency
    cals = [fitted.calibrations[series.customer_id] for series, _, _ in items]
    sig = {name: np.vstack([signals[name] for _, _, signals in items]) for name in items[0][2]}
    # Timestamps, not positions, so the newest steps alone (daily scoring) match the full series.
    # Sliced as arrays: slicing 10,000 DatetimeIndexes cost the daily run a second.
    stamps = np.vstack([series.timestamps.as_unit("ns").asi8[start:] for series, start, _ in items])
    warm = _warm_up(stamps, np.array([start for _, start, _ in items]), cals, frequency)
    moved = np.zeros(stamps.shape, dtype=bool) if moves is None else moves.explains(stamps, sig["z"], ~warm, config)
    normalised = {}
    for name in ("residual", *scoring.MODEL_SIGNALS):
        center, threshold = np.array([_thresholds(cal, online)[name] for cal in cals]).T[:, :, None]
        normalised[name] = scoring.normalise(sig[name], center, threshold)
    # A portfolio-wide move explains the step's deviation: without a residual vote, the window
    # models' votes are capped to nothing online and the decrease is not confirmed.
    normalised["residual"] = np.where(moved, 0.0, normalised["residual"])
    alone = {"residual": hybrid.residual_alone, "lstm": hybrid.lstm_alone}
    uncapped = dict(normalised)
    if online and hybrid.window_gate > 0:
        # A window ending on a step is judged on its whole shape, so an incident echoes through
        # the windows after it: online, a window model's vote at a step is capped by how far the
        # step itself deviates (the full cap from ``window_gate`` times the residual's threshold).
        share = np.minimum(1.0, normalised["residual"] / hybrid.window_gate)
        for name in scoring.MODEL_SIGNALS:
            normalised[name] = np.minimum(normalised[name], hybrid.signal_cap * share)
    # A drop only counts when the value is also well below what this weekday usually is
    # (``decrease_rule.confirm_z``).
    applies = _decrease_applies(frequency, config)
    confirmed = (sig["z"] < -config.decrease_rule.confirm_z) & applies & ~moved
    normalised["decrease"] = np.where(confirmed, _decrease_signal(sig["decrease_rate"], config), 0.0)
    score = scoring.hybrid(normalised, {"decrease": 1.0, **hybrid.weights}, hybrid.signal_cap)
    if config.decrease_rule.alone_residual > 0:
        # A confirmed drop well on its way to the residual's threshold is news by itself.
        dropped = (normalised["decrease"] >= 1.0) & (normalised["residual"] >= config.decrease_rule.alone_residual)
        score = np.where(dropped, np.maximum(score, hybrid.decision_threshold), score)
    quiet = quiet_steps(frequency, cals[0].window, config)
    past_peak = np.zeros(score.shape, dtype=bool)
    # Where the LSTM's lone vote reaches the decision, the LSTM is a reason even though the
    # window gate caps its share of the mean.
    lstm_decides = np.zeros(score.shape, dtype=bool)
    if frequency < pd.Timedelta(days=1):
        # Sub-daily: thresholds are extreme tail quantiles fitted on thousands of training steps,
        # trustworthy alone far enough out; a daily one (a month's budget is 3% of the days)
        # still needs a second detector to agree.
        votes = {
            name: np.nan_to_num(uncapped[name], nan=0.0) * hybrid.decision_threshold / multiple
            for name, multiple in alone.items()
            if multiple > 0
        }
        if "residual" in votes:
            votes["residual"] = _supported(votes["residual"], uncapped, sig, config)
        if "lstm" in votes:
            lstm_decides = votes["lstm"] >= hybrid.decision_threshold
        if "residual" in votes and hybrid.peak_ratio > 0:
            past_peak = _past_peak(sig["residual"], score, votes, frequency, quiet, config)
        for vote in votes.values():
            score = np.maximum(score, vote)
    elif frequency >= WEEK and hybrid.coarse_residual_alone > 0:
        vote = np.nan_to_num(uncapped["residual"], nan=0.0) * hybrid.decision_threshold / hybrid.coarse_residual_alone
        score = np.maximum(score, vote)
    stuck = _stuck(items, cals, config)
    score = np.where(stuck, np.maximum(score, hybrid.decision_threshold), score)
    decrease_flag = (np.nan_to_num(sig["decrease_rate"], nan=0.0) < config.decrease_rule.threshold) & applies
    train_end = np.array([c.train_end.as_unit("ns").value for c in cals])
    flagged = (score >= hybrid.decision_threshold) & ~warm & ~moved
    # A filled gap has no value to be anomalous: it is a guess between two observations. It is
    # never flagged itself, but neither starts nor breaks a run: it carries the flag of the
    # observation before it, so an incident with a missing day in it stays one incident.
    filled = np.vstack([series.filled[start:] for series, start, _ in items])
    flagged = scoring.carry_over(flagged, filled)
    repeat = scoring.repeats(flagged, quiet) | (flagged & past_peak)
    if hybrid.escalation > 0:
        repeat &= ~_escalated(flagged, sig["residual"], quiet, hybrid.escalation)
    flagged &= ~filled
    repeat &= ~filled
    lstm_threshold = np.array([c.lstm_notebook_threshold for c in cals])
    columns = {
        "expected_cost": sig["expected"],
        "hybrid_score": score,
        "is_anomaly": flagged & ~repeat,
        "is_repeat": repeat,
        "residual_score": sig["residual"],
        "lstm_error": sig["lstm"],
        "lstm_flag": np.nan_to_num(sig["lstm"], nan=0.0) > lstm_threshold[:, None],
        "isolation_forest_score": sig["isolation_forest"],
        "local_outlier_factor_score": sig["local_outlier_factor"],
        "decrease_rate": sig["decrease_rate"],
        "decrease_flag": decrease_flag,
        "reasons": scoring.reasons(
            {k: v for k, v in normalised.items() if k != "decrease"}, {"decrease": decrease_flag, "portfolio_move": moved, "lstm": lstm_decides, "stuck": stuck}
        ),
        "split": np.where(stamps <= train_end[:, None], "train", "test"),
        "status": np.where(warm, "warmup", "scored"),
    }
    out = {}
    for row, (series, start, _) in enumerate(items):
        out[series.customer_id] = {
            "customer_id": series.customer_id,
            "timestamp": _utc_values(series.timestamps)[start:],
            "cost": series.values[start:],
            "lstm_threshold": lstm_threshold[row],
            "is_filled": series.filled[start:],
            **{name: values[row] for name, values in columns.items()},
        }
    return out


def _stuck(
    items: list[tuple[CustomerSeries, int, dict[str, np.ndarray]]], cals: list[Calibration], config: PipelineConfig
) -> np.ndarray:
    """(series, steps from each item's start): the step ends a run of one repeated value
    ``hybrid.stuck_run`` times as long as the longest of training, and at least 6 steps long.
    Runs are counted on the whole series, so the daily run's newest steps see runs that began
    before them."""
    width = len(items[0][0]) - items[0][1]
    out = np.zeros((len(items), width), dtype=bool)
    factor = config.hybrid.stuck_run
    if factor <= 0:
        return out
    # Series of one length (the usual block) are counted as one array, others one by one.
    by_length: dict[int, list[int]] = defaultdict(list)
    for row, (series, _, _) in enumerate(items):
        by_length[len(series)].append(row)
    for rows in by_length.values():
        runs = scoring.constant_runs(
            np.vstack([items[r][0].values for r in rows]), np.vstack([items[r][0].filled for r in rows])
        )
        training = np.arange(runs.shape[-1]) < np.array([cals[r].train_size for r in rows])[:, None]
        limit = np.maximum(factor * np.maximum(np.where(training, runs, 0).max(axis=-1), 1), 6)
        for i, r in enumerate(rows):
            out[r] = runs[i, items[r][1] :] >= limit[i]
    return out


def _supported(
    vote: np.ndarray, normalised: dict[str, np.ndarray], signals: dict[str, np.ndarray], config: PipelineConfig
) -> np.ndarray:
    """The residual's lone vote where a window model backs it (``hybrid.residual_alone_support``
    of its threshold, before the window gate), else nothing. Where no window model of positive
    weight has a score (none configured, or no whole window yet) the vote stands: no model is
    no evidence against it."""
    support = config.hybrid.residual_alone_support
    models = [name for name in scoring.MODEL_SIGNALS if config.hybrid.weights.get(name, 1.0) > 0]
    if support <= 0 or not models:
        return vote
    backing = np.max(np.stack([normalised[name] for name in models]), axis=0)
    scored = np.any(np.stack([~np.isnan(signals[name]) for name in models]), axis=0)
    return np.where((backing >= support) | ~scored, vote, 0.0)


def _escalated(flagged: np.ndarray, residual: np.ndarray, quiet: int, factor: float) -> np.ndarray:
    """Flagged steps whose residual is at least ``factor`` times the largest residual of the
    flags in the ``quiet`` steps before them: an incident far beyond the alarm that opened the
    quiet period (a blip on a flat series, then an outage) is news, not a repeat of it."""
    residual = np.nan_to_num(residual, nan=0.0)
    reference = scoring.preceding_peak(np.where(flagged, residual, 0.0), quiet)
    return flagged & (reference > 0) & (residual >= factor * reference)


def _past_peak(
    residual: np.ndarray,
    score: np.ndarray,
    votes: dict[str, np.ndarray],
    frequency: pd.Timedelta,
    quiet: int,
    config: PipelineConfig,
) -> np.ndarray:
    """Steps the residual alone flags (no other vote reaches the decision) while it stays
    below ``hybrid.peak_ratio`` of its largest value in the preceding ``hybrid.peak_window``:
    the way down from a peak, reported as a repeat. The window never exceeds the quiet period,
    so the daily run, which scores at least a quiet period before its newest steps, sees every
    step of it."""
    hybrid = config.hybrid
    span = min(int(pd.Timedelta(hybrid.peak_window) / frequency), quiet)
    others = score
    for name, vote in votes.items():
        if name != "residual":
            others = np.maximum(others, vote)
    alone = (votes["residual"] >= hybrid.decision_threshold) & (others < hybrid.decision_threshold)
    below = np.nan_to_num(residual, nan=0.0) < hybrid.peak_ratio * scoring.preceding_peak(residual, span)
    return alone & below


def _thresholds(cal: Calibration, online: bool) -> dict[str, tuple[float, float]]:
    """(center, threshold) of each signal: the window models' own hindsight ones when not
    online (models trained before they existed use the online ones)."""
    thresholds = dict(cal.thresholds)
    if not online and cal.retrospective_thresholds:
        thresholds.update(cal.retrospective_thresholds)
    return thresholds


def _utc_values(timestamps: pd.DatetimeIndex) -> np.ndarray:
    """Timestamps as naive UTC datetime64 (``_frame`` marks them UTC again). A zoned index's
    integers are UTC already: converting the index (or ``np.asarray`` of it, one Python object
    per step) was the slowest part of scoring a day of thousands of customers."""
    return np.asarray(timestamps.asi8).view(f"datetime64[{timestamps.unit}]")


def _frame(parts: list[dict[str, Any]]) -> pd.DataFrame:
    """One frame from per-customer column arrays (one concatenation per column is far cheaper
    than a DataFrame per customer when scoring thousands of customers)."""
    if not parts:
        return empty_scores()
    sizes = [len(p["timestamp"]) for p in parts]
    columns: dict[str, Any] = {}
    for name in SCORE_COLUMNS:
        values = [p[name] if isinstance(p[name], np.ndarray) else np.full(size, p[name], dtype=object)
                  for p, size in zip(parts, sizes, strict=True)]
        columns[name] = np.concatenate(values)
    frame = pd.DataFrame(columns)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    for name in ("customer_id", "reasons", "split", "status"):
        frame[name] = frame[name].astype(str)
    flags = ("is_anomaly", "is_repeat", "lstm_flag", "decrease_flag", "is_filled")
    for name in flags:
        frame[name] = frame[name].astype(bool)
    for name in set(SCORE_COLUMNS) - {"customer_id", "timestamp", "reasons", "split", "status", *flags}:
        frame[name] = frame[name].astype(float)
    return frame


def quiet_steps(frequency: pd.Timedelta, window: int, config: PipelineConfig) -> int:
    """Steps after a flag in which a new run of flags is a repeat of the same incident, not a
    new alarm: ``hybrid.quiet_windows`` windows, and at least ``hybrid.quiet_period``."""
    hybrid = config.hybrid
    period = int(pd.Timedelta(hybrid.quiet_period) / frequency) if frequency > pd.Timedelta(0) else 0
    return max(hybrid.quiet_windows * window, period)


def _unscored_columns(series: CustomerSeries, reason: str) -> dict[str, Any]:
    n = len(series)
    nan = np.full(n, np.nan)
    false = np.zeros(n, dtype=bool)
    return {
        "customer_id": series.customer_id,
        "timestamp": _utc_values(series.timestamps),
        "cost": series.values,
        "expected_cost": nan,
        "hybrid_score": np.zeros(n),
        "is_anomaly": false,
        "is_repeat": false,
        "residual_score": nan,
        "lstm_error": nan,
        "lstm_threshold": nan,
        "lstm_flag": false,
        "isolation_forest_score": nan,
        "local_outlier_factor_score": nan,
        "decrease_rate": nan,
        "decrease_flag": false,
        "reasons": reason,
        "is_filled": series.filled,
        "split": "none",
        "status": "unscored",
    }


def unscored_frame(series: CustomerSeries, reason: str) -> pd.DataFrame:
    return _frame([_unscored_columns(series, reason)])


def empty_scores() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in SCORE_COLUMNS})
