"""``detect()`` as a library citizen in a notebook: its result merges back onto the input,
missing and unusable costs come back as rows that say why, and it leaves TensorFlow's
process-wide state as it found it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from anomaly_pipelines import detect

FAST = {"lstm": {"epochs": 1}}
SHORT = {"preprocess": {"min_history": 500}}  # rows and timestamps only, no training
KEYS = ["customer_id", "timestamp"]


def _usage(days: int = 120, tz: str | None = None, unit: str = "ns") -> pd.DataFrame:
    rng = np.random.default_rng(11)
    ts = pd.date_range("2024-01-01", periods=days, freq="D", tz=tz, unit=unit)
    return pd.DataFrame({"customer_id": "acme", "timestamp": ts, "cost": 100 + rng.normal(0, 3, days)})


@pytest.mark.parametrize(
    ("tz", "unit"), [(None, "ns"), (None, "us"), ("Europe/Berlin", "ns"), ("UTC", "s")]
)
def test_timestamps_come_back_in_the_input_dtype_and_zone(tz: str | None, unit: str) -> None:
    usage = _usage(tz=tz, unit=unit)
    scores = detect(usage, SHORT)
    assert scores["timestamp"].dtype == usage["timestamp"].dtype
    merged = usage.merge(scores, on=KEYS, suffixes=("", "_scored"))
    assert len(merged) == len(usage)
    assert (merged["cost"] == merged["cost_scored"]).all()


def test_text_timestamps_come_back_as_the_datetimes_they_were_read_as() -> None:
    usage = _usage(days=10)
    naive_text = usage.assign(timestamp=usage["timestamp"].dt.strftime("%Y-%m-%d"))
    assert detect(naive_text, SHORT)["timestamp"].tolist() == usage["timestamp"].tolist()
    zoned_text = usage.assign(timestamp=usage["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S+01:00"))
    zoned = detect(zoned_text, SHORT)["timestamp"]
    assert str(zoned.dt.tz) == "UTC+01:00" and (zoned.dt.hour == 0).all()


def test_a_missing_cost_is_a_gap_and_its_row_says_so() -> None:
    usage = _usage()
    with_nan = usage.copy()
    with_nan.loc[50, "cost"] = np.nan
    scores = detect(with_nan, FAST)
    assert len(scores) == len(usage)
    row = scores[scores["timestamp"] == usage.loc[50, "timestamp"]].iloc[0]
    assert row["status"] == "missing" and "missing cost (NaN)" in row["reasons"]
    assert np.isnan(row["cost"]) and not row["is_anomaly"] and np.isnan(row["hybrid_score"])
    assert np.isfinite(row["expected_cost"])  # what the gap should have cost
    # The models saw exactly what they see when the row is not there at all.
    without = detect(usage.drop(index=50), FAST)
    observed = scores[scores["status"] != "missing"].reset_index(drop=True)
    pd.testing.assert_frame_equal(observed, without)


@pytest.mark.parametrize(
    ("value", "reason"),
    [(np.inf, "infinite cost"), (-np.inf, "infinite cost"), (-12.5, "negative cost")],
)
def test_infinite_and_negative_costs_come_back_with_a_reason(value: float, reason: str) -> None:
    usage = _usage(days=20)
    usage.loc[7, "cost"] = value
    scores = detect(usage, SHORT)
    row = scores[scores["timestamp"] == usage.loc[7, "timestamp"]].iloc[0]
    assert row["status"] == "invalid" and reason in row["reasons"]
    assert row["cost"] == value and not row["is_anomaly"]
    assert len(scores) == len(usage)


def test_a_usable_part_of_a_step_keeps_the_step_observed() -> None:
    """A credit (negative) beside the day's usage of another service: the day is scored on
    the usage, not left out."""
    usage = _usage(days=20).assign(service="compute")
    credit = usage.iloc[[3]].assign(cost=-4.0, service="support")
    scores = detect(pd.concat([usage, credit], ignore_index=True), SHORT)
    row = scores[scores["timestamp"] == usage.loc[3, "timestamp"]].iloc[0]
    assert row["status"] != "invalid" and row["cost"] == pytest.approx(usage.loc[3, "cost"])


def test_a_customer_with_no_usable_cost_comes_back_row_by_row() -> None:
    usage = pd.concat(
        [_usage(days=20), _usage(days=3).assign(customer_id="ghost", cost=np.nan)],
        ignore_index=True,
    )
    scores = detect(usage, SHORT)
    ghost = scores[scores["customer_id"] == "ghost"]
    assert len(ghost) == 3 and (ghost["status"] == "missing").all()
    assert (ghost["split"] == "none").all() and not ghost["is_anomaly"].any()


def test_after_detect_an_unseeded_keras_model_still_trains() -> None:
    """TensorFlow's op determinism is process-wide and cannot be switched off: had detect()
    turned it on, the user's own unseeded model would raise "Random ops require a seed"."""
    script = textwrap.dedent(
        """
        import numpy as np, pandas as pd
        from anomaly_pipelines import detect
        rng = np.random.default_rng(0)
        days = pd.date_range("2024-01-01", periods=90, freq="D")
        usage = pd.DataFrame({"customer_id": "a", "timestamp": days,
                              "cost": 100 + rng.normal(0, 3, 90)})
        scores = detect(usage, {"lstm": {"epochs": 1}})
        assert scores["lstm_error"].notna().any()  # the LSTM really trained
        import keras
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5),
                                  keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        model.fit(np.ones((8, 4)), np.ones(8), epochs=1, verbose=0)
        print("trained")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("trained")


def test_a_frame_of_only_unusable_costs_comes_back_typed() -> None:
    usage = pd.DataFrame(
        {"customer_id": "a", "timestamp": pd.date_range("2024-01-01", periods=2), "cost": [np.inf, -1.0]}
    )
    out = detect(usage)
    assert list(out["status"]) == ["invalid", "invalid"]
    assert out["is_anomaly"].dtype == bool and not out["is_anomaly"].any()
