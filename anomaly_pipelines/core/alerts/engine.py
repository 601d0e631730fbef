"""The daily alert pass: incidents in, one alert per incident and subscription out.

``process_day`` is called once per scored day with the incidents of the recent daily scores
(``core.explain.explain_incidents`` over the last ``alerts.lookback_days`` days). For every
subscription whose filters an incident passes it records, under a stable key:

- ``opened`` the first time (with headline, impact, root causes, plot, explanation, id),
- ``update`` on each later day the incident grows ("day 3, +$1.2K so far"),
- ``ended`` once, when no anomaly followed within ``explain.max_gap_steps`` steps,

plus ``no_data`` when a customer's data stops arriving and ``missing_file`` for a day without
data. Keys make re-running a day a no-op. Immediate subscriptions are sent right away, digest
subscriptions collect rows until their digest is due. Delivery never raises: failures are
retried with backoff, recorded, and tried again by later runs.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from anomaly_pipelines.core.alerts import channels
from anomaly_pipelines.core.alerts.store import OperationsStore, now_text
from anomaly_pipelines.core.config import AlertSubscriptionConfig, PipelineConfig
from anomaly_pipelines.core.explain import formatting as fmt
from anomaly_pipelines.core.explain.incidents import SEVERITIES, IncidentFacts
from anomaly_pipelines.core.ids import customer_key

logger = logging.getLogger(__name__)

RETRY_STATUSES = ("pending", "failed")
SENDING_TIMEOUT_MINUTES = 30


@dataclass
class AlertRunSummary:
    """What one daily pass did; the Dagster asset shows it as metadata."""

    as_of: str
    incidents: int = 0
    open_incidents: int = 0
    new_notices: int = 0
    sent: int = 0
    failed: int = 0
    suppressed: int = 0
    queued: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of,
            "incidents": self.incidents,
            "open_incidents": self.open_incidents,
            "new_notices": self.new_notices,
            "sent": self.sent,
            "failed": self.failed,
            "suppressed": self.suppressed,
            "queued": self.queued,
            **{f"notices_{k}": v for k, v in sorted(self.by_kind.items())},
        }


# -- filters ---------------------------------------------------------------------------------


def customer_matches(sub: AlertSubscriptionConfig, customer_id: str) -> bool:
    return any(
        fnmatch.fnmatchcase(str(customer_id), pattern)
        or fnmatch.fnmatchcase(customer_key(str(customer_id)), pattern)
        for pattern in sub.customers
    )


def incident_matches(sub: AlertSubscriptionConfig, incident: Mapping[str, Any]) -> bool:
    """Customer, minimum severity and the impact thresholds (``threshold_mode`` all / any)."""
    if not customer_matches(sub, str(incident["customer_id"])):
        return False
    if SEVERITIES.index(str(incident["severity"])) < SEVERITIES.index(sub.min_severity):
        return False
    impact = abs(float(incident["impact"]))
    pct = incident.get("impact_pct")
    # No baseline (expected 0) means any spend is new: infinitely large in relative terms.
    pct_abs = abs(float(pct)) if fmt.is_number(pct) else math.inf
    checks = [impact >= sub.min_impact, pct_abs >= sub.min_impact_pct]
    return all(checks) if sub.threshold_mode == "all" else any(checks)


# -- messages --------------------------------------------------------------------------------


def _causes(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = row.get("root_causes", "[]")
    if isinstance(raw, str):
        return list(json.loads(raw or "[]"))
    return list(raw or [])


def incident_message(
    kind: str,
    row: Mapping[str, Any],
    *,
    plot: str | None = None,
    as_of: str = "",
) -> dict[str, Any]:
    """The message of one incident notice (``opened`` / ``update`` / ``ended``), every figure
    formatted the way the report shows it."""
    facts = IncidentFacts.from_row(pd.Series(dict(row)), _causes(row))
    shown = facts.presented()
    cid = facts.customer_id
    impact_text = f"{shown['impact']} ({shown['impact_pct']})"
    duration = shown["duration"]
    unit_steps = f"{facts.steps}"
    if kind == "opened":
        subject = f"[{facts.severity}] {cid}: {row.get('headline') or shown['impact_short']}"
        status_line = f"new incident, {duration} so far"
    elif kind == "update":
        subject = f"[{facts.severity}] {cid}: day {unit_steps}, {shown['impact_short']} so far"
        status_line = f"ongoing, {duration} so far"
    else:
        subject = f"Ended: {cid}: {duration}, {shown['impact_short']} in total"
        status_line = f"ended after {duration}"
    return {
        "kind": kind,
        "subject": fmt.shorten(subject, 150),
        "incident_id": facts.incident_id,
        "customer_id": cid,
        "as_of": as_of,
        "headline": str(row.get("headline", "")),
        "status_line": status_line,
        "impact": facts.impact,
        "impact_pct": facts.impact_pct if fmt.is_number(facts.impact_pct) else None,
        "currency": facts.currency,
        "impact_text": impact_text,
        "period": shown["period"],
        "severity": facts.severity,
        "direction": facts.direction,
        "steps": facts.steps,
        "root_causes": [
            f"{c['dimension']}={c['value']}: {c['impact']} ({c['share_of_change']} of the change)"
            for c in shown["root_causes"]
        ],
        "detail": str(row.get("detail", "")),
        "explainer": str(row.get("explainer", "")),
        "plot": plot or "",
    }


def no_data_message(customer_id: str, last_seen: pd.Timestamp, as_of: str) -> dict[str, Any]:
    day = pd.Timestamp(last_seen).strftime("%Y-%m-%d")
    return {
        "kind": "no_data",
        "subject": f"No data: {customer_id} has no usage after {day} (scored day {as_of})",
        "customer_id": str(customer_id),
        "as_of": as_of,
        "status_line": f"newest data {day}",
        "detail": "The customer's daily usage stopped arriving: check the billing export.",
    }


def missing_file_message(as_of: str) -> dict[str, Any]:
    return {
        "kind": "missing_file",
        "subject": f"No data: no usage arrived for {as_of}",
        "as_of": as_of,
        "detail": "The day's billing file is missing or empty: every customer is scored on "
        "older data until it arrives.",
    }


def sample_message() -> dict[str, Any]:
    """What ``alerts test`` sends: a realistic incident message, marked as a test."""
    start = pd.Timestamp("2026-01-05", tz="UTC")
    row = {
        "incident_id": "sample-customer-20260105T0000",
        "customer_id": "sample-customer",
        "start": start,
        "end": start + pd.Timedelta(days=2),
        "peak_timestamp": start + pd.Timedelta(days=1),
        "steps": 3,
        "step_seconds": float(fmt.DAY_SECONDS),
        "actual_cost": 4_740.0,
        "expected_cost": 3_500.0,
        "impact": 1_240.0,
        "impact_pct": 1_240.0 / 3_500.0 * 100,
        "direction": "increase",
        "signals": "residual,lstm",
        "max_hybrid_score": 2.4,
        "severity": "medium",
        "currency": "USD",
        "root_causes": json.dumps(
            [
                {
                    "dimension": "service",
                    "value": "Compute",
                    "actual": 3_000.0,
                    "expected": 1_900.0,
                    "impact": 1_100.0,
                    "share": 1_100.0 / 1_240.0,
                }
            ]
        ),
        "headline": "TEST: sample-customer spend +35% for 3 days",
        "detail": "This is a test message from `anomaly-pipelines alerts test`.",
        "explainer": "offline",
    }
    message = incident_message("opened", row, as_of="test")
    message["kind"] = "test"
    message["subject"] = "TEST " + message["subject"]
    return message


# -- the daily pass --------------------------------------------------------------------------


def _day(value: Any) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def continue_cut_incidents(
    incidents: pd.DataFrame,
    scores: pd.DataFrame,
    window_start: pd.Timestamp,
    store: OperationsStore,
    max_gap: int,
) -> pd.DataFrame:
    """``incidents`` (of ``scores``, the daily scores from ``window_start`` on: the last
    ``alerts.lookback_days``) without the ones the window cut short.

    The window moves on a day per run. An incident that began before it but still reaches into
    it starts on the window's first step, so its id (customer and start) would be a new one each
    day and each would be alerted as a new incident, opened and at once ended. Such a row is the
    continuation of the stored incident of its customer it overlaps: it is dropped when that one
    has ended (its notices went out), else it takes that incident's id and start, so the updates
    and the end notice of an incident longer than the window keep the id people already have
    (its figures then count the window's steps only). A row overlapping no stored incident is
    kept: nobody saw it yet."""
    if incidents.empty or scores.empty:
        return incidents
    firsts = scores.groupby(scores["customer_id"].astype(str))["timestamp"].min()
    cut = {c: pd.Timestamp(t) for c, t in firsts.items() if pd.Timestamp(t) <= window_start}
    stored = store.incidents() if cut else pd.DataFrame()
    if stored.empty:
        return incidents
    stored_start = pd.to_datetime(stored["start"], utc=True)
    stored_end = pd.to_datetime(stored["end"], utc=True)
    out = incidents.copy()
    dropped = []
    for index, row in incidents.iterrows():
        cid, start = str(row["customer_id"]), pd.Timestamp(row["start"])
        if cid not in cut or start != cut[cid]:
            continue
        step = pd.Timedelta(seconds=float(row.get("step_seconds") or fmt.DAY_SECONDS))
        overlapped = stored[
            (stored["customer_id"] == cid)
            & (stored_start < start)
            & (stored_end >= start - (max_gap + 1) * step)
        ]
        if overlapped.empty:
            continue
        earlier = overlapped.iloc[-1]
        if earlier["status"] == "ended":
            dropped.append(index)
            continue
        began = pd.Timestamp(earlier["start"])
        out.loc[index, "incident_id"] = earlier["incident_id"]
        out.loc[index, "start"] = began
        out.loc[index, "steps"] = round((pd.Timestamp(row["end"]) - began) / step) + 1
    return out.drop(index=dropped).reset_index(drop=True)


def incident_status(row: Mapping[str, Any], last_scored: pd.Timestamp | None, max_gap: int) -> str:
    """``ended`` once the customer has been scored more than ``max_gap`` steps past the
    incident's last anomalous step without another one (the gap that would still merge)."""
    if last_scored is None:
        return "open"
    step = float(row.get("step_seconds", fmt.DAY_SECONDS) or fmt.DAY_SECONDS)
    behind = (pd.Timestamp(last_scored) - pd.Timestamp(row["end"])).total_seconds() / step
    return "ended" if round(behind) > max_gap else "open"


def _incident_record(
    row: Mapping[str, Any], status: str, as_of: str, causes: list[dict[str, Any]]
) -> dict[str, Any]:
    top = causes[0] if causes else {}
    pct = row.get("impact_pct")
    return {
        "incident_id": str(row["incident_id"]),
        "customer_id": str(row["customer_id"]),
        "start": pd.Timestamp(row["start"]).isoformat(),
        "end": pd.Timestamp(row["end"]).isoformat(),
        "steps": int(row["steps"]),
        "direction": str(row["direction"]),
        "dimension": str(top.get("dimension", "")),
        "dimension_value": str(top.get("value", "")),
        "impact": float(row["impact"]),
        "impact_pct": float(pct) if fmt.is_number(pct) else None,
        "severity": str(row["severity"]),
        "currency": str(row.get("currency", "USD")),
        "headline": str(row.get("headline", "")),
        "status": status,
        "first_seen": as_of,
        "last_seen": as_of,
        "facts": json.dumps(
            {k: row[k] for k in ("signals", "max_hybrid_score", "actual_cost", "expected_cost")},
            default=str,
        ),
    }


def process_day(
    config: PipelineConfig,
    store: OperationsStore,
    as_of: str,
    incidents: pd.DataFrame,
    last_scored: Mapping[str, pd.Timestamp],
    *,
    day_has_data: bool = True,
    plots: Mapping[str, str] | Callable[[list[str]], Mapping[str, str]] | None = None,
    last_seen: Mapping[str, pd.Timestamp] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> AlertRunSummary:
    """Record and send the notices of day ``as_of`` (see the module docstring).

    ``incidents``: rows of ``explain_incidents`` over the recent daily scores; ``last_scored``:
    each customer's newest scored timestamp (its absence of news is the no-data signal);
    ``plots``: customer id -> plot path or URL, or a function drawing the plots of the given
    customers (called once, with the customers that have a notice today); ``last_seen``: each
    customer's newest data (default: ``last_scored``), which decides the no-data notices.
    Returns counts; never raises for a delivery.
    """
    from anomaly_pipelines.core.feedback import suppression_reason

    summary = AlertRunSummary(as_of=as_of)
    alerts = config.alerts
    if not alerts.enabled:
        return summary
    max_gap = config.explain.max_gap_steps
    feedback = store.feedback()

    def add(sub: AlertSubscriptionConfig, key: str, message: dict[str, Any], status: str) -> bool:
        if status == "pending" and sub.frequency != "immediate":
            status = "queued"
        new = store.add_delivery(
            {
                "key": key,
                "subscription": sub.name,
                "channel": sub.channel,
                "kind": message["kind"],
                "incident_id": message.get("incident_id", ""),
                "customer_id": message.get("customer_id", ""),
                "as_of": as_of,
                "subject": message["subject"],
                "payload": message,
                "status": status,
            }
        )
        if new:
            summary.new_notices += 1
            summary.by_kind[message["kind"]] = summary.by_kind.get(message["kind"], 0) + 1
            if status == "suppressed":
                summary.suppressed += 1
        return new

    # Every notice due today is listed before any plot is drawn, so plots are drawn only for
    # customers with news: a re-run, or an incident that neither grew nor ended, draws none.
    notices: list[tuple[AlertSubscriptionConfig, str, str, pd.Series, str]] = []
    for _, row in incidents.iterrows():
        cid = str(row["customer_id"])
        status = incident_status(row, last_scored.get(cid), max_gap)
        record = _incident_record(row, status, as_of, _causes(row))
        store.upsert_incident(record)
        summary.incidents += 1
        summary.open_incidents += status == "open"
        reason = suppression_reason(record, feedback, config.feedback.suppress_days)
        iid = record["incident_id"]
        sent = store.deliveries(incident_id=iid)
        grew_today = last_scored.get(cid) is not None and pd.Timestamp(row["end"]) >= pd.Timestamp(
            last_scored[cid]
        )
        due = []
        for sub in alerts.subscriptions:
            mine = sent[sent["subscription"] == sub.name]
            if mine.empty:
                if not incident_matches(sub, row):
                    continue
                due.append((sub, f"{sub.name}|{iid}|opened", "opened"))
            # An incident opened today is not also updated today (a re-run of its first day).
            elif (
                status == "open"
                and grew_today
                and sub.send_updates
                and not ((mine["kind"] == "opened") & (mine["as_of"] == as_of)).any()
            ):
                due.append((sub, f"{sub.name}|{iid}|update|{_day(row['end'])}", "update"))
            if status == "ended":
                due.append((sub, f"{sub.name}|{iid}|ended", "ended"))
        known = set(sent["key"])
        notices += [(sub, key, kind, row, reason) for sub, key, kind in due if key not in known]

    news = sorted({str(row["customer_id"]) for _, _, _, row, _ in notices})
    links = (plots(news) if news else {}) if callable(plots) else plots or {}
    for sub, key, kind, row, reason in notices:
        plot = _plot_link(links.get(str(row["customer_id"])), config)
        message = incident_message(kind, row, plot=plot, as_of=as_of)
        if reason and kind == "opened":
            message["suppressed_because"] = reason
        add(sub, key, message, "suppressed" if reason else "pending")

    as_of_day = pd.Timestamp(as_of, tz="UTC")
    for cid, newest in sorted((last_seen if last_seen is not None else last_scored).items()):
        newest_day = pd.Timestamp(newest).tz_convert("UTC").normalize()
        if (as_of_day - newest_day).days < alerts.no_data_after_days:
            continue
        for sub in alerts.subscriptions:
            if sub.send_no_data and customer_matches(sub, cid):
                add(
                    sub,
                    f"{sub.name}|no_data|{cid}|{_day(newest_day)}",
                    no_data_message(cid, newest_day, as_of),
                    "pending",
                )
    if not day_has_data:
        for sub in alerts.subscriptions:
            if sub.send_no_data:
                add(sub, f"{sub.name}|missing_file|{as_of}", missing_file_message(as_of), "pending")

    flush(config, store, as_of, summary, sleep=sleep)
    return summary


def _plot_link(path: str | None, config: PipelineConfig) -> str:
    if not path:
        return ""
    base = config.alerts.plot_base_url
    if base:
        return f"{base.rstrip('/')}/{path.replace(chr(92), '/').rsplit('/', 1)[-1]}"
    return str(path)


def _digest_due(sub: AlertSubscriptionConfig, as_of: str) -> bool:
    if sub.frequency == "daily":
        return True
    return pd.Timestamp(as_of).weekday() == sub.digest_weekday


def flush(
    config: PipelineConfig,
    store: OperationsStore,
    as_of: str,
    summary: AlertRunSummary | None = None,
    *,
    sleep: Callable[[float], None] | None = None,
) -> AlertRunSummary:
    """Send what is due: pending and earlier failed rows of immediate subscriptions, and the
    digests that are due. Rows of subscriptions no longer configured are left alone."""
    summary = summary or AlertRunSummary(as_of=as_of)
    alerts = config.alerts
    # A row left "sending" this long ago belongs to a run that died mid-delivery.
    stale_before = (
        dt.datetime.now(dt.UTC) - dt.timedelta(minutes=SENDING_TIMEOUT_MINUTES)
    ).isoformat(timespec="microseconds")
    for sub in alerts.subscriptions:
        if sub.frequency != "immediate":
            queued = store.deliveries(subscription=sub.name, statuses=("queued",))
            queued = queued[queued["digest_key"] == ""] if len(queued) else queued
            if len(queued) and _digest_due(sub, as_of):
                digest_key = f"{sub.name}|digest|{as_of}"
                items = list(queued["payload"])
                message = {
                    "kind": "digest",
                    "subject": f"{sub.frequency.capitalize()} cost anomaly digest for {as_of}: "
                    f"{len(items)} notice(s)",
                    "as_of": as_of,
                    "items": items,
                }
                if store.add_delivery(
                    {
                        "key": digest_key,
                        "subscription": sub.name,
                        "channel": sub.channel,
                        "kind": "digest",
                        "as_of": as_of,
                        "subject": message["subject"],
                        "payload": message,
                        "status": "pending",
                    }
                ):
                    store.set_digest(list(queued["key"]), digest_key)
            summary.queued += len(store.deliveries(subscription=sub.name, statuses=("queued",)))
        due = store.deliveries(subscription=sub.name, statuses=(*RETRY_STATUSES, "sending"))
        for _, row in due.iterrows():
            if sub.frequency != "immediate" and row["kind"] != "digest":
                continue
            if int(row["attempts"]) >= alerts.max_total_attempts:
                continue
            if not store.claim(row["key"], RETRY_STATUSES, stale_before):
                continue  # another run is sending it right now
            result = _deliver(sub, row["payload"], config, sleep)
            attempts = int(row["attempts"]) + result.attempts
            if result.ok:
                stamp = now_text()
                store.update_delivery(
                    row["key"], status="sent", attempts=attempts, last_error="", sent_at=stamp
                )
                if row["kind"] == "digest":
                    _mark_digest_items(store, sub.name, row["key"], stamp)
                summary.sent += 1
            else:
                store.update_delivery(
                    row["key"], status="failed", attempts=attempts, last_error=result.error
                )
                summary.failed += 1
                summary.errors.append(f"{sub.name}: {result.error}")
    return summary


def _deliver(
    sub: AlertSubscriptionConfig,
    message: dict[str, Any],
    config: PipelineConfig,
    sleep: Callable[[float], None] | None,
) -> channels.DeliveryResult:
    try:
        if sleep is None:
            return channels.deliver(sub, message, config.alerts)
        return channels.deliver(sub, message, config.alerts, sleep=sleep)
    except Exception as exc:  # a bug in a channel must not fail the scoring run either
        logger.exception("alert delivery to %r crashed", sub.name)
        return channels.DeliveryResult(False, 1, f"unexpected {type(exc).__name__}")


def _mark_digest_items(
    store: OperationsStore, subscription: str, digest_key: str, stamp: str
) -> None:
    items = store.deliveries(subscription=subscription, statuses=("queued",))
    for key in items.loc[items["digest_key"] == digest_key, "key"] if len(items) else []:
        store.update_delivery(key, status="sent", sent_at=stamp)


def send_test(
    config: PipelineConfig, subscription: str, store: OperationsStore | None = None
) -> channels.DeliveryResult:
    """``alerts test``: send the sample message to one subscription now (digest or not) and
    record it under a unique key."""
    subs = {s.name: s for s in config.alerts.subscriptions}
    if subscription not in subs:
        known = ", ".join(sorted(subs)) or "none configured: add one under alerts.subscriptions"
        raise KeyError(f"no alert subscription named {subscription!r} (known: {known})")
    sub = subs[subscription]
    message = sample_message()
    result = _deliver(sub, message, config, None)
    if store is not None:
        stamp = now_text()
        store.add_delivery(
            {
                "key": f"{sub.name}|test|{stamp}|{id(message)}",
                "subscription": sub.name,
                "channel": sub.channel,
                "kind": "test",
                "as_of": stamp[:10],
                "subject": message["subject"],
                "payload": message,
                "status": "sent" if result.ok else "failed",
                "attempts": result.attempts,
                "last_error": result.error,
                "sent_at": stamp if result.ok else None,
            }
        )
    return result
