"""Facts about anomalies: merge flagged steps into incidents, measure them, find root causes.

Everything a reader (or Gemini) is told comes from here, computed from the scores and the usage
rows, so every explanation can be traced back to numbers in the data. One incident is one event:
a 3-day spike is reported once with its total cost, not as three separate alarms.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from anomaly_pipelines.core.explain import formatting as fmt
from anomaly_pipelines.core.ids import customer_key
from anomaly_pipelines.core.score_schema import INCIDENT_INPUT_COLUMNS

# Dimensions a root cause can be attributed to, in the order ties are broken.
DIMENSION_COLUMNS = ("service", "region", "sub_account", "charge_category")
SEVERITIES = ("low", "medium", "high", "critical")
DEFAULT_CURRENCY = "USD"

INCIDENT_COLUMNS = [
    "incident_id",
    "customer_id",
    "start",
    "end",
    "peak_timestamp",
    "steps",
    "actual_cost",
    "expected_cost",
    "impact",
    "impact_pct",
    "direction",
    "signals",
    "max_hybrid_score",
    "severity",
    # Not part of the list, but every sentence needs them: the currency of the amounts
    # and the data's step (a "3-step" incident is 3 days or 15 minutes).
    "currency",
    "step_seconds",
]


SIGNAL_LABELS = {
    "residual": "cost far from its usual level for this weekday/time",
    "lstm": "LSTM autoencoder reconstruction error",
    "isolation_forest": "Isolation Forest outlier score",
    "local_outlier_factor": "Local Outlier Factor score",
    "decrease": "sharp drop from the previous step",
    "stuck": "the same value repeated far longer than ever in training (a stuck metric or a stale export)",
}


def _require(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; it has {list(frame.columns)}")


def _utc(values: pd.Series, what: str) -> pd.Series:
    """Timestamps as UTC; the first unparsable row is named so the user can find it."""
    try:
        return pd.to_datetime(values, utc=True)
    except (ValueError, TypeError) as exc:
        for index, raw in values.items():
            try:
                pd.to_datetime(raw, utc=True)
            except (ValueError, TypeError):
                raise ValueError(
                    f"{what}: row {index}, column 'timestamp': cannot parse {str(raw)[:60]!r} as a time"
                ) from exc
        raise


def _numbers(values: pd.Series, what: str, column: str) -> pd.Series:
    out = pd.to_numeric(values, errors="coerce").astype(float)
    bad = out.isna() & values.notna() | np.isinf(out)
    if bad.any():
        index = values.index[bad][0]
        raise ValueError(
            f"{what}: row {index}, column {column!r}: {str(values.loc[index])[:60]!r} is not a finite number"
        )
    return out


def _step_seconds(timestamps: pd.Series) -> float:
    """The series' step: the most common spacing (robust to the odd missing day)."""
    diffs = timestamps.sort_values().diff().dropna()
    diffs = diffs[diffs > pd.Timedelta(0)]
    if diffs.empty:
        return fmt.DAY_SECONDS
    return float(diffs.mode().iloc[0].total_seconds())


def severity_of(
    impact: float, impact_pct: float, thresholds: Sequence[float] = (20.0, 50.0, 100.0)
) -> str:
    """Grade by relative impact: the hybrid score says *whether* something is unusual, but how
    much it matters to a reader is how far the money moved. Without a baseline (expected zero)
    any spend is a new cost line and counts as critical."""
    if not fmt.is_number(impact_pct):
        return "critical" if fmt.is_number(impact) and abs(float(impact)) > 0 else "low"
    size = abs(float(impact_pct))
    grade = sum(size >= t for t in thresholds)
    return SEVERITIES[min(grade, len(SEVERITIES) - 1)]


