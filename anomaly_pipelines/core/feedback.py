"""Feedback on incidents: was it real (``accurate``), a false alarm (``not-anomaly``) or known in
advance (``planned``)?

Stored in the operations store with who and when. It acts in three places:

- alerts: ``not-anomaly`` / ``planned`` silence the incident itself and, for
  ``feedback.suppress_days`` after its end, new incidents of the same customer, top root-cause
  dimension value and direction (``suppression_reason``);
- training: ``training_exclusions`` gives the days to keep out of a customer's training history
  (``accurate`` incidents), and ``training_normal_days`` the days a person declared normal;
- evaluation: ``precision_over_time`` is the share of marked incidents marked ``accurate``.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from anomaly_pipelines.core.alerts.store import OperationsStore, now_text
from anomaly_pipelines.core.series import CustomerSeries

LABELS = ("accurate", "not-anomaly", "planned")
SUPPRESSING = ("not-anomaly", "planned")
AUTHOR_ENV = "ANOMALY_PIPELINES_USER"


def _author(author: str | None) -> str:
    if author:
        return author
    if os.environ.get(AUTHOR_ENV):
        return os.environ[AUTHOR_ENV]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def record_feedback(
    store: OperationsStore,
    incident_id: str,
    label: str,
    note: str = "",
    *,
    author: str | None = None,
) -> dict[str, Any]:
    """Store one judgement of ``incident_id`` and return the stored row. The incident must be
    known to the store (it is, once a daily run has seen it), so the label can be tied to its
    customer, direction and root cause; a typo'd id is an error, not a silent row."""
    if label not in LABELS:
        raise ValueError(f"feedback label must be one of {', '.join(LABELS)}, got {label!r}")
    incident = store.incident(incident_id)
    if incident is None:
        raise KeyError(
            f"unknown incident {incident_id!r}: ids are printed in every alert and in "
            "`anomaly-pipelines alerts list`"
        )
    row = {
        "incident_id": incident_id,
        "customer_id": incident["customer_id"],
        "label": label,
        "note": note,
        "author": _author(author),
        "created_at": now_text(),
        "incident_start": incident["start"],
        "incident_end": incident["end"],
        "direction": incident["direction"],
        "dimension": incident["dimension"],
        "dimension_value": incident["dimension_value"],
    }
    row["id"] = store.add_feedback(row)
    return row


def give_feedback(
    incident_id: str,
    label: str,
    note: str = "",
    *,
    config: Any = None,
    author: str | None = None,
) -> dict[str, Any]:
    """``anomaly-pipelines feedback`` from Python: ``config`` is anything ``as_config`` takes
    (a PipelineConfig, a dict of overrides, a YAML path; None: the defaults)."""
    from anomaly_pipelines.core.config import as_config

    store = OperationsStore.for_config(as_config(config))
    return record_feedback(store, incident_id, label, note, author=author)


def latest_labels(feedback: pd.DataFrame) -> pd.DataFrame:
    """One row per incident: its most recent judgement (people change their minds)."""
    if feedback.empty:
        return feedback
    return feedback.sort_values("id").groupby("incident_id", sort=False).tail(1)


def suppression_reason(
    incident: Mapping[str, Any], feedback: pd.DataFrame, suppress_days: int
) -> str:
    """Why alerts about ``incident`` (a store row) are silenced, or '' when they are not."""
    if feedback.empty:
        return ""
    latest = latest_labels(feedback)
    same = latest[latest["customer_id"] == str(incident["customer_id"])]
    own = same[same["incident_id"] == incident["incident_id"]]
    if len(own):
        label = str(own["label"].iloc[-1])
        return f"marked {label}" if label in SUPPRESSING else ""
    start = pd.Timestamp(incident["start"])
    for _, fb in same[same["label"].isin(SUPPRESSING)].iterrows():
        if fb["direction"] != incident["direction"]:
            continue
        if (fb["dimension"], fb["dimension_value"]) != (
            incident["dimension"],
            incident["dimension_value"],
        ):
            continue
        if not fb["incident_start"] or not fb["incident_end"]:
            continue
        window_end = pd.Timestamp(fb["incident_end"]) + pd.Timedelta(days=suppress_days)
        if pd.Timestamp(fb["incident_start"]) < start <= window_end:
            what = (
                f"{fb['dimension']}={fb['dimension_value']}" if fb["dimension"] else "the customer"
            )
            return (
                f"{fb['label']} feedback on {fb['incident_id']} ({what}, {fb['direction']}) "
                f"silences repeats until {window_end:%Y-%m-%d}"
            )
    return ""


