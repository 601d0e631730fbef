from itertools import pairwise

import numpy as np
import pandas as pd
import pytest

from anomaly_pipelines.core import series as series_module
from anomaly_pipelines.core.config import PreprocessConfig, WindowConfig
from anomaly_pipelines.core.series import (
    CustomerSeries,
    frame_to_series,
    infer_frequency,
    regularize,
    series_to_frame,
)
from anomaly_pipelines.core.windows import Scaler, season_period, sliding_windows, window_size


def _frame(customer: str, timestamps: list[str], costs: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": customer, "timestamp": pd.to_datetime(timestamps, utc=True), "cost": costs})


def test_infer_frequency_uses_most_common_step_despite_gaps() -> None:
    ts = pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-06", "2024-01-07"], utc=True)
    assert infer_frequency(ts) == pd.Timedelta(days=1)
    five_min = pd.date_range("2024-01-01", periods=50, freq="5min", tz="UTC").delete([10, 11, 12])
    assert infer_frequency(five_min) == pd.Timedelta(minutes=5)


@pytest.mark.parametrize(
    ("policy", "expected"), [("interpolate", [1.0, 2.0, 3.0]), ("zero", [1.0, 0.0, 3.0]), ("ffill", [1.0, 1.0, 3.0])]
)
def test_gap_policy_fills_and_marks(policy: str, expected: list[float]) -> None:
    frame = pd.concat([_frame("a", ["2024-01-01", "2024-01-02"], [1.0, 1.0]), _frame("a", ["2024-01-04", "2024-01-05"], [3.0, 3.0])])
    (series,) = regularize(frame, PreprocessConfig(gap_policy=policy))  # type: ignore[arg-type]
    assert list(series.values[1:4]) == expected
    assert series.filled.tolist() == [False, False, True, False, False]


def test_duplicates_on_one_step_are_summed_and_customers_split() -> None:
    frame = pd.concat(
        [_frame("a", ["2024-01-01", "2024-01-01", "2024-01-02"], [1.0, 2.0, 5.0]), _frame("b", ["2024-01-01"], [7.0])]
    )
    series = {s.customer_id: s for s in regularize(frame)}
    assert series["a"].values.tolist() == [3.0, 5.0]
    assert series["b"].values.tolist() == [7.0]


def test_samples_sharing_a_sub_daily_step_are_averaged_and_a_days_rows_summed() -> None:
    """Two readings of a 5-minute gauge in one step (its clock slipped) are one reading of the
    step; two charges in one day, at any time of it, add up; so do the rows of one timestamp,
    and every step when the user set the frequency (resampling to it)."""
    gauge = _frame(
        "g",
        ["2024-01-01 00:00", "2024-01-01 00:05", "2024-01-01 00:10", "2024-01-01 00:12",
         "2024-01-01 00:15", "2024-01-01 00:15", "2024-01-01 00:20"],
        [10.0, 12.0, 11.0, 13.0, 4.0, 5.0, 10.0],
    )
    days = _frame(
        "d",
        ["2024-01-01 00:00", "2024-01-02 00:00", "2024-01-02 15:00", "2024-01-03 00:00", "2024-01-04 00:00"],
        [5.0, 6.0, 1.0, 7.0, 8.0],
    )
    series = {s.customer_id: s for s in regularize(pd.concat([gauge, days]))}
    assert series["g"].values.tolist() == [10.0, 12.0, 12.0, 9.0, 10.0]
    assert series["d"].values.tolist() == [5.0, 7.0, 7.0, 8.0]
    resampled = regularize(gauge, PreprocessConfig(frequency="10min"))[0]
    assert resampled.values.tolist() == [22.0, 33.0, 10.0]


def _messy_usage(seed: int, zone: str | None) -> pd.DataFrame:
    """Customers of daily, hourly, 5-minute and weekly steps with missing steps, off-grid and
    duplicate timestamps and missing costs, rows shuffled. Costs are quarters, so duplicates
    sum to the same value in any order."""
    rng = np.random.default_rng(seed)
    parts = []
    for c in range(12):
        step = pd.Timedelta(str(rng.choice(["1D", "1h", "5min", "7D"])))
        start = pd.Timestamp("2024-03-01") + pd.Timedelta(hours=int(rng.integers(0, 300)))
        stamps = start + np.arange(int(rng.integers(1, 80))) * step
        stamps = (
            stamps[rng.random(len(stamps)) > rng.choice([0.0, 0.3])] if len(stamps) > 1 else stamps
        )
        stamps = stamps + pd.to_timedelta(rng.integers(0, 3, len(stamps)) * (c % 2), unit="min")
        stamps = np.concatenate([stamps, stamps[rng.integers(0, len(stamps), 2)]])
        cost = np.round(rng.gamma(2.0, 10.0, len(stamps)) * 4) / 4
        cost[rng.random(len(cost)) < 0.05] = np.nan
        parts.append(
            pd.DataFrame({"customer_id": f"{'zb'[c % 2]}{c}", "timestamp": stamps, "cost": cost})
        )
    frame = pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=seed)
    stamps = pd.to_datetime(frame["timestamp"]).dt.tz_localize("UTC")
    return frame.assign(timestamp=stamps.dt.tz_convert(zone) if zone else stamps)


