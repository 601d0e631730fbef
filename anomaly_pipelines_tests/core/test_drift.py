"""Drift measures on really fitted and scored detectors: a level shift drifts, a steady customer
does not, an old champion is stale."""

from __future__ import annotations

import numpy as np
import pandas as pd

from anomaly_pipelines.core.config import DriftConfig, PipelineConfig
from anomaly_pipelines.core.detector import fit_detectors, score_series
from anomaly_pipelines.core.drift import drift_measures, ks_distance, retrain_keys
from anomaly_pipelines.core.series import CustomerSeries


def _series(customer: str, shift_from: int | None, days: int = 150) -> CustomerSeries:
    rng = np.random.default_rng(len(customer))
    stamps = pd.date_range("2024-01-01", periods=days, freq="D", tz="UTC")
    weekly = np.where(stamps.weekday < 5, 1.25, 1.0)
    values = 100.0 * weekly * (1 + 0.03 * rng.standard_normal(days))
    if shift_from is not None:
        values[shift_from:] *= 1.8  # a new steady level, e.g. a migrated workload
    return CustomerSeries(
        customer, pd.DatetimeIndex(stamps), values, np.zeros(days, bool), pd.Timedelta(days=1)
    )


def test_level_shift_drifts_steady_customer_does_not_and_old_models_are_stale() -> None:
    config = PipelineConfig().merged({"lstm": {"epochs": 2}})
    series = [_series("shifted", shift_from=125), _series("steady", shift_from=None)]
    fitted = fit_detectors(series, config)
    scores = score_series(series, fitted, config)
    now = pd.Timestamp("2024-06-01", tz="UTC")
    created = {"shifted": now - pd.Timedelta(days=10), "steady": now - pd.Timedelta(days=200)}
    measures = drift_measures(scores, DriftConfig(), created, now=now).set_index("customer_id")
    shifted, steady = measures.loc["shifted"], measures.loc["steady"]
    assert shifted["drifted"] and not steady["drifted"]
    assert shifted["residual_ks"] > 0.5 > steady["residual_ks"]
    assert "recent residuals moved" in shifted["reason"]
    assert steady["stale"] and not shifted["stale"]
    assert steady["model_age_days"] == 200.0
    assert retrain_keys(measures.reset_index()) == ["shifted", "steady"]
    assert retrain_keys(
        drift_measures(scores, DriftConfig(max_model_age_days=365), created, now=now)
    ) == ["shifted"]


def test_ks_distance() -> None:
    a = np.arange(100.0)
    assert ks_distance(a, a) == 0.0
    assert ks_distance(a, a + 1000) == 1.0
    assert np.isnan(ks_distance(a, np.array([np.nan])))


def test_alert_rate_is_a_share_of_the_recent_days_when_fewer_were_scored() -> None:
    # Three days scored since the (re)training, two of them flagged: 2 of 28 days, not 2 of 3
    # (a model retrained days ago is not listed again for one short incident).
    stamps = pd.date_range("2024-01-01", periods=33, freq="D", tz="UTC")
    scores = pd.DataFrame(
        {
            "customer_id": "acme",
            "timestamp": stamps,
            "status": "scored",
            "split": ["train"] * 30 + ["daily"] * 3,
            "residual_score": 0.5,
            "is_anomaly": [False] * 30 + [True, True, False],
        }
    )
    row = drift_measures(scores, DriftConfig()).iloc[0]
    assert row["alert_rate"] == 2 / 28 and not row["drifted"]
    assert np.isnan(row["residual_ks"])  # needs half of the recent days
    rate = drift_measures(scores, DriftConfig(recent_days=2)).iloc[0]["alert_rate"]
    assert rate == 1 / 2  # a full recent window: its own share, as before
