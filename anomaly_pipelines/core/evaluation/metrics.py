"""Detection metrics: event-level, point-wise, the NAB score and AUC-PR.

Point-wise precision/recall alone rewards a detector for flagging every day of a two-week ramp and
punishes one that raises a single, early alert, which is what an on-call engineer actually wants.
So the headline numbers are event-level (was each incident noticed, how many alerts were noise),
point-wise figures are kept for comparison with the literature, the NAB score adds a reward for
*early* detection, and AUC-PR of the continuous score measures ranking quality independently of
the decision threshold.

All functions take positional arrays of one series (labels and flags as booleans, one per step).
Counts add up across series, so a data set's figure is computed from the summed counts (micro
average), as NAB does for its corpus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score

Segment = tuple[int, int]  # inclusive (first, last) positions


def segments(mask: ArrayLike) -> list[Segment]:
    """Runs of consecutive True values as inclusive (first, last) positions.

    Both labelled events and detections are segments: a detector that flags three days in a row
    raised one alert, not three.
    """
    values = np.asarray(mask, dtype=bool)
    if values.size == 0:
        return []
    padded = np.concatenate([[False], values, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


@dataclass(frozen=True)
class EventCounts:
    """Event-level outcome: ``found`` labelled events were overlapped by a detection, and
    ``false_alarms`` detected segments overlapped no labelled event."""

    events: int = 0
    found: int = 0
    detections: int = 0
    false_alarms: int = 0

    def __add__(self, other: EventCounts) -> EventCounts:
        return EventCounts(
            self.events + other.events,
            self.found + other.found,
            self.detections + other.detections,
            self.false_alarms + other.false_alarms,
        )

    @property
    def missed(self) -> int:
        return self.events - self.found

    @property
    def precision(self) -> float:
        """Found events over found events plus false alarms: several alerts inside one incident
        are one true positive, not several, so fragmenting a detection is not rewarded."""
        return _ratio(self.found, self.found + self.false_alarms)

    @property
    def recall(self) -> float:
        return _ratio(self.found, self.events)

    @property
    def f1(self) -> float:
        """``2TP / (2TP + FP + FN)``: the harmonic mean of precision and recall where both exist,
        and still defined (0) when a detector raised nothing on a series with incidents."""
        return _ratio(2 * self.found, 2 * self.found + self.false_alarms + self.missed)


def event_counts(labels: ArrayLike, flags: ArrayLike, tolerance: int = 0) -> EventCounts:
    """Match detected segments to labelled events.

    An event counts as found when any flagged step lies within it, widened by ``tolerance`` steps
    on each side (an alert the day after a one-day spike still points at it). A detected segment
    that touches no widened event is a false alarm.
    """
    truth = np.asarray(labels, dtype=bool)
    detected = np.asarray(flags, dtype=bool)
    if truth.shape != detected.shape:
        raise ValueError(f"labels and flags differ in length: {truth.shape} vs {detected.shape}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 steps, got {tolerance}")
    n = len(truth)
    events = segments(truth)
    detections = segments(detected)
    # Prefix sums answer "any flagged / labelled step in [a, b]" in O(1).
    flag_sum = np.concatenate([[0], np.cumsum(detected)])
    widened = np.zeros(n, dtype=bool)
    found = 0
    for first, last in events:
        a, b = max(first - tolerance, 0), min(last + tolerance, n - 1)
        widened[a : b + 1] = True
        if flag_sum[b + 1] - flag_sum[a] > 0:
            found += 1
    label_sum = np.concatenate([[0], np.cumsum(widened)])
    false_alarms = sum(1 for first, last in detections if label_sum[last + 1] - label_sum[first] == 0)
    return EventCounts(len(events), found, len(detections), false_alarms)


@dataclass(frozen=True)
class PointCounts:
    """Step-by-step confusion counts."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: PointCounts) -> PointCounts:
        return PointCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)


def point_counts(labels: ArrayLike, flags: ArrayLike) -> PointCounts:
    truth = np.asarray(labels, dtype=bool)
    detected = np.asarray(flags, dtype=bool)
    if truth.shape != detected.shape:
        raise ValueError(f"labels and flags differ in length: {truth.shape} vs {detected.shape}")
    return PointCounts(
        tp=int(np.sum(truth & detected)),
        fp=int(np.sum(~truth & detected)),
        fn=int(np.sum(truth & ~detected)),
        tn=int(np.sum(~truth & ~detected)),
    )


# --- NAB -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NabProfile:
    """Weights of the NAB cost matrix; ``STANDARD`` is NAB's "standard" application profile."""

    tp: float = 1.0
    fp: float = 0.11
    fn: float = 1.0


STANDARD = NabProfile()
PROBATION_FRACTION = 0.15
WINDOW_FRACTION = 0.10


