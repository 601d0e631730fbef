"""``detect()`` on awkward notebook frames: zoned daily data across DST changes, and inputs it
must refuse (or report) instead of failing inside numpy or changing numbers silently."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from anomaly_pipelines import detect
from anomaly_pipelines.core.api import DuplicateRowsWarning
from anomaly_pipelines.core.config import PreprocessConfig
from anomaly_pipelines.core.series import regularize

FAST = {"lstm": {"epochs": 1}}


def _zoned(zone: str, days: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    ts = pd.date_range("2024-01-01", periods=days, freq="D", tz=zone)
    return pd.DataFrame({"customer_id": "c", "timestamp": ts, "cost": 100 + rng.normal(0, 5, days)})


@pytest.mark.parametrize(
    ("zone", "settings"),
    [
        ("US/Eastern", FAST),  # scored: the merged day used to be flagged by every signal
        ("Europe/Berlin", {"preprocess": {"min_history": 500}}),  # rows only (no training)
    ],
)
def test_zoned_daily_data_keeps_one_row_per_calendar_day_across_dst(
    zone: str, settings: dict[str, dict[str, int]]
) -> None:
    usage = _zoned(zone)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DuplicateRowsWarning)
        scores = detect(usage, settings)
    assert len(scores) == len(usage)
    # Same instants as the input (none an hour off), same costs (no two days summed).
    assert (pd.DatetimeIndex(scores["timestamp"]) == pd.DatetimeIndex(usage["timestamp"])).all()
    np.testing.assert_allclose(scores["cost"].to_numpy(), usage["cost"].to_numpy())
    assert not scores["is_anomaly"].any()


def test_zoned_daily_gap_is_filled_on_the_local_midnight() -> None:
    usage = _zoned("Europe/Berlin", 100).drop(index=[89, 90])  # 2024-03-30 and 2024-03-31 missing
    (series,) = regularize(usage, PreprocessConfig())
    assert len(series) == 100 and series.filled.sum() == 2
    assert (series.timestamps.hour == 0).all() and str(series.timestamps.tz) == "Europe/Berlin"
    assert series.frequency == pd.Timedelta(days=1)


def test_zoned_hourly_data_stays_on_an_hourly_grid() -> None:
    ts = pd.date_range("2024-03-09", periods=72, freq="h", tz="US/Eastern")
    usage = pd.DataFrame({"customer_id": "h", "timestamp": ts, "cost": 1.0})
    (series,) = regularize(usage, PreprocessConfig())
    assert len(series) == 72 and not series.filled.any()
    assert (series.timestamps == ts).all()


def _frame(**columns: object) -> pd.DataFrame:
    base: dict[str, object] = {
        "customer_id": ["a", "a", "a"],
        "timestamp": pd.date_range("2024-01-01", periods=3, freq="D"),
        "cost": [1.0, 2.0, 3.0],
    }
    base.update(columns)
    return pd.DataFrame(base)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (_frame(timestamp=[pd.Timestamp("2024-01-01"), pd.NaT, pd.Timestamp("2024-01-03")]),
         r"'timestamp' has 1 missing value\(s\) \(NaT\), first at row 1"),
        (_frame(customer_id=["a", None, "a"]), r"'customer_id' has 1 missing value\(s\), first at row 1"),
        (_frame(customer_id=[1, "1", 2]), r"both as text and as another type, e.g. 1 \(row 0\) and '1' \(row 1\)"),
        (_frame(cost=[True, False, True]), r"'cost' has 3 boolean value\(s\), first at row 0"),
        (_frame(cost=[1.0, True, 3.0]), r"'cost' has 1 boolean value\(s\), first at row 1"),
        (_frame(timestamp=["2024-01-01", "not a date", "2024-01-03"]), r"'timestamp' cannot be read as dates"),
        (_frame(timestamp=[1704067200, 1704153600, 1704240000]), r"'timestamp' holds 3 number\(s\)"),
        (_frame(timestamp=["2024-01-01", 1704153600, "2024-01-03"]), r"'timestamp' holds 1 number\(s\), first at row 1"),
        (_frame(cost=[1 + 2j, 1.0, 2.0]), r"'cost' has 3 complex value\(s\)"),
        (pd.concat([_frame(), _frame()[["cost"]]], axis=1), r"more than one column named \['cost'\]"),
    ],
    ids=[
        "nat", "none-id", "int-and-str-id", "bool-cost", "one-bool-cost", "bad-date",
        "epoch-seconds", "one-epoch", "complex-cost", "duplicate-column",
    ],
)
def test_bad_frames_get_a_clear_error(frame: pd.DataFrame, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        detect(frame, FAST)


def test_duplicate_timestamps_are_summed_with_a_warning() -> None:
    usage = _frame(timestamp=pd.to_datetime(["2024-01-01", "2024-01-01", "2024-01-02"]))
    with pytest.warns(DuplicateRowsWarning, match=r"1 row\(s\) repeat the customer_id, timestamp .* summed"):
        scores = detect(usage, FAST)
    assert scores["cost"].tolist() == [3.0, 3.0]


def test_rows_told_apart_by_another_column_are_summed_without_a_warning() -> None:
    usage = _frame(timestamp=pd.to_datetime(["2024-01-01", "2024-01-01", "2024-01-02"])).assign(
        service=["compute", "storage", "compute"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DuplicateRowsWarning)
        scores = detect(usage, FAST)
    assert scores["cost"].tolist() == [3.0, 3.0]


def test_integer_ids_alone_become_text() -> None:
    scores = detect(_frame(customer_id=[7, 7, 7]), FAST)
    assert scores["customer_id"].tolist() == ["7", "7", "7"]


def test_a_jittered_clock_gets_a_row_for_every_input_timestamp_and_its_spike_found() -> None:
    """A 5-minute metric whose samples arrive seconds off the grid (no two steps alike): every
    input timestamp comes back, so the result merges onto the input, and a clear surge is one
    alarm, not alarms scattered by a misread step."""
    rng = np.random.default_rng(8)
    samples = 1600
    grid = pd.date_range("2024-02-01", periods=samples, freq="5min")
    ts = grid + pd.to_timedelta(rng.integers(-45, 46, size=samples), unit="s")
    day = np.arange(samples) / 288
    value = 40 + 8 * np.sin(2 * np.pi * day) + rng.normal(0, 1.0, samples)
    value[1500:1506] += 40
    usage = pd.DataFrame({"customer_id": "sensor", "timestamp": ts, "cost": value})
    scores = detect(usage, FAST, online=True)
    assert len(scores) == samples
    merged = usage.merge(scores, on=["customer_id", "timestamp"], how="left", validate="one_to_one")
    assert merged["status"].notna().all()
    np.testing.assert_allclose(merged["cost_y"].to_numpy(), value)
    flagged = np.flatnonzero(merged["is_anomaly"].to_numpy(dtype=bool))
    assert flagged.size and set(flagged) <= set(range(1500, 1530)), flagged


def test_a_drifting_clock_averages_the_samples_sharing_a_step_and_finds_only_its_surge() -> None:
    """A 5-minute gauge (a road sensor, say) whose clock slips after one gap in ten, so now and
    then two samples fall in one step. Summed, each such step would be a spike twice the level:
    false alarms, and residual thresholds inflated until the real surge went unseen. Averaged,
    the step holds the level its samples share."""
    rng = np.random.default_rng(3)
    samples = 1600
    gaps = np.where(rng.random(samples) < 0.1, rng.integers(1, 15, size=samples), 5)
    ts = pd.Timestamp("2024-02-01 00:02") + pd.to_timedelta(np.cumsum(gaps), unit="min")
    day = (ts - ts[0]) / pd.Timedelta(days=1)
    value = np.asarray(40 + 8 * np.sin(2 * np.pi * day) + rng.normal(0, 1.0, samples), dtype=float)
    value[1500:1506] += 40
    usage = pd.DataFrame({"customer_id": "sensor", "timestamp": ts, "cost": value})
    series = regularize(usage, PreprocessConfig())[0]
    shared = pd.DatetimeIndex(ts).floor("5min").duplicated(keep=False)
    assert shared.sum() > 20  # the case this test is about
    assert np.nanmax(series.values) < 95  # no step holds the sum of two samples
    scores = detect(usage, FAST, online=True)
    merged = usage.merge(scores, on=["customer_id", "timestamp"], how="left", validate="one_to_one")
    flagged = np.flatnonzero(merged["is_anomaly"].to_numpy(dtype=bool))
    assert flagged.size and flagged[0] == 1500 and set(flagged) <= set(range(1500, 1530)), flagged


def test_a_late_sample_of_a_regular_clock_keeps_the_scores_of_its_own_step() -> None:
    """Most samples on a 5-minute grid, every tenth three minutes late: the late one is floored
    to its own step (not the next, which holds the following sample), and comes back with it."""
    stamps = pd.date_range("2024-02-01", periods=400, freq="5min")
    late = np.arange(400) % 10 == 5
    stamps = stamps + pd.to_timedelta(np.where(late, 3, 0), unit="min")
    usage = pd.DataFrame({"customer_id": "m", "timestamp": stamps, "cost": np.arange(1.0, 401.0)})
    scores = detect(usage, {"preprocess": {"min_history": 1000}})  # rows only, no training
    merged = usage.merge(scores, on=["customer_id", "timestamp"], how="left", validate="one_to_one")
    np.testing.assert_array_equal(merged["cost_y"].to_numpy(), usage["cost"].to_numpy())