def _assert_same_series(got: list[CustomerSeries], want: list[CustomerSeries]) -> None:
    assert [s.customer_id for s in got] == [s.customer_id for s in want]
    for a, b in zip(got, want, strict=True):
        assert a.timestamps.equals(b.timestamps) and a.timestamps.dtype == b.timestamps.dtype
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.filled, b.filled)
        assert a.frequency == b.frequency


@pytest.mark.parametrize("zone", [None, "America/New_York"])
@pytest.mark.parametrize("policy", ["interpolate", "zero", "ffill"])
def test_many_customers_at_once_are_regularised_as_each_alone(
    zone: str | None, policy: str
) -> None:
    # The daily run regularises every customer in one vectorised pass; a customer's series
    # must not depend on the customers beside it (its neighbours' gaps, steps or zone days).
    config = PreprocessConfig(gap_policy=policy)  # type: ignore[arg-type]
    for seed in range(3):
        frame = _messy_usage(seed, zone)
        alone = [
            series
            for customer in sorted(frame["customer_id"].unique())
            for series in regularize(frame[frame["customer_id"] == customer], config)
        ]
        _assert_same_series(regularize(frame, config), alone)


@pytest.mark.parametrize("policy", ["interpolate", "zero", "ffill"])
def test_gaps_of_all_series_are_filled_as_pandas_fills_each(policy: str) -> None:
    def plain(values: pd.Series) -> pd.Series:
        if policy == "zero":
            return values.fillna(0.0)
        if policy == "ffill":
            return values.ffill().bfill()
        return values.interpolate(method="linear", limit_direction="both")

    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 12, 300)
    values = rng.normal(100.0, 30.0, lengths.sum())
    values[rng.random(len(values)) < rng.random(len(values))] = np.nan  # leading, trailing, all
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    want = np.concatenate(
        [plain(pd.Series(values[lo:hi])).to_numpy() for lo, hi in pairwise(offsets)]
    )
    np.testing.assert_array_equal(series_module._fill_segments(values, offsets, policy), want)


def test_mode_steps_by_count_table_and_by_sorting_agree_with_counting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(9)
    code = np.sort(rng.integers(0, 40, 2000))
    ts = np.concatenate(
        [np.cumsum(rng.choice([0, 5, 10, 15], n)) for n in np.bincount(code, minlength=41)]
    )
    want = np.zeros(41, dtype=np.int64)
    for c in range(41):
        steps = np.diff(ts[code == c])
        values, counts = np.unique(steps[steps > 0], return_counts=True)
        want[c] = values[np.argmax(counts)] if counts.size else 0  # ties: the first, smaller
    same = code[1:] == code[:-1]
    step, owner = np.diff(ts)[same], code[1:][same]
    step, owner = step[step > 0], owner[step > 0]

    def modes() -> np.ndarray:
        return series_module._mode_steps(step, owner, 41)[0]

    np.testing.assert_array_equal(modes(), want)
    monkeypatch.setattr(series_module, "_COUNT_TABLE_CELLS", 0)
    np.testing.assert_array_equal(modes(), want)


def test_frame_round_trip_keeps_values_and_fill_marks() -> None:
    frame = _frame("a", ["2024-01-01", "2024-01-03", "2024-01-04"], [1.0, 3.0, 4.0])
    series = regularize(frame)
    back = frame_to_series(series_to_frame(series))
    assert back[0].values.tolist() == series[0].values.tolist()
    assert back[0].filled.tolist() == series[0].filled.tolist()


def test_sliding_windows_end_positions() -> None:
    w = sliding_windows(np.arange(10.0), 7)
    assert w.shape == (4, 7)
    assert w[0, -1] == 6.0 and w[-1, -1] == 9.0
    assert sliding_windows(np.arange(3.0), 7).shape == (0, 7)