def _days(store_incidents: pd.DataFrame, ids: set[str]) -> dict[str, list[pd.Timestamp]]:
    out: dict[str, list[pd.Timestamp]] = {}
    rows = store_incidents[store_incidents["incident_id"].isin(ids)]
    for _, row in rows.iterrows():
        days = pd.date_range(pd.Timestamp(row["start"]), pd.Timestamp(row["end"]), freq="D")
        out.setdefault(str(row["customer_id"]), []).extend(days)
    return out


def training_exclusions(store: OperationsStore) -> dict[str, list[pd.Timestamp]]:
    """Customer id -> timestamps of incidents marked ``accurate``: real anomalies, which must
    not become part of what the model learns as normal."""
    latest = latest_labels(store.feedback())
    if latest.empty:
        return {}
    ids = set(latest.loc[latest["label"] == "accurate", "incident_id"])
    return _days(store.incidents(), ids)


def training_normal_days(store: OperationsStore) -> dict[str, list[pd.Timestamp]]:
    """Customer id -> timestamps of incidents marked ``not-anomaly`` or ``planned``: days a
    person declared normal, which history cleaning must keep."""
    latest = latest_labels(store.feedback())
    if latest.empty:
        return {}
    ids = set(latest.loc[latest["label"].isin(SUPPRESSING), "incident_id"])
    return _days(store.incidents(), ids)


def _on_days(series: CustomerSeries, days: list[pd.Timestamp] | None) -> np.ndarray:
    """The steps of ``series`` that fall on one of ``days`` (calendar days)."""
    if not days:
        return np.zeros(len(series), dtype=bool)
    return np.asarray(series.timestamps.normalize().isin(pd.DatetimeIndex(days).normalize()))


def exclude_from_training(
    series: list[CustomerSeries], store: OperationsStore
) -> tuple[list[CustomerSeries], dict[str, int]]:
    """``series`` with the steps of incidents marked ``accurate`` replaced by the median of the
    same phase one to four weeks earlier (steps not excluded themselves) and marked ``filled``,
    so training learns the customer's normal level there, not the incident. Returns the new
    series and, per customer, how many steps were replaced. Apply before fitting, never to
    what is scored."""
    exclusions = training_exclusions(store)
    if not exclusions:
        return series, {}
    out: list[CustomerSeries] = []
    replaced: dict[str, int] = {}
    for s in series:
        hit = _on_days(s, exclusions.get(s.customer_id))
        if not hit.any():
            out.append(s)
            continue
        stamps = s.timestamps
        values = s.values.astype(float).copy()
        position = {t: i for i, t in enumerate(stamps)}
        for i in np.flatnonzero(hit):
            past = [
                values[j]
                for k in range(1, 5)
                if (j := position.get(stamps[i] - pd.Timedelta(days=7 * k))) is not None
                and not hit[j]
            ]
            if past:
                values[i] = float(np.median(past))
        filled = s.filled.copy() | hit
        replaced[s.customer_id] = int(hit.sum())
        out.append(dataclasses.replace(s, values=values, filled=filled))
    return out, replaced


def mark_declared_normal(
    series: list[CustomerSeries], store: OperationsStore
) -> tuple[list[CustomerSeries], dict[str, int]]:
    """``series`` with the steps of incidents marked ``not-anomaly`` or ``planned`` set in
    ``declared_normal``, so history cleaning keeps them and the expectation learns from them (a
    planned migration becomes the new normal at once instead of being held out as an
    incident). Apply before fitting and before scoring. Returns the new series and, per
    customer, how many steps were marked."""
    normal = training_normal_days(store)
    if not normal:
        return series, {}
    out: list[CustomerSeries] = []
    marked: dict[str, int] = {}
    for s in series:
        hit = _on_days(s, normal.get(s.customer_id))
        if not hit.any():
            out.append(s)
            continue
        previous = s.declared_normal if s.declared_normal is not None else np.zeros(len(s), dtype=bool)
        marked[s.customer_id] = int(hit.sum())
        out.append(dataclasses.replace(s, declared_normal=previous | hit))
    return out, marked


def precision_over_time(store: OperationsStore, freq: str = "W") -> pd.DataFrame:
    """Per period of the incidents' start: incidents marked, marked accurate, and precision
    (accurate / marked), from the latest judgement of each incident."""
    latest = latest_labels(store.feedback())
    columns = ["period", "marked", "accurate", "precision"]
    if latest.empty:
        return pd.DataFrame(columns=columns)
    start = pd.to_datetime(latest["incident_start"], utc=True)
    grouped = latest.assign(
        period=start.dt.tz_localize(None).dt.to_period(freq).astype(str),
        is_accurate=latest["label"] == "accurate",
    ).groupby("period")
    out = grouped.agg(marked=("label", "size"), accurate=("is_accurate", "sum")).reset_index()
    out["precision"] = out["accurate"] / out["marked"]
    return out[columns]