@dataclass(frozen=True)
class NabScore:
    """Raw NAB score and the raw scores of the null (never alerts) and perfect (alerts at the
    first step of every window, nothing else) detectors on the same windows. Raw scores of
    several series add up; the normalised score is computed from the sums, as NAB does."""

    raw: float = 0.0
    null: float = 0.0
    perfect: float = 0.0

    def __add__(self, other: NabScore) -> NabScore:
        return NabScore(self.raw + other.raw, self.null + other.null, self.perfect + other.perfect)

    @property
    def normalised(self) -> float:
        """100 for the perfect detector, 0 for the null detector, negative when worse than
        staying silent. NaN when there is no window to score against."""
        span = self.perfect - self.null
        return 100.0 * (self.raw - self.null) / span if span > 0 else math.nan


def scaled_sigmoid(position: float) -> float:
    """NAB's reward curve: ~1 at the left edge of a window (position -1), 0 at its right edge,
    towards -1 for false positives well after it (-1 from three window widths on)."""
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probation_length(n: int, fraction: float = PROBATION_FRACTION) -> int:
    """Steps at the start of a series that NAB ignores (detectors are still learning):
    15% of the series, at most 750 steps."""
    return int(min(math.floor(fraction * n), fraction * 5000))


def merge_windows(windows: list[Segment]) -> list[Segment]:
    merged: list[Segment] = []
    for first, last in sorted(windows):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def nab_windows(
    labels: ArrayLike, window_fraction: float = WINDOW_FRACTION, probation_fraction: float = PROBATION_FRACTION
) -> list[Segment]:
    """NAB's labelling rule applied to labelled events.

    NAB centres a window of ``int(10% of the series / number of anomalies)`` steps on each
    labelled point. Our events are intervals, so each event is widened by half that length on
    both sides (identical to NAB for one-step events). As in NAB, overlapping windows are merged
    and a first window that starts inside the probationary period is dropped.
    """
    truth = np.asarray(labels, dtype=bool)
    n = len(truth)
    events = segments(truth)
    if not events:
        return []
    half = int(window_fraction * n / len(events)) // 2
    windows = merge_windows([(max(first - half, 0), min(last + half, n - 1)) for first, last in events])
    if windows and windows[0][0] < probation_length(n, probation_fraction):
        windows = windows[1:]
    return windows


def nab_score(
    flags: ArrayLike,
    windows: list[Segment],
    profile: NabProfile = STANDARD,
    probation_fraction: float = PROBATION_FRACTION,
) -> NabScore:
    """NAB score of binary detections on one series (NAB's ``Sweeper`` at a fixed threshold).

    Inside a window only the best (earliest) detection counts, worth ``A_TP`` at the left edge
    and decaying along a scaled sigmoid to 0 at the right edge; a window without a detection
    costs ``A_FN``. A detection outside every window costs ``A_FP`` times the sigmoid of its
    distance past the previous window (in window widths), or the full ``A_FP`` when no window
    precedes it. Steps in the probationary period are ignored.
    """
    detected = np.asarray(flags, dtype=bool)
    n = len(detected)
    probation = probation_length(n, probation_fraction)
    windows = merge_windows([(max(int(a), 0), min(int(b), n - 1)) for a, b in windows if b >= a])
    scored = [w for w in windows if w[1] >= probation]
    max_tp = scaled_sigmoid(-1.0)
    window_scores = {w: -profile.fn for w in scored}
    fp_total = 0.0
    starts = np.array([w[0] for w in windows], dtype=int)
    for i in np.flatnonzero(detected):
        if i < probation:
            continue
        k = int(np.searchsorted(starts, i, side="right")) - 1  # last window starting at or before i
        if k >= 0 and i <= windows[k][1]:
            first, last = windows[k]
            width = last - first + 1
            score = scaled_sigmoid(-(last - i + 1) / width) * profile.tp / max_tp
            window_scores[windows[k]] = max(window_scores[windows[k]], score)
        elif k >= 0:
            first, last = windows[k]
            width = last - first + 1
            fp_total += scaled_sigmoid(abs(last - i) / max(width - 1, 1)) * profile.fp
        else:
            fp_total += -1.0 * profile.fp
    count = len(scored)
    return NabScore(
        raw=sum(window_scores.values()) + fp_total,
        null=-profile.fn * count,
        perfect=profile.tp * count,
    )


# --- ranking -------------------------------------------------------------------------------------


def auc_pr(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the precision-recall curve as average precision (no interpolation).

    Missing scores (steps a detector cannot score, e.g. before its first full window) rank
    below every real score. NaN when there is no labelled step.
    """
    truth = np.asarray(labels, dtype=bool)
    values = np.asarray(scores, dtype=float)
    if truth.shape != values.shape:
        raise ValueError(f"labels and scores differ in length: {truth.shape} vs {values.shape}")
    if not truth.any():
        return math.nan
    finite = np.isfinite(values)
    if finite.any():
        low, high = float(values[finite].min()), float(values[finite].max())
    else:
        low = high = 0.0
    values = np.where(np.isnan(values), low - 1.0, values)
    values = np.where(np.isposinf(values), high + 1.0, values)
    values = np.where(np.isneginf(values), low - 1.0, values)
    return float(average_precision_score(truth, values))
