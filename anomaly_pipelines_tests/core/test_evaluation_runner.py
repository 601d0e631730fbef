"""The evaluation runner end to end on a tiny labelled data set (LSTMs with two epochs)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_pipelines.core import scoring
from anomaly_pipelines.core.api import detect
from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.detector import quiet_steps
from anomaly_pipelines.core.evaluation import cache, metrics, runner
from anomaly_pipelines.core.evaluation.__main__ import main
from anomaly_pipelines.core.evaluation.datasets import LabelledSeries, label_usage
from anomaly_pipelines.core.sources.synthetic import generate_usage

CONFIG = PipelineConfig().merged({"lstm": {"epochs": 2}})
RETRO_ROW = f"| {runner.RETROSPECTIVE} |"


@pytest.fixture(scope="module")
def tiny() -> list[LabelledSeries]:
    data = generate_usage(customers=2, days=120, seed=4, quiet_customers=1)
    return label_usage(data.usage, data.incidents, dataset="tiny")


def _series(name: str, labels: list[int]) -> LabelledSeries:
    ts = pd.date_range("2024-01-01", periods=len(labels), freq="D", tz="UTC")
    frame = pd.DataFrame({"timestamp": ts, "value": np.arange(len(labels), dtype=float), "label": np.array(labels, bool)})
    return LabelledSeries(name, "hand", frame)


def test_score_detection_sums_counts_over_series() -> None:
    a = _series("a", [0, 1, 1, 0, 0, 0, 1, 0, 0, 0])
    b = _series("b", [0, 0, 0, 0])
    detection = runner.Detection(
        "made-up",
        flags={"a": np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 1], bool), "b": np.array([1, 0, 0, 0], bool)},
        scores={"a": np.linspace(0, 1, 10), "b": np.array([np.nan, 0.1, 0.2, 0.3])},
        seconds=1.5,
    )
    row = runner.score_detection([a, b], detection, tolerance=1)
    # a: 2 events, 1 found, 2 false alarms; b: 1 false alarm -> P = 1/4, R = 1/2, F1 = 2/(2+3+1)
    assert row["events"] == 2 and row["false_alarms"] == 3
    assert row["event_precision"] == pytest.approx(1 / 4)
    assert row["event_recall"] == pytest.approx(1 / 2)
    assert row["event_f1"] == pytest.approx(2 / 6)
    # with one step of tolerance a's (7, 7) detection finds event (6, 6); b's alarm remains
    assert row["event_recall_tol"] == pytest.approx(1.0)
    assert row["event_precision_tol"] == pytest.approx(2 / 4)
    # points: a has tp 1, fp 3, fn 2; b has fp 1
    assert row["point_precision"] == pytest.approx(1 / 5)
    assert row["point_recall"] == pytest.approx(1 / 3)
    assert row["flagged_share"] == pytest.approx(5 / 14)
    assert row["alert_load"] == pytest.approx(1 / 4)  # b has no event: 1 of its 4 steps flagged
    assert row["false_alarms_per_month"] == pytest.approx(3 / ((9 + 3) / 30.44))
    labels = np.r_[a.labels, b.labels]
    scores = np.r_[detection.scores["a"], detection.scores["b"]]
    assert row["auc_pr"] == pytest.approx(metrics.auc_pr(labels, scores))
    assert row["seconds"] == 1.5 and row["steps"] == 14
    assert "recurring_flagged" not in row  # no recurring charges marked


def test_score_detection_counts_flagged_recurring_charges() -> None:
    frame = _series("a", [0, 1, 0, 0, 0, 0]).frame.assign(recurring=[True, True, False, True, False, True])
    series = LabelledSeries("a", "hand", frame)
    flags = np.array([1, 1, 0, 0, 0, 1], bool)
    row = runner.score_detection([series], runner.Detection("d", {"a": flags}, {"a": np.zeros(6)}, None))
    # Step 1 is labelled, so it is not a normal charge: 2 of the 3 normal charges are flagged.
    assert row["recurring_steps"] == 3
    assert row["recurring_flagged"] == pytest.approx(2 / 3)
    report = runner.render_markdown(pd.DataFrame([{"dataset": "hand", **row}]))
    assert "Normal recurring charges flagged (hand)" in report and "| d | 66.7% |" in report


def test_evaluate_runs_every_detector_and_component(tiny: list[LabelledSeries], tmp_path: Path) -> None:
    result = runner.evaluate({"tiny": tiny}, CONFIG, cache_dir=tmp_path / "cache")
    names = result["detector"].tolist()
    assert names[0] == "hybrid"
    assert {f"hybrid/{s}" for s in ("residual", "lstm", "isolation_forest", "local_outlier_factor", "decrease")} <= set(names)
    assert {"baseline/isolation_forest", "baseline/robust_z", "baseline/notebook_lstm"} <= set(names)
    assert {f"window/{name}" for name in runner.OTHER_WINDOW_DETECTORS} <= set(names)
    assert (result["dataset"] == "tiny").all()
    assert (result["events"] == sum(len(metrics.segments(s.labels)) for s in tiny)).all()
    for column in ("event_precision", "event_recall", "event_f1", "point_precision", "point_recall", "auc_pr"):
        values = result[column].dropna()
        assert ((values >= 0) & (values <= 1)).all(), column
    assert result.loc[result["detector"] == "hybrid", "seconds"].iloc[0] > 0
    assert result.loc[result["detector"] == "hybrid/lstm", "seconds"].isna().all()  # shared run
    assert any(c.startswith("recall[") for c in result.columns)  # synthetic data names its kinds

    # The hybrid rows are exactly what detect(online=True) says about the same frame, and the
    # retrospective row what the default detect() says.
    frame = pd.concat(
        [pd.DataFrame({"customer_id": s.name, "timestamp": s.frame["timestamp"], "cost": s.frame["value"]}) for s in tiny]
    )
    scored = detect(frame, CONFIG, online=True)
    by_detector = result.set_index("detector")
    assert by_detector.loc["hybrid", "flagged_share"] == pytest.approx(scored["is_anomaly"].mean())
    # a component fires where it is in the reasons of a scored step, and its own repeats are
    # suppressed as the hybrid's are
    quiet = quiet_steps(pd.Timedelta(days=1), CONFIG.windows.size, CONFIG)
    fired = 0
    for _, rows in scored.groupby("customer_id"):
        alone = rows["reasons"].str.split(",").apply(lambda r: "residual" in r).to_numpy() & (rows["status"] == "scored").to_numpy()
        fired += int((alone & ~scoring.repeats(alone, quiet)).sum())
    assert by_detector.loc["hybrid/residual", "flagged_share"] == pytest.approx(fired / len(scored))
    hindsight = detect(frame, CONFIG)
    assert by_detector.loc[runner.RETROSPECTIVE, "flagged_share"] == pytest.approx(hindsight["is_anomaly"].mean())

    # A second run reuses every detector's output from the cache: same figures, marked as cached.
    again = runner.evaluate({"tiny": tiny}, CONFIG, cache_dir=tmp_path / "cache")
    figures = [c for c in runner.COLUMNS if c not in ("note",)]
    pd.testing.assert_frame_equal(again[figures], result[figures])
    assert again.loc[again["detector"] == "hybrid", "note"].str.contains("cached result").all()
    # A different configuration is a miss for the hybrid and the notebook baseline alike.
    other = PipelineConfig().merged({"lstm": {"epochs": 2}, "decrease_rule": {"threshold": -0.5}})
    key = cache.cache_key("notebook_lstm", tiny, CONFIG)
    assert cache.cache_key("notebook_lstm", tiny, other) != key
    assert cache.cache_key("notebook_lstm", tiny[:1], CONFIG) != key
    assert cache.cache_key("hybrid", tiny, CONFIG) != key
    # settings detection never reads (explanations, alerts, ...) do not invalidate a result
    unrelated = CONFIG.merged({"explain": {"max_headline_chars": 60}, "output": {"directory": "elsewhere"}})
    assert cache.cache_key("hybrid", tiny, unrelated) == cache.cache_key("hybrid", tiny, CONFIG)
    # and the hybrid's own settings do not invalidate a baseline
    tuned = CONFIG.merged({"hybrid": {"decision_threshold": 1.5}})
    assert cache.cache_key("notebook_lstm", tiny, tuned) == key
    assert cache.cache_key("hybrid", tiny, tuned) != cache.cache_key("hybrid", tiny, CONFIG)

    report = runner.render_markdown(result)
    assert report.startswith("<!-- Generated by")
    assert "## tiny" in report and "| hybrid |" in report and "| baseline/notebook_lstm |" in report
    assert "## Summary (online)" in report and "Online against retrospective (tiny" in report
    # the headline table of the data set holds no retrospective row
    headline = report.split("## tiny")[1].split("Online against retrospective")[0]
    assert RETRO_ROW not in headline and RETRO_ROW in report
    assert "Event recall by incident kind" in report
    assert "`lstm.epochs=2`" in report  # the report says what differed from the defaults


def test_unknown_detector_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown detector"):
        runner.evaluate({}, CONFIG, ["prophet"])


def test_command_writes_the_report_and_skips_absent_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "docs" / "evaluation.md"
    args = ["--datasets", "cloud-monitoring", "--data-root", str(tmp_path / "absent"), "--out", str(out)]
    assert main([*args, "--no-cache"]) == 0
    text = out.read_text(encoding="utf-8")
    assert "## cloud-monitoring" in text and "Skipped: Cloud Monitoring Dataset not found" in text
    assert "# Evaluation" in capsys.readouterr().out  # the table goes to stdout too
    with pytest.raises(SystemExit):
        main(["--datasets", "kaggle"])


def test_run_evaluation_returns_figures_and_notes_skipped_sets(tmp_path: Path) -> None:
    result = runner.run_evaluation(["cloud-monitoring"], True, data_root=tmp_path, echo=False, cache_dir=None)
    assert result.empty and "cloud-monitoring" in result.attrs["skipped"]
    assert math.isfinite(result.attrs["total_seconds"])