def find_incidents(
    scores: pd.DataFrame,
    max_gap_steps: int = 1,
    *,
    severity_pct: Sequence[float] = (20.0, 50.0, 100.0),
) -> pd.DataFrame:
    """Merge each customer's anomalous steps into incidents, one row each.

    Two anomalous steps belong to the same incident when at most ``max_gap_steps`` steps lie
    between them (normal or missing steps), so detection that flickers below the threshold for a
    day inside a week-long ramp still reads as one event; 0 merges only back-to-back steps.
    A clear change of direction (above, then below the expectation) starts a new incident.
    Costs are summed over every observed step from start to end; ``steps`` is the span in the
    data's own step; ``signals`` is the union of signals that fired on the anomalous steps.
    """
    if max_gap_steps < 0:
        raise ValueError(f"find_incidents: max_gap_steps must be >= 0, got {max_gap_steps}")
    _require(scores, INCIDENT_INPUT_COLUMNS, "scores")
    if scores.empty:
        return _empty_incidents()
    frame = scores.copy()
    frame["customer_id"] = frame["customer_id"].astype(str)
    frame["timestamp"] = _utc(frame["timestamp"], "scores")
    frame["cost"] = _numbers(frame["cost"], "scores", "cost")
    frame["expected_cost"] = pd.to_numeric(frame["expected_cost"], errors="coerce").astype(float)
    # No expectation means no measurable deviation: count the step at its own cost.
    frame["expected_cost"] = frame["expected_cost"].fillna(frame["cost"])
    frame["is_anomaly"] = frame["is_anomaly"].fillna(False).astype(bool)
    if "reasons" not in frame.columns:
        frame["reasons"] = ""
    rows: list[dict[str, Any]] = []
    for customer_id, group in frame.groupby("customer_id", sort=True):
        if not group["is_anomaly"].any():
            continue
        group = group.sort_values("timestamp").reset_index(drop=True)
        step = _step_seconds(group["timestamp"])
        currency = _currency_of(group)
        for first, last in _runs(group, step, max_gap_steps):
            rows.append(
                _incident_row(
                    str(customer_id), group.iloc[first : last + 1], step, currency, severity_pct
                )
            )
    if not rows:
        return _empty_incidents()
    out = pd.DataFrame(rows, columns=INCIDENT_COLUMNS)
    return out.sort_values(["customer_id", "start"], kind="stable").reset_index(drop=True)


def _empty_incidents() -> pd.DataFrame:
    out = pd.DataFrame({c: pd.Series(dtype=object) for c in INCIDENT_COLUMNS})
    for column in ("start", "end", "peak_timestamp"):
        out[column] = pd.Series(dtype="datetime64[ns, UTC]")
    for column in (
        "actual_cost",
        "expected_cost",
        "impact",
        "impact_pct",
        "max_hybrid_score",
        "step_seconds",
    ):
        out[column] = pd.Series(dtype=float)
    out["steps"] = pd.Series(dtype=int)
    return out


def _currency_of(group: pd.DataFrame) -> str:
    if "currency" in group.columns:
        values = group["currency"].dropna().astype(str)
        if not values.empty:
            return values.iloc[0].upper()
    return DEFAULT_CURRENCY


def _runs(group: pd.DataFrame, step: float, max_gap: int) -> list[tuple[int, int]]:
    """(first, last) row positions of each incident in a time-sorted customer frame.

    A run also ends where the deviation clearly changes sign (a runaway job, then the drop
    back below an expectation it inflated): netted into one incident, a +$900 ramp and a
    -$1,000 afterglow would read as a small drop and hide both."""
    flagged = np.flatnonzero(group["is_anomaly"].to_numpy())
    seconds = (group["timestamp"] - group["timestamp"].iloc[0]).dt.total_seconds().to_numpy()
    signs = _clear_signs(group)
    runs: list[tuple[int, int]] = []
    first = previous = int(flagged[0])
    run_sign = signs[first]
    for position in flagged[1:]:
        between = round((seconds[position] - seconds[previous]) / step) - 1
        flips = signs[position] != 0 and run_sign != 0 and signs[position] != run_sign
        if between > max_gap or flips:
            runs.append((first, previous))
            first = int(position)
            run_sign = signs[position]
        elif run_sign == 0:
            run_sign = signs[position]
        previous = int(position)
    runs.append((first, previous))
    return runs


