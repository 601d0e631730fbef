"""Every metric on small cases worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anomaly_pipelines.core.evaluation import metrics

# positions:   0  1  2  3  4  5  6  7  8  9
LABELS = [0, 1, 1, 0, 0, 0, 1, 0, 0, 0]  # events (1, 2) and (6, 6)
FLAGS = [0, 0, 1, 1, 0, 0, 0, 1, 0, 1]  # detections (2, 3), (7, 7), (9, 9)


def test_segments_are_inclusive_runs() -> None:
    assert metrics.segments(LABELS) == [(1, 2), (6, 6)]
    assert metrics.segments(FLAGS) == [(2, 3), (7, 7), (9, 9)]
    assert metrics.segments([1, 1, 1]) == [(0, 2)]
    assert metrics.segments([]) == []
    assert metrics.segments([0, 0]) == []


def test_event_scores_without_tolerance() -> None:
    # Event (1, 2) is overlapped by detection (2, 3); event (6, 6) by nothing.
    # Detection (2, 3) hits an event; (7, 7) and (9, 9) hit none: two false alarms.
    counts = metrics.event_counts(LABELS, FLAGS)
    assert (counts.events, counts.found, counts.detections, counts.false_alarms) == (2, 1, 3, 2)
    assert counts.precision == pytest.approx(1 / 3)  # 1 found / (1 found + 2 false alarms)
    assert counts.recall == pytest.approx(1 / 2)
    # 2TP / (2TP + FP + FN) = 2 / (2 + 2 + 1) = 0.4 = harmonic mean of 1/3 and 1/2
    assert counts.f1 == pytest.approx(0.4)


def test_event_scores_with_tolerance() -> None:
    # With one step of tolerance event (6, 6) becomes (5, 7): detection (7, 7) now finds it and
    # is no longer a false alarm; (9, 9) still is (event (1, 2) widens only to (0, 3)).
    counts = metrics.event_counts(LABELS, FLAGS, tolerance=1)
    assert (counts.found, counts.false_alarms) == (2, 1)
    assert counts.precision == pytest.approx(2 / 3)
    assert counts.recall == pytest.approx(1.0)
    assert counts.f1 == pytest.approx(4 / 5)  # 2*2 / (2*2 + 1 + 0)
    # Three steps reach position 9 from event (6, 6): no false alarm remains.
    assert metrics.event_counts(LABELS, FLAGS, tolerance=3).false_alarms == 0


def test_event_counts_add_up_across_series() -> None:
    total = metrics.event_counts(LABELS, FLAGS) + metrics.event_counts([0, 1, 0], [0, 1, 0])
    assert (total.events, total.found, total.false_alarms) == (3, 2, 2)
    assert total.recall == pytest.approx(2 / 3)


def test_event_edge_cases() -> None:
    silent = metrics.event_counts([0, 1, 0], [0, 0, 0])
    assert math.isnan(silent.precision)  # no detection: precision undefined
    assert silent.recall == 0.0 and silent.f1 == 0.0
    quiet = metrics.event_counts([0, 0, 0], [0, 0, 0])
    assert math.isnan(quiet.recall) and math.isnan(quiet.f1)
    noisy = metrics.event_counts([0, 0, 0], [1, 0, 1])
    assert noisy.precision == 0.0 and noisy.false_alarms == 2
    with pytest.raises(ValueError, match="differ in length"):
        metrics.event_counts([0, 1], [0])
    with pytest.raises(ValueError, match="tolerance"):
        metrics.event_counts([0, 1], [0, 1], tolerance=-1)


def test_point_precision_recall() -> None:
    # tp: position 2; fp: 3, 7, 9; fn: 1, 6; tn: the other 4.
    counts = metrics.point_counts(LABELS, FLAGS)
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (1, 3, 2, 4)
    assert counts.precision == pytest.approx(1 / 4)
    assert counts.recall == pytest.approx(1 / 3)


def test_scaled_sigmoid_matches_nab_reference_points() -> None:
    # NAB documents: -1 -> 2*sigmoid(5)-1 = 0.98661, -0.5 -> 0.84828, 0 -> 0, 1 -> -0.98661.
    assert metrics.scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert metrics.scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert metrics.scaled_sigmoid(0.0) == pytest.approx(0.0)
    assert metrics.scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert metrics.scaled_sigmoid(3.0) == -1.0


def test_probation_length() -> None:
    assert metrics.probation_length(20) == 3  # floor(0.15 * 20)
    assert metrics.probation_length(100_000) == 750  # capped at 0.15 * 5000


def test_nab_score_by_hand() -> None:
    # 20 steps, probation floor(0.15 * 20) = 3 steps, one window (8, 11) of width 4.
    flags = np.zeros(20, dtype=bool)
    flags[[1, 5, 9, 14]] = True
    # step 1: inside the probation period, ignored.
    # step 5: no window before it -> full false positive: -A_FP = -0.11.
    # step 9: in the window at relative position -(11 - 9 + 1) / 4 = -0.75:
    #   2 / (1 + e^-3.75) - 1 = 0.954047, divided by the maximum 0.986614 -> 0.966991 (x A_TP=1).
    # step 14: |11 - 14| / (4 - 1) = 1.0 past the window: 2 / (1 + e^5) - 1 = -0.986614,
    #   x A_FP -> -0.108528.
    # raw = 0.966991 - 0.11 - 0.108528 = 0.748463; null = -1 (one missed window), perfect = +1.
    score = metrics.nab_score(flags, [(8, 11)])
    assert score.raw == pytest.approx(0.748463, abs=1e-5)
    assert (score.null, score.perfect) == (-1.0, 1.0)
    # normalised = 100 * (0.748463 + 1) / (1 + 1) = 87.42
    assert score.normalised == pytest.approx(87.423, abs=1e-3)


def test_nab_null_and_perfect_detectors_score_0_and_100() -> None:
    none = np.zeros(20, dtype=bool)
    assert metrics.nab_score(none, [(8, 11)]).normalised == pytest.approx(0.0)
    first = none.copy()
    first[8] = True
    assert metrics.nab_score(first, [(8, 11)]).normalised == pytest.approx(100.0)
    # Only the best detection in a window counts: a later second one changes nothing.
    both = first.copy()
    both[10] = True
    assert metrics.nab_score(both, [(8, 11)]).normalised == pytest.approx(100.0)
    # No windows at all: nothing to normalise against.
    assert math.isnan(metrics.nab_score(first, []).normalised)


def test_nab_scores_add_up_before_normalising() -> None:
    first = np.zeros(20, dtype=bool)
    first[8] = True
    total = metrics.nab_score(first, [(8, 11)]) + metrics.nab_score(np.zeros(20, dtype=bool), [(8, 11)])
    # raw 1 + (-1) = 0; null -2; perfect 2 -> 100 * 2 / 4 = 50
    assert total.normalised == pytest.approx(50.0)


def test_nab_windows_follow_nab_labelling_rule() -> None:
    labels = np.zeros(100, dtype=bool)
    labels[50] = True
    labels[80:82] = True
    # two events: window length int(0.10 * 100 / 2) = 5, half of it 2 steps on each side
    assert metrics.nab_windows(labels) == [(48, 52), (78, 83)]
    early = np.zeros(100, dtype=bool)
    early[5] = True
    # one event: length 10, window (0, 10) starts inside the 15-step probation: dropped, as NAB does
    assert metrics.nab_windows(early) == []
    close = np.zeros(100, dtype=bool)
    close[[40, 43]] = True  # windows (38, 42) and (41, 45) overlap and merge
    assert metrics.nab_windows(close) == [(38, 45)]


def test_auc_pr_by_hand() -> None:
    # Ranked by score: pos (P=1, R=1/2), neg, pos (P=2/3, R=1), neg.
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert metrics.auc_pr([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)
    # A missing score ranks below every real score.
    assert metrics.auc_pr([0, 1, 0], [np.nan, 0.5, 0.2]) == pytest.approx(1.0)
    assert metrics.auc_pr([1, 0, 0], [np.nan, 0.5, 0.2]) == pytest.approx(1 / 3)
    assert math.isnan(metrics.auc_pr([0, 0], [0.1, 0.2]))
