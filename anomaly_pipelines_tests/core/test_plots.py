"""Customer and portfolio plots: they render for long daily and dense 5-minute series, mark
anomalies by severity, survive hostile ids, and leave the user's matplotlib backend alone."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from anomaly_pipelines.core.explain import find_incidents
from anomaly_pipelines.core.plots import (
    PARALLEL_FROM,
    SEVERITY_COLORS,
    plot_customer,
    plot_customers,
    plot_portfolio,
    portfolio_customers,
)


def _series(
    customer: str, periods: int, freq: str, events: dict[int, float], seed: int
) -> pd.DataFrame:
    """A seasonal series whose expected cost is known; ``events`` multiplies cost at positions."""
    rng = np.random.default_rng(seed)
    stamps = pd.date_range("2024-01-01", periods=periods, freq=freq, tz="UTC")
    expected = 100.0 + 20.0 * np.sin(np.arange(periods) * 2 * np.pi / 7)
    cost = expected * (1 + rng.normal(0, 0.03, periods))
    for i, factor in events.items():
        cost[i] = expected[i] * factor
    residual = np.abs(cost - expected) / 3.0
    flagged = np.zeros(periods, dtype=bool)
    flagged[list(events)] = True
    lstm = np.abs(rng.normal(1.0, 0.3, periods))
    lstm[list(events)] = 8.0
    lstm[:6] = np.nan
    return pd.DataFrame(
        {
            "customer_id": customer,
            "timestamp": stamps,
            "cost": cost,
            "expected_cost": expected,
            "hybrid_score": np.where(flagged, 3.0, 0.2),
            "is_anomaly": flagged,
            "residual_score": residual,
            "lstm_error": lstm,
            "lstm_threshold": 2.5,
            "reasons": np.where(flagged, "residual", ""),
            "split": np.where(np.arange(periods) < periods * 0.8, "train", "test"),
            "status": np.where(np.arange(periods) < 6, "warmup", "scored"),
        }
    )


def _pixels_near(path: Path, color: str, tolerance: float = 0.03) -> int:
    image = imread(path)[..., :3]
    return int((np.abs(image - np.array(to_rgb(color))).max(axis=-1) < tolerance).sum())


def test_two_years_of_daily_data_with_severity_colours(tmp_path: Path) -> None:
    backend = matplotlib.get_backend()
    scores = _series("acme", 730, "D", {600: 3.0, 601: 3.2, 650: 1.3}, seed=1)
    incidents = find_incidents(scores)
    assert incidents["severity"].tolist() == ["critical", "medium"]
    path = plot_customer(scores, incidents, tmp_path / "nested" / "acme.png")
    assert path == tmp_path / "nested" / "acme.png"
    image = imread(path)
    assert image.shape[:2] == (650, 1200)
    assert _pixels_near(path, SEVERITY_COLORS["critical"]) > 20
    assert _pixels_near(path, SEVERITY_COLORS["medium"]) > 20
    assert _pixels_near(path, SEVERITY_COLORS["high"]) == 0  # no high incident, no high marker
    assert path.stat().st_size < 300_000
    assert matplotlib.get_backend() == backend  # drawn on Agg without switching the backend


def test_five_minute_data_renders(tmp_path: Path) -> None:
    scores = _series("edge", 3 * 7 * 288, "5min", {5000: 4.0, 5001: 4.0, 5002: 4.0}, seed=2)
    incidents = find_incidents(scores)
    assert incidents["steps"].tolist() == [3] and incidents["step_seconds"].tolist() == [300.0]
    path = plot_customer(scores, incidents, tmp_path / "edge.png", title="edge (5-minute data)")
    assert _pixels_near(path, SEVERITY_COLORS["critical"]) > 10
    assert path.stat().st_size < 300_000


def test_unscored_customer_and_hostile_ids(tmp_path: Path) -> None:
    scores = _series(r"$\frac{1}{0}$ <b>evil</b> \ $", 30, "D", {}, seed=3)
    scores["lstm_error"] = np.nan
    scores["expected_cost"] = np.nan
    scores["status"] = "unscored"
    scores["reasons"] = "insufficient history: 30 steps, need 42"
    path = plot_customer(scores, find_incidents(scores), tmp_path / "evil.png")
    assert imread(path).shape[:2] == (650, 1200)


def test_one_customer_per_plot(tmp_path: Path) -> None:
    both = pd.concat([_series("a", 20, "D", {}, 1), _series("b", 20, "D", {}, 2)])
    with pytest.raises(ValueError, match="exactly one customer"):
        plot_customer(both, find_incidents(both), tmp_path / "x.png")


def test_many_plots_are_drawn_in_worker_processes_exactly_as_alone(tmp_path: Path) -> None:
    frames = [_series(f"c{i}", 60, "D", {30 + i % 5: 3.0}, seed=i) for i in range(PARALLEL_FROM)]
    incidents = find_incidents(pd.concat(frames, ignore_index=True))
    plots = [(f, incidents, tmp_path / f"many-{i}.png", None) for i, f in enumerate(frames)]
    paths = plot_customers(plots, workers=2)
    assert paths == [path for _, _, path, _ in plots]  # in order
    for i in (0, len(frames) - 1):
        alone = plot_customer(frames[i], incidents, tmp_path / f"alone-{i}.png")
        assert alone.read_bytes() == paths[i].read_bytes()


def test_portfolio_ranks_by_impact_then_peak(tmp_path: Path) -> None:
    frames = [
        _series("small", 120, "D", {100: 1.5}, 1),
        _series("big", 120, "D", {100: 5.0, 101: 5.0}, 2),
        _series("none-hot", 120, "D", {}, 3),
        _series("none-cold", 120, "D", {}, 4),
    ]
    frames[2].loc[50, "hybrid_score"] = 0.9  # a close call, still below the threshold
    scores = pd.concat(frames, ignore_index=True)
    incidents = find_incidents(scores)
    assert portfolio_customers(scores, incidents, top_n=3) == ["big", "small", "none-hot"]
    assert portfolio_customers(scores, incidents.iloc[0:0], top_n=10)[0] in {"big", "small"}
    small = plot_portfolio(scores, incidents, tmp_path / "p2.png", top_n=2)
    large = plot_portfolio(scores, incidents, tmp_path / "p4.png", top_n=4)
    assert imread(small).shape[1] == 1200
    assert imread(large).shape[0] >= imread(small).shape[0]
    # above-threshold days are drawn in the warm part of the scale, calm days are not
    assert _pixels_near(large, "#800026", tolerance=0.12) > 0


def test_portfolio_handles_sub_daily_scores(tmp_path: Path) -> None:
    scores = _series("edge", 4 * 288, "5min", {700: 4.0}, seed=5)
    path = plot_portfolio(scores, find_incidents(scores), tmp_path / "p.png")
    assert path.exists() and imread(path).shape[1] == 1200