def _clear_signs(group: pd.DataFrame) -> np.ndarray:
    """+1/-1 where a step is clearly above/below its expectation, 0 where the gap is small (a
    step flagged only by the drop rule or a window model is no evidence of a new direction).
    "Clearly" is 2 residual sigmas when the detector's residual score is at hand, else 10%."""
    gap = (group["cost"] - group["expected_cost"]).to_numpy(dtype=float)
    if "residual_score" in group.columns:
        z = pd.to_numeric(group["residual_score"], errors="coerce").fillna(0.0).to_numpy()
        clear = z >= 2.0
    else:
        clear = np.abs(gap) >= 0.1 * np.abs(group["expected_cost"].to_numpy(dtype=float))
    return np.where(clear, np.sign(gap), 0.0)


def _incident_row(
    customer_id: str, span: pd.DataFrame, step: float, currency: str, severity_pct: Sequence[float]
) -> dict[str, Any]:
    flagged = span[span["is_anomaly"]]
    start, end = span["timestamp"].iloc[0], span["timestamp"].iloc[-1]
    actual = float(span["cost"].sum())
    expected = float(span["expected_cost"].sum())
    impact = actual - expected
    impact_pct = impact / abs(expected) * 100.0 if abs(expected) > 1e-9 else math.nan
    hybrid = pd.to_numeric(flagged["hybrid_score"], errors="coerce").astype(float)
    peak = (
        flagged["timestamp"].iloc[int(np.nanargmax(hybrid.to_numpy()))]
        if hybrid.notna().any()
        else start
    )
    signals = sorted(
        {
            name.strip()
            for text in flagged["reasons"].fillna("").astype(str)
            for name in text.split(",")
            if name.strip()
        }
    )
    return {
        "incident_id": f"{customer_key(customer_id)}-{start:%Y%m%dT%H%M}",
        "customer_id": customer_id,
        "start": start,
        "end": end,
        "peak_timestamp": peak,
        "steps": round((end - start).total_seconds() / step) + 1,
        "actual_cost": actual,
        "expected_cost": expected,
        "impact": impact,
        "impact_pct": impact_pct,
        "direction": "increase" if impact >= 0 else "decrease",
        "signals": ",".join(signals),
        "max_hybrid_score": float(hybrid.max()) if hybrid.notna().any() else math.nan,
        "severity": severity_of(impact, impact_pct, severity_pct),
        "currency": currency,
        "step_seconds": step,
    }