@pytest.mark.parametrize("freq", ["MS", "ME", "QS", "YS"])
def test_calendar_months_each_keep_their_own_step(freq: str) -> None:
    # Seven years of months: on a fixed grid of 31 days (their most common step) two months
    # would share a step every few years, a bill of twice the size next to a filled gap.
    stamps = pd.date_range("2019-01-31" if freq == "ME" else "2019-01-01", periods=84, freq=freq, tz="UTC")
    frame = pd.DataFrame({"customer_id": "a", "timestamp": stamps.delete(40), "cost": np.delete(np.arange(1.0, 85.0), 40)})
    (series,) = regularize(frame)
    assert list(series.timestamps) == list(stamps)
    assert list(np.flatnonzero(series.filled)) == [40]
    assert np.array_equal(np.delete(series.values, 40), np.delete(np.arange(1.0, 85.0), 40))


def test_rows_every_30_days_keep_their_fixed_grid() -> None:
    # They drift through the calendar: as months, two of them would share January.
    stamps = pd.date_range("2019-01-01", periods=40, freq="30D", tz="UTC")
    (series,) = regularize(pd.DataFrame({"customer_id": "a", "timestamp": stamps, "cost": np.arange(40.0)}))
    assert list(series.timestamps) == list(stamps) and np.array_equal(series.values, np.arange(40.0))


def test_window_and_season_sizes_follow_frequency() -> None:
    cfg = WindowConfig()
    assert window_size(pd.Timedelta(days=1), cfg) == 7
    assert window_size(pd.Timedelta(minutes=5), cfg) == 12
    assert season_period(pd.Timedelta(days=1)) == 7
    assert season_period(pd.Timedelta(hours=1)) == 24
    assert season_period(pd.Timedelta(minutes=5)) == 288
    assert season_period(pd.Timedelta(days=7)) is None  # weekly: no year of warm-up
    assert season_period(pd.Timedelta(days=31)) == 12  # monthly, as inferred from its steps
    assert season_period(pd.Timedelta(days=92)) == 4
    assert season_period(pd.Timedelta(days=366)) is None


def test_robust_scaler_ignores_outliers_and_survives_constant_series() -> None:
    values = np.r_[np.linspace(10, 20, 99), 10_000.0]
    robust = Scaler.fit(values)
    minmax = Scaler.fit(values, "minmax")
    # one spike squashes min-max scaling; the robust scale stays near the bulk's spread
    assert robust.scale < 10 < minmax.scale
    for constant in (np.zeros(20), np.full(20, 5.0)):
        scaler = Scaler.fit(constant)
        assert np.isfinite(scaler.transform(constant)).all() and scaler.scale > 0


def _jittered_clock(samples: int, seed: int = 4) -> pd.DatetimeIndex:
    """A 5-minute sensor whose samples arrive up to 40 s early or late, with a few lost ones."""
    rng = np.random.default_rng(seed)
    grid = pd.date_range("2024-01-01 00:02", periods=samples + 20, freq="5min", tz="UTC")
    kept = np.sort(rng.choice(len(grid), size=samples, replace=False))
    return grid[kept] + pd.to_timedelta(rng.integers(-40, 41, size=samples), unit="s")


def test_a_jittered_clock_keeps_its_sampling_interval_and_every_sample() -> None:
    ts = _jittered_clock(300)
    # No exact step is common (they spread over 220 to 380 s), but most round to 5 minutes.
    assert infer_frequency(ts) == pd.Timedelta(minutes=5)
    (series,) = regularize(_frame("s", list(ts.astype(str)), list(np.arange(1.0, 301.0))), PreprocessConfig())
    assert series.frequency == pd.Timedelta(minutes=5)
    # Each sample on its nearest grid step, none summed with a neighbour (floored, an early
    # sample would land on the step before its own).
    observed = series.values[~series.filled]
    assert observed.tolist() == list(np.arange(1.0, 301.0))
    assert series.filled.sum() == len(series) - 300


def test_a_clock_with_one_common_step_is_not_rounded() -> None:
    # Steps of exactly 7 minutes and a few of 14: 7 minutes is no usual interval but is the step.
    ts = pd.date_range("2024-01-01", periods=60, freq="7min", tz="UTC").delete([20, 40])
    assert infer_frequency(ts) == pd.Timedelta(minutes=7)
