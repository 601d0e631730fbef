import numpy as np
import pandas as pd
import pytest

from anomaly_pipelines.core.config import PreprocessConfig, WindowConfig
from anomaly_pipelines.core.series import (
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


def test_window_and_season_sizes_follow_frequency() -> None:
    cfg = WindowConfig()
    assert window_size(pd.Timedelta(days=1), cfg) == 7
    assert window_size(pd.Timedelta(minutes=5), cfg) == 12
    assert season_period(pd.Timedelta(days=1)) == 7
    assert season_period(pd.Timedelta(hours=1)) == 24
    assert season_period(pd.Timedelta(minutes=5)) == 288


def test_robust_scaler_ignores_outliers_and_survives_constant_series() -> None:
    values = np.r_[np.linspace(10, 20, 99), 10_000.0]
    robust = Scaler.fit(values)
    minmax = Scaler.fit(values, "minmax")
    # one spike squashes min-max scaling; the robust scale stays near the bulk's spread
    assert robust.scale < 10 < minmax.scale
    for constant in (np.zeros(20), np.full(20, 5.0)):
        scaler = Scaler.fit(constant)
        assert np.isfinite(scaler.transform(constant)).all() and scaler.scale > 0