def prepare_dimensions(dimensions: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """Validate the usage rows once and split them by customer, so explaining many incidents
    does not rescan every row per incident."""
    if dimensions is None or dimensions.empty:
        return {}
    _require(dimensions, ("customer_id", "timestamp", "cost"), "dimensions")
    frame = dimensions.copy()
    frame["customer_id"] = frame["customer_id"].astype(str)
    frame["timestamp"] = _utc(frame["timestamp"], "dimensions")
    frame["cost"] = _numbers(frame["cost"], "dimensions", "cost")
    return {str(cid): group for cid, group in frame.groupby("customer_id", sort=False)}


def root_causes(
    incident: pd.Series,
    dimensions: pd.DataFrame | None,
    top_n: int = 3,
    *,
    min_share: float = 0.1,
    cycles: int = 4,
) -> list[dict[str, Any]]:
    """The dimension values that account for most of an incident's deviation, ranked by |impact|.

    Each value gets its own expectation the way the detector builds one: for every step of the
    incident, the median of that value's cost at the same phase (same weekday for daily data,
    same time of day for sub-daily data) over the last ``cycles`` cycles before the incident.
    A flat pre-incident mix would blame the wrong service whenever the mix differs by weekday.
    ``impact`` is the value's actual minus its own expectation and ``share`` that impact as a
    fraction of the incident's impact. The values' expectations are deliberately not forced to
    add up to the detector's: when the detector's expectation is off (say, still inflated by an
    earlier runaway job) no value really moved, and scaling would pin the artefact on the
    biggest service. Shares of one dimension can therefore sum to more than 1 (other values
    moved the other way) or less (part of the deviation is in no single value). A value counts
    when it moved in the incident's direction by at least ``min_share`` of the incident's
    impact. Dimensions with a single value explain nothing and are skipped. Returns ``[]``
    without dimension columns or without usage before the incident.
    """
    if dimensions is None or dimensions.empty or top_n <= 0:
        return []
    columns = [c for c in DIMENSION_COLUMNS if c in dimensions.columns]
    if not columns:
        return []
    _require(dimensions, ("customer_id", "timestamp", "cost"), "dimensions")
    rows = dimensions[dimensions["customer_id"].astype(str) == str(incident["customer_id"])]
    if rows.empty:
        return []
    timestamps = _utc(rows["timestamp"], "dimensions").reset_index(drop=True)
    cost = _numbers(rows["cost"], "dimensions", "cost").reset_index(drop=True)
    start, end = pd.Timestamp(incident["start"]), pd.Timestamp(incident["end"])
    step = float(incident.get("step_seconds", fmt.DAY_SECONDS) or fmt.DAY_SECONDS)
    period = pd.Timedelta(days=7) if step >= fmt.DAY_SECONDS else pd.Timedelta(days=1)
    if not ((timestamps >= start) & (timestamps <= end)).any() or not (timestamps < start).any():
        return []
    incident_impact = float(incident["impact"])
    if not math.isfinite(incident_impact) or abs(incident_impact) < 1e-9:
        return []
    direction = 1.0 if incident_impact > 0 else -1.0
    causes: list[dict[str, Any]] = []
    for column in columns:
        labels = rows[column].astype(object).where(rows[column].notna(), "(none)").astype(str)
        table = (
            pd.DataFrame({"t": timestamps, "v": labels.to_numpy(), "c": cost})
            .pivot_table(index="t", columns="v", values="c", aggfunc="sum", fill_value=0.0)
            .sort_index()
        )
        if table.shape[1] < 2:
            continue
        span = table[(table.index >= start) & (table.index <= end)]
        history = table[table.index < start]
        actual = span.sum()
        expected = _expected_by_value(history, span.index, start, period, cycles)
        impact = actual - expected
        for value in table.columns:
            part = float(impact[value])
            part_share = part / incident_impact
            if part * direction > 0 and part_share >= min_share:
                causes.append(
                    {
                        "dimension": column,
                        "value": str(value),
                        "actual": float(actual[value]),
                        "expected": float(expected[value]),
                        "impact": part,
                        "share": part_share,
                    }
                )
    order = {c: i for i, c in enumerate(DIMENSION_COLUMNS)}
    causes.sort(key=lambda c: (-abs(c["impact"]), order[c["dimension"]], c["value"]))
    return causes[:top_n]


def _expected_by_value(
    history: pd.DataFrame,
    stamps: pd.DatetimeIndex,
    start: pd.Timestamp,
    period: pd.Timedelta,
    cycles: int,
) -> pd.Series:
    """Each column's expected total over ``stamps``: per step the median of the same phase in the
    last ``cycles`` cycles before ``start`` (never inside the incident); the recent mean when a
    phase has fewer than two past cycles."""
    recent = history.iloc[-max(cycles * 7, 7) :].mean()
    total = pd.Series(0.0, index=history.columns)
    for stamp in stamps:
        first = max(1, math.ceil((stamp - start) / period + 1e-9))
        lags = [stamp - k * period for k in range(first, first + cycles)]
        past = history.reindex(lags).dropna(how="all")
        total += past.median() if len(past) >= 2 else recent
    return total


@dataclass(frozen=True)
class IncidentFacts:
    """Everything an explainer may say about one incident, already verified against the data."""

    incident_id: str
    customer_id: str
    start: pd.Timestamp
    end: pd.Timestamp
    peak_timestamp: pd.Timestamp
    steps: int
    step_seconds: float
    actual_cost: float
    expected_cost: float
    impact: float
    impact_pct: float
    direction: str
    signals: tuple[str, ...]
    max_hybrid_score: float
    severity: str
    currency: str = DEFAULT_CURRENCY
    root_causes: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @classmethod
    def from_row(cls, row: pd.Series, causes: Sequence[dict[str, Any]] = ()) -> IncidentFacts:
        signals = tuple(s for s in str(row.get("signals", "") or "").split(",") if s)
        return cls(
            incident_id=str(row["incident_id"]),
            customer_id=str(row["customer_id"]),
            start=pd.Timestamp(row["start"]),
            end=pd.Timestamp(row["end"]),
            peak_timestamp=pd.Timestamp(row["peak_timestamp"]),
            steps=int(row["steps"]),
            step_seconds=float(row.get("step_seconds", fmt.DAY_SECONDS)),
            actual_cost=float(row["actual_cost"]),
            expected_cost=float(row["expected_cost"]),
            impact=float(row["impact"]),
            impact_pct=float(row["impact_pct"]) if fmt.is_number(row["impact_pct"]) else math.nan,
            direction=str(row["direction"]),
            signals=signals,
            max_hybrid_score=float(row["max_hybrid_score"]),
            severity=str(row["severity"]),
            currency=str(row.get("currency", DEFAULT_CURRENCY) or DEFAULT_CURRENCY),
            root_causes=tuple(dict(c) for c in causes),
        )

    def presented(self) -> dict[str, Any]:
        """The facts as a reader sees them, every figure already formatted.

        This is what Gemini receives and what its cache is keyed by: the model is asked to copy
        these strings, and its answer may only contain figures that occur here.
        """
        cur = self.currency
        return {
            "customer": self.customer_id,
            "period": fmt.period(self.start, self.end, self.step_seconds),
            "duration": fmt.duration(self.steps, self.step_seconds),
            "peak": fmt.timestamp(self.peak_timestamp, self.step_seconds),
            "direction": self.direction,
            "severity": self.severity,
            "actual_cost": fmt.money(self.actual_cost, cur),
            "expected_cost": fmt.money(self.expected_cost, cur),
            "impact": fmt.money(self.impact, cur, signed=True),
            "impact_short": fmt.compact_money(self.impact, cur, signed=True),
            "impact_pct": fmt.percent(self.impact_pct),
            "peak_hybrid_score": f"{self.max_hybrid_score:.1f}"
            if fmt.is_number(self.max_hybrid_score)
            else "n/a",
            "signals": [SIGNAL_LABELS.get(s, s) for s in self.signals],
            "root_causes": [
                {
                    "dimension": c["dimension"],
                    "value": c["value"],
                    "actual": fmt.money(c["actual"], cur),
                    "expected": fmt.money(c["expected"], cur),
                    "impact": fmt.money(c["impact"], cur, signed=True),
                    "share_of_change": fmt.share(c["share"]),
                }
                for c in self.root_causes
            ],
        }

    def cache_key(self) -> str:
        """Stable text identifying these facts (same data, same key, across runs)."""
        return json.dumps(self.presented(), sort_keys=True, ensure_ascii=False)

    def raw_numbers(self) -> list[float]:
        """Unformatted figures, so an answer that rounds them differently can still be checked."""
        values = [
            self.actual_cost,
            self.expected_cost,
            self.impact,
            self.impact_pct,
            self.max_hybrid_score,
        ]
        for cause in self.root_causes:
            values += [cause["actual"], cause["expected"], cause["impact"], cause["share"] * 100]
        return [float(v) for v in values if fmt.is_number(v)]
