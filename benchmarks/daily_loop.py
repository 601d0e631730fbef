"""The daily loop over months: writes docs/daily_loop.md (generated; do not edit by hand).

    .venv/bin/python benchmarks/daily_loop.py             # 90 days after the history (see the doc for the time)
    .venv/bin/python benchmarks/daily_loop.py --days 30   # a shorter loop: later incidents are not injected

The suite's end-to-end test (``anomaly_pipelines_tests/defs/test_daily_loop.py``) simulates a few
weeks; this is the months-long check of the same loop, too slow for the suite. Everything is the
real thing: the project's definitions (``build_definitions``) on a throw-away Dagster instance, a
``daily_folder`` source that receives one billing file per simulated day, ``daily_scoring_job``
run for each day, before it ``ingest_job`` at each tick of the project's ``ingest_schedule`` (its
cron evaluated for the simulated mornings, as the scheduler would), the declarative automation
evaluated after each day the way the daemon's two automation sensors evaluate it
(``dagster.evaluate_automation_conditions``, each evaluation continuing from the previous cursor)
and whatever it requests launched with the sensor's run tags (``anomaly_pipelines_tests.daemon_ticks``), alerts sent over real sockets to the loopback webhook and SMTP servers of
``anomaly_pipelines_tests.loopback`` (an immediate webhook subscription, a daily and a weekly
e-mail digest), and feedback given through the command line.

Twelve customers of different sizes, noise and weekly shapes; the history is trained once with
few epochs (this checks the loop, not the detector's quality: ``docs/evaluation.md`` does that).
Then incidents of several kinds are injected (see ``INCIDENTS``), one day has no file, and every
figure of the report is counted afterwards from what the servers received, the operations
store, the Dagster instance and the MLflow registry: none is typed in.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_string, policy
from pathlib import Path
from typing import Any
from unittest import mock

import dagster as dg
import numpy as np
import pandas as pd

from anomaly_pipelines import cli
from anomaly_pipelines.core.alerts import OperationsStore
from anomaly_pipelines.core.alerts.store import dispose_engines
from anomaly_pipelines.core.registry import ModelRegistry
from anomaly_pipelines.definitions import build_definitions
from anomaly_pipelines.defs.demo import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG, run_demo
from anomaly_pipelines.defs.jobs import CUSTOMER_ASSETS
from anomaly_pipelines.defs.partitions import CUSTOMERS as CUSTOMER_PARTITIONS
from anomaly_pipelines.defs.settings import read_config, write_isolated_config
from anomaly_pipelines_tests.daemon_ticks import (
    AutomationTicks,
    run_schedule_tick,
    schedule_ticks,
    sensor_run_tags,
)
from anomaly_pipelines_tests.loopback import smtp_server, webhook_server

ROOT = Path(__file__).resolve().parents[1]
SEED = 2024
START = pd.Timestamp("2024-01-01")  # a Monday: weekly digests go out on simulated Mondays
HISTORY_DAYS = 112  # trained once before the loop (16 weeks)
SMTP_PASSWORD = "daily-loop-smtp-password"  # checked never to appear in a message or the store
HOOK_ENV, SMTP_ENV = "DAILY_LOOP_HOOK_URL", "DAILY_LOOP_SMTP_PASSWORD"
DAILY_TO, WEEKLY_TO = "daily@finops.example", "weekly@finops.example"
# The separator ``core.alerts.channels.render_text`` puts between a digest's notices.
DIGEST_SEPARATOR = "-" * 40
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
# Evaluations of the automation after one day before the loop is declared not to settle.
MAX_TICKS = 4

WEEKLY = {
    "office hours": (1.25, 1.25, 1.25, 1.25, 1.25, 1.0, 1.0),
    "weekend peak": (1.0, 1.0, 1.0, 1.0, 1.0, 1.4, 1.4),
    "flat": (1.0,) * 7,
    "mid-week peak": (1.1, 1.3, 1.3, 1.3, 1.1, 0.8, 0.8),
}


@dataclass(frozen=True)
class Customer:
    name: str
    daily_cost: float
    shape: str  # a key of WEEKLY
    noise: float  # relative day-to-day noise (standard deviation)


CUSTOMERS = (
    Customer("acme", 300, "office hours", 0.03),
    Customer("globex", 800, "mid-week peak", 0.04),
    Customer("initech", 120, "office hours", 0.03),
    Customer("umbrella", 2_500, "flat", 0.03),
    Customer("hooli", 40, "weekend peak", 0.06),
    Customer("wonka", 900, "office hours", 0.04),
    Customer("stark", 12_000, "flat", 0.02),
    Customer("wayne", 5_000, "mid-week peak", 0.03),
    Customer("tyrell", 60, "weekend peak", 0.05),
    Customer("cyberdyne", 1_500, "office hours", 0.04),
    Customer("soylent", 250, "flat", 0.05),
    Customer("vandelay", 30, "mid-week peak", 0.08),
)


@dataclass(frozen=True)
class Incident:
    """Injected into the files: the customer's cost times ``factors[i]`` on day ``first + i``
    (simulated days, 0 = the first day after the history); a ``lasting`` one keeps its last
    factor to the end (a new level)."""

    kind: str
    customer: str
    first: int
    factors: tuple[float, ...]
    lasting: bool = False
    # A person's judgement through the CLI, given the day after the incident's first alert.
    feedback: str = ""

    @property
    def last(self) -> int:
        return self.first + len(self.factors) - 1

    def factor(self, day: int) -> float:
        if day < self.first:
            return 1.0
        if day > self.last:
            return self.factors[-1] if self.lasting else 1.0
        return self.factors[day - self.first]


INCIDENTS = (
    # A migration that runs the old and the new system side by side for five weeks, then
    # stops: drifts, is retrained while it lasts and after, and a challenger that learned the
    # doubled weeks may find the return surprising (the report shows what the gate decided).
    Incident("temporary shift, reverts", "wonka", 2, (1.8,) * 35),
    Incident("spike", "hooli", 6, (4.0,)),
    Incident("spike, marked not-anomaly", "acme", 10, (5.0, 5.0), feedback="not-anomaly"),
    # Confirmed: its days are kept out of globex's later trainings, and the gate counts them.
    Incident("runaway", "globex", 16, (1.5, 1.9, 2.4, 2.9, 3.4, 3.9), feedback="accurate"),
    Incident("outage", "umbrella", 24, (0.1, 0.1, 0.1)),
    # Within feedback.suppress_days of the spike marked not-anomaly: recorded, never alerted.
    Incident("repeat of the not-anomaly spike", "acme", 30, (5.0, 5.0)),
    # A workload moved in for good: drifts, is retrained, the new level becomes normal.
    Incident("level shift", "initech", 40, (1.8,) * 14, lasting=True),
    Incident("spike", "stark", 55, (2.5,)),
    Incident("runaway", "cyberdyne", 62, (1.4, 1.8, 2.2, 2.6, 3.0)),
    Incident("outage", "wayne", 70, (0.2, 0.2)),
    Incident("spike", "tyrell", 78, (5.0,)),
)
MISSING_DAY = 35  # no file arrives that day


def day_key(day: int) -> str:
    """The partition key (and file date) of simulated ``day``."""
    return (START + pd.Timedelta(days=HISTORY_DAYS + day)).strftime("%Y-%m-%d")


def write_file(folder: Path, absolute_day: int) -> None:
    """One billing file: every customer's cost on day ``absolute_day`` from ``START`` (the
    incidents' days count from the end of the history)."""
    stamp = START + pd.Timedelta(days=absolute_day)
    day = absolute_day - HISTORY_DAYS
    costs = []
    for index, customer in enumerate(CUSTOMERS):
        rng = np.random.default_rng([SEED, index, absolute_day])
        cost = customer.daily_cost * WEEKLY[customer.shape][stamp.weekday()]
        cost *= 1 + customer.noise * rng.standard_normal()
        for incident in INCIDENTS:
            if incident.customer == customer.name:
                cost *= incident.factor(day)
        costs.append(round(cost, 2))
    date = stamp.strftime("%Y-%m-%d")
    pd.DataFrame(
        {"customer_id": [c.name for c in CUSTOMERS], "Date": date, "TotalCost": costs}
    ).to_csv(folder / f"usage_{date}.csv", index=False)


def loop_config(folder: Path, mail_port: int, epochs: int) -> dict[str, Any]:
    """The pipeline settings of the loop: the folder source, few epochs, three subscriptions."""
    mail = {
        "channel": "email",
        "smtp_host": "127.0.0.1",
        "smtp_port": mail_port,
        "smtp_username": "alerts",
        "smtp_password_env": SMTP_ENV,
    }
    return {
        "source": {"kind": "daily_folder", "path": str(folder)},
        "preprocess": {"min_history": 28},
        "lstm": {"epochs": epochs},
        "feedback": {"suppress_days": 30},
        "alerts": {
            "subscriptions": [
                {"name": "finops-hook", "channel": "webhook", "url_env": HOOK_ENV},
                {"name": "daily-mail", **mail, "email_to": [DAILY_TO], "frequency": "daily"},
                {
                    "name": "weekly-mail",
                    **mail,
                    "email_to": [WEEKLY_TO],
                    "frequency": "weekly",
                    "digest_weekday": 0,
                },
            ],
            "backoff_seconds": 0.01,
        },
    }


# --- the loop ---------------------------------------------------------------------------------


@dataclass
class Timings:
    history: float = 0.0
    ingest: list[float] = field(default_factory=list)
    daily: list[float] = field(default_factory=list)
    automation: list[float] = field(default_factory=list)
    drift: list[float] = field(default_factory=list)
    retrain: list[float] = field(default_factory=list)


@dataclass
class Retrain:
    day: int
    customers: list[str]


@dataclass
class LoopRecord:
    """What happened, as the loop saw it (the figures are counted from the stores afterwards)."""

    days: int = 0
    drift_listed: dict[int, list[str]] = field(default_factory=dict)
    retrains: list[Retrain] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    failed_checks: Counter[str] = field(default_factory=Counter)
    missing_day_check: bool | None = None
    load: tuple[float, ...] = field(default_factory=os.getloadavg)
    timings: Timings = field(default_factory=Timings)


class DailyLoop:
    """The project's definitions on one Dagster instance, driven one simulated day at a time."""

    def __init__(
        self, config_path: Path, folder: Path, instance: dg.DagsterInstance, hook: Any
    ) -> None:
        self.config_path = config_path
        self.folder = folder
        self.instance = instance
        self.hook = hook
        self.config = read_config(str(config_path))
        self.defs = build_definitions(config_path=str(config_path))
        self.automation = AutomationTicks(self.defs, instance)
        self.ingest = self.defs.resolve_schedule_def("ingest_schedule")
        # The simulated clock: the morning the history was trained, at the daily scoring's time.
        self.clock = self._scoring_time(-1)
        self.record = LoopRecord()
        self.tags = {
            name: sensor_run_tags(self.defs, name)
            for name in ("drift_automation_sensor", "customer_automation_sensor")
        }

    def _scoring_time(self, day: int) -> pd.Timestamp:
        """When ``daily_scoring_schedule`` scores simulated ``day``: the next morning."""
        orchestration = self.config.orchestration
        return pd.Timestamp(day_key(day), tz=orchestration.timezone) + pd.Timedelta(
            days=1, hours=orchestration.daily_hour, minutes=orchestration.daily_minute
        )

    def train_history(self) -> None:
        """Ingest and one batch training of every customer, as ``anomaly-pipelines demo`` does;
        then the first evaluation of the automation, which has nothing to request."""
        started = time.perf_counter()
        run_demo(str(self.config_path), instance=self.instance, log_level="ERROR")
        self.record.timings.history = time.perf_counter() - started
        if self.tick():
            raise RuntimeError("automation requested runs right after the first training")

    def tick(self) -> dict[str, set[str | None]]:
        """One evaluation of every automation condition, continuing from the previous one."""
        return self.automation.tick()

    def run_day(self, day: int) -> None:
        """The file lands (or not); the ingests ``ingest_schedule`` fires up to the day's
        scoring (every morning, by default before it); the scoring; feedback; then
        automation."""
        timings = self.record.timings
        if day != MISSING_DAY:
            write_file(self.folder, HISTORY_DAYS + day)
        scoring = self._scoring_time(day)
        for tick in schedule_ticks(self.ingest, self.clock, scoring):
            started = time.perf_counter()
            run_schedule_tick(self.defs, self.instance, self.ingest.name, tick, run_config=QUIET)
            timings.ingest.append(time.perf_counter() - started)
        self.clock = scoring
        started = time.perf_counter()
        result = self._job("daily_scoring_job").execute_in_process(
            instance=self.instance, partition_key=day_key(day), run_config=QUIET
        )
        timings.daily.append(time.perf_counter() - started)
        if not result.success:
            raise RuntimeError(f"daily_scoring_job failed for {day_key(day)}")
        for check in result.get_asset_check_evaluations():
            if not check.passed:
                self.record.failed_checks[check.check_name] += 1
            if day == MISSING_DAY and check.check_name == "daily_data_arrived":
                self.record.missing_day_check = check.passed
        self._give_feedback(day)
        self._automate(day)
        self.record.days = day + 1

    def _job(self, name: str) -> dg.JobDefinition:
        return self.defs.resolve_job_def(name)

    def _give_feedback(self, day: int) -> None:
        """A person answers an alert the day after it arrived, through the command line."""
        given = {f["incident"] for f in self.record.feedback}
        for incident in INCIDENTS:
            if not incident.feedback or incident in given:
                continue
            opened = [
                b
                for b in self.hook.bodies
                if b["kind"] == "opened"
                and b["customer_id"] == incident.customer
                and b["as_of"] >= day_key(incident.first)
                and b["as_of"] < day_key(day)
            ]
            if not opened:
                continue
            argv = ["feedback", opened[0]["incident_id"], incident.feedback]
            argv += ["--note", "benchmark", "--config-file", str(self.config_path)]
            with contextlib.redirect_stdout(io.StringIO()):
                code = cli.main(argv)
            self.record.feedback.append(
                {
                    "incident": incident,
                    "incident_id": opened[0]["incident_id"],
                    "label": incident.feedback,
                    "day": day_key(day),
                    "exit_code": code,
                }
            )

    def _automate(self, day: int) -> None:
        """Launch what automation requests until it requests nothing, as the daemon would."""
        timings = self.record.timings
        for _ in range(MAX_TICKS):
            started = time.perf_counter()
            requested = self.tick()
            timings.automation.append(time.perf_counter() - started)
            if not requested:
                return
            unexpected = set(requested) - {"model_drift", *CUSTOMER_ASSETS}
            if unexpected:
                raise RuntimeError(f"automation requested unexpected assets: {sorted(unexpected)}")
            if "model_drift" in requested:
                self._measure_drift(day)
            customers = sorted(
                {k for a in CUSTOMER_ASSETS for k in requested.get(a, set()) if k is not None}
            )
            if customers:
                assets = [a for a in CUSTOMER_ASSETS if a in requested]
                self._retrain(day, assets, customers)
        raise RuntimeError(f"automation still requesting runs after {MAX_TICKS} evaluations")

    def _measure_drift(self, day: int) -> None:
        started = time.perf_counter()
        result = self._job("drift_job").execute_in_process(
            instance=self.instance, tags=self.tags["drift_automation_sensor"], run_config=QUIET
        )
        self.record.timings.drift.append(time.perf_counter() - started)
        measures = result.output_for_node("model_drift")
        listed = measures[measures["drifted"] | measures["stale"]]
        self.record.drift_listed[day] = sorted(listed["customer_id"].astype(str))

    def _retrain(self, day: int, assets: list[str], keys: list[str]) -> None:
        """The customer sensor's request: one run per contiguous range of requested keys (the
        single-run backfill policy makes a range one run), with the sensor's tags."""
        selection = [dg.AssetKey(a) for a in assets]
        job = self.defs.resolve_implicit_job_def_def_for_assets(selection)
        ranges: list[list[str]] = [[]]
        for key in self.instance.get_dynamic_partitions(CUSTOMER_PARTITIONS):
            if key in keys:
                ranges[-1].append(key)
            elif ranges[-1]:
                ranges.append([])
        for run in (r for r in ranges if r):
            tags = dict(self.tags["customer_automation_sensor"])
            tags.update({PARTITION_RANGE_START_TAG: run[0], PARTITION_RANGE_END_TAG: run[-1]})
            started = time.perf_counter()
            result = job.execute_in_process(
                instance=self.instance, asset_selection=selection, tags=tags, run_config=QUIET
            )
            self.record.timings.retrain.append(time.perf_counter() - started)
            if not result.success:
                raise RuntimeError(f"retraining {run} failed on {day_key(day)}")
            self.record.retrains.append(Retrain(day, run))


# --- figures ----------------------------------------------------------------------------------


@dataclass
class Digest:
    to: str
    as_of: str
    notices: int
    text: str


def read_digests(messages: list[dict[str, Any]]) -> list[Digest]:
    """The e-mails the SMTP server received, decoded; notices counted from the body."""
    out = []
    for received in messages:
        email = message_from_string(received["data"], policy=policy.default)
        subject = str(email["Subject"])
        day = re.search(r"digest for (\d{4}-\d{2}-\d{2})", subject)
        text = email.get_content()
        notices = sum(line == DIGEST_SEPARATOR for line in text.splitlines()) + 1
        out.append(Digest(",".join(received["to"]), day[1] if day else "", notices, text))
    return out


def match_incidents(store_incidents: pd.DataFrame) -> dict[Incident, list[str]]:
    """Each injected incident -> the detected incidents of its customer that start between the
    day before it and three days after its last day (the return from a temporary level counts
    as part of it)."""
    out: dict[Incident, list[str]] = {}
    starts = pd.to_datetime(store_incidents["start"], utc=True).dt.strftime("%Y-%m-%d")
    for incident in INCIDENTS:
        window = (day_key(incident.first - 1), day_key(incident.last + 3))
        chosen = store_incidents[
            (store_incidents["customer_id"] == incident.customer)
            & (starts >= window[0])
            & (starts <= window[1])
        ]
        out[incident] = list(chosen["incident_id"])
    return out


def series_ends(instance: dg.DagsterInstance, key: str) -> list[str]:
    """The newest day of each series a training of the customer read, oldest training first
    (``customer_series``' per-partition metadata in the Dagster event log)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(dg.AssetKey("customer_series"), asset_partitions=[key]),
        limit=10_000,
        ascending=True,
    ).records
    return [
        str(r.asset_materialization.metadata["last_timestamp"].value)[:10]
        for r in records
        if r.asset_materialization is not None
    ]


def registry_decisions(config: Any, instance: dg.DagsterInstance) -> pd.DataFrame:
    """Every version registered after a customer's first, with the newest day of the series it
    was trained on, the gate's decision (MLflow version tags written by
    ``core.promotion.apply_decisions``) and the customer's champion at the end."""
    registry = ModelRegistry(config.mlflow)
    client = registry.client()
    rows = []
    for customer in CUSTOMERS:
        name = registry.registered_name(customer.name)
        champion = registry.champion_version(customer.name)
        ends = series_ends(instance, customer.name)
        for version in registry.versions(customer.name)[1:]:
            tags = client.get_model_version(name, version).tags or {}
            rows.append(
                {
                    "customer_id": customer.name,
                    "version": version,
                    # Version n was trained on the n-th series built for the customer.
                    "data_to": ends[int(version) - 1] if int(version) <= len(ends) else "?",
                    "decision": tags.get("challenger_decision", "(none)"),
                    "reason": tags.get("challenger_reason", ""),
                    "champion_now": champion,
                }
            )
    columns = ["customer_id", "version", "data_to", "decision", "reason", "champion_now"]
    return pd.DataFrame(rows, columns=columns)


def figures(loop: DailyLoop, hook: Any, mail: Any, days: int, seconds: float) -> list[str]:
    """The report, every figure counted from the servers and the stores."""
    store = OperationsStore.for_config(loop.config)
    incidents = store.incidents()
    deliveries = store.deliveries()
    bodies = hook.bodies
    digests = read_digests(mail.messages)
    injected = [i for i in INCIDENTS if i.first < days]
    matched = {i: ids for i, ids in match_incidents(incidents).items() if i.first < days}
    explained = {iid for ids in matched.values() for iid in ids}
    opened_alerts = {
        i: sum(b["kind"] == "opened" and b.get("incident_id") in matched[i] for b in hook.bodies)
        for i in injected
    }
    injected_by_kind = {
        k: [i for i in injected if i.kind == k] for k in dict.fromkeys(i.kind for i in injected)
    }
    false_alarms = incidents[~incidents["incident_id"].isin(explained)]
    alerts_by_kind = Counter(b["kind"] for b in bodies)
    suppressed = deliveries[deliveries["status"] == "suppressed"]
    # Repeats: incidents silenced from their first notice on (feedback on an earlier one).
    repeats = set(suppressed.loc[suppressed["kind"] == "opened", "incident_id"])
    leaked = [b for b in bodies if b.get("incident_id") in repeats]
    leaked_to_mail = [d for d in digests if any(iid in d.text for iid in repeats)]
    daily = [d for d in digests if d.to == DAILY_TO]
    weekly = [d for d in digests if d.to == WEEKLY_TO]
    alert_days = {b["as_of"] for b in bodies}
    decisions = registry_decisions(loop.config, loop.instance)
    secrets = (SMTP_PASSWORD, hook.url)
    exposed = sum(
        secret in text
        for secret in secrets
        for text in [json.dumps(bodies), deliveries.to_json(), *(m["data"] for m in mail.messages)]
    )
    record = loop.record
    timings = record.timings
    listed = Counter(c for customers in record.drift_listed.values() for c in customers)
    retrained = Counter(c for r in record.retrains for c in r.customers)
    # Each retraining registers the customer's next version, in the order of the runs.
    retrain_days = {
        c: [day_key(r.day) for r in record.retrains if c in r.customers] for c in retrained
    }
    queued = deliveries[deliveries["status"] == "queued"]
    undelivered = deliveries[deliveries["status"].isin(["pending", "failed"])]

    lines = [
        "# The daily loop over months",
        "",
        "Generated by `.venv/bin/python benchmarks/daily_loop.py"
        + (f" --days {days}" if days != 90 else "")
        + "`; do not edit by hand.",
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Load average (1 min) "
        f"at the start and the end: {loop.record.load[0]:.1f} and {os.getloadavg()[0]:.1f} "
        "(run time depends on what else the machine runs).",
        "",
        "What ran, for every simulated day: the day's billing file lands in the `daily_folder` "
        "source (one day has none), `ingest_job` whenever the project's `ingest_schedule` "
        f"fires (`{loop.config.orchestration.ingest_cron}`, before the scoring; retraining "
        "reads what was ingested), `daily_scoring_job` for the day, then the "
        "declarative automation evaluated as the daemon's sensors do, and what it requested "
        "(`model_drift`, retrainings) launched with the sensor's tags. Alerts went over real "
        "sockets to a loopback webhook (immediate) and a loopback SMTP server (a daily and a "
        "weekly digest); feedback went through `anomaly-pipelines feedback`. Every figure below "
        "is counted from what the servers received, the operations store, the Dagster instance "
        "and the MLflow registry.",
        "",
        "## Figures",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| days simulated (after {HISTORY_DAYS} days of trained history) | {record.days} |",
        f"| customers | {len(CUSTOMERS)} |",
        f"| days without a file (`daily_data_arrived` failed that day) | "
        f"{int(record.missing_day_check is False)} |",
        f"| incidents injected | {len(injected)} |",
        f"| injected incidents caught | {sum(bool(matched[i]) for i in injected)} |",
        f"| false alarm incidents (detected, matching nothing injected) | {len(false_alarms)} |",
        *[f"| webhook alerts `{kind}` | {alerts_by_kind.get(kind, 0)} |" for kind in ALERT_KINDS],
        f"| days with alerts | {len(alert_days)} |",
        f"| days with alerts and no daily digest, daily digests on other days | "
        f"{len(alert_days - {d.as_of for d in daily})}, "
        f"{len({d.as_of for d in daily} - alert_days)} |",
        f"| weekly digests sent on another day than Monday | "
        f"{sum(not d.as_of or pd.Timestamp(d.as_of).weekday() != 0 for d in weekly)} |",
        f"| daily digests received (notices in them) | {len(daily)} "
        f"({sum(d.notices for d in daily)}) |",
        f"| weekly digests received (notices in them) | {len(weekly)} "
        f"({sum(d.notices for d in weekly)}) |",
        f"| notices queued for a digest not due yet at the end, notices pending or failed | "
        f"{len(queued)}, {len(undelivered)} |",
        f"| feedback given through the CLI | {len(record.feedback)} "
        f"(exit codes {sorted({f['exit_code'] for f in record.feedback})}) |",
        f"| repeat incidents suppressed by feedback (never alerted) | {len(repeats)} |",
        f"| notices suppressed by feedback (recorded, not sent) | {len(suppressed)} |",
        f"| suppressed repeats that reached the webhook anyway, digests naming one | "
        f"{len(leaked)}, {len(leaked_to_mail)} |",
        f"| drift measurements (`model_drift` runs) | {len(record.drift_listed)} |",
        f"| customers listed drifted or stale (listings) | {len(listed)} "
        f"({sum(listed.values())}) |",
        f"| retraining runs (customers retrained) | {len(record.retrains)} "
        f"({sum(retrained.values())}) |",
        f"| challengers promoted | {int((decisions['decision'] == 'promoted').sum())} |",
        f"| champions kept (challenger worse) | "
        f"{int((decisions['decision'] == 'kept_champion').sum())} |",
        f"| failed asset checks (by name) | "
        f"{', '.join(f'{k} {v}' for k, v in sorted(record.failed_checks.items())) or 'none'} |",
        f"| secrets (SMTP password, webhook URL) found in messages or the store | {exposed} |",
        f"| run time, end to end | {seconds / 60:.1f} min |",
        "",
        "## Injected incidents",
        "",
        "Detected incidents are matched to an injected one by customer and start (from the day "
        "before it to three days after its last day). Alerts are what the webhook received.",
        "",
        "| kind | injected | caught | `opened` alerts |",
        "|---|---:|---:|---:|",
        *[
            f"| {kind} | {len(group)} | {sum(bool(matched[i]) for i in group)} "
            f"| {sum(opened_alerts[i] for i in group)} |"
            for kind, group in injected_by_kind.items()
        ],
        "",
        "| kind | customer | days | detected as | `opened` | `update` | `ended` | "
        "first alert after | suppressed notices |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for incident in injected:
        ids = matched[incident]
        mine = [b for b in bodies if b.get("incident_id") in ids]
        kinds = Counter(b["kind"] for b in mine)
        opened = sorted(b["as_of"] for b in mine if b["kind"] == "opened")
        lag = (
            f"{(pd.Timestamp(opened[0]) - pd.Timestamp(day_key(incident.first))).days} d"
            if opened
            else "-"
        )
        span = f"{day_key(incident.first)}" + (
            " on" if incident.lasting else f" +{len(incident.factors) - 1}"
        )
        lines.append(
            f"| {incident.kind} | {incident.customer} | {span} | {', '.join(ids) or 'not caught'} "
            f"| {kinds['opened']} | {kinds['update']} | {kinds['ended']} | {lag} "
            f"| {int(suppressed['incident_id'].isin(ids).sum())} |"
        )
    for given in record.feedback:
        lines += [
            "",
            f"Feedback: `anomaly-pipelines feedback {given['incident_id']} {given['label']}` on "
            f"{given['day']} (the {given['incident'].kind} of {given['incident'].customer}).",
        ]
    lines += [
        "",
        "## False alarm incidents",
        "",
        "| customer | start | days | direction | impact | severity |",
        "|---|---|---:|---|---:|---|",
        *[
            f"| {r.customer_id} | {str(r.start)[:10]} | {r.steps} | {r.direction} "
            f"| {r.impact_pct:+.0f}% | {r.severity} |"
            for r in false_alarms.itertuples()
        ],
        "",
        "## Drift and retraining",
        "",
        "| customer | days listed drifted or stale | retrained | versions after the first |",
        "|---|---:|---:|---:|",
        *[
            f"| {c} | {listed[c]} | {retrained[c]} | {int((decisions['customer_id'] == c).sum())} |"
            for c in sorted(set(listed) | set(retrained))
        ],
        "",
        "Every challenger and the gate's decision (MLflow version tags):",
        "",
        "| customer | retrained on | data to | version | decision | reason | champion at the end |",
        "|---|---|---|---:|---|---|---:|",
        *[
            f"| {r.customer_id} | {(retrain_days.get(r.customer_id) or ['?']).pop(0)} "
            f"| {r.data_to} | {r.version} | {r.decision} | {r.reason} | {r.champion_now} |"
            for r in decisions.itertuples()
        ],
        "",
        "## Run time",
        "",
        "| phase | runs | seconds | mean s |",
        "|---|---:|---:|---:|",
        f"| ingest and training of the history | 2 | {timings.history:.0f} | |",
        *[
            f"| {name} | {len(values)} | {sum(values):.0f} | "
            f"{(sum(values) / len(values)) if values else 0:.1f} |"
            for name, values in (
                ("`ingest_job`", timings.ingest),
                ("`daily_scoring_job`", timings.daily),
                ("automation evaluations", timings.automation),
                ("`model_drift`", timings.drift),
                ("retrainings", timings.retrain),
            )
        ],
        f"| end to end | | {seconds:.0f} | |",
        "",
    ]
    return lines


ALERT_KINDS = ("opened", "update", "ended", "missing_file", "no_data")


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores, {memory:.1f} GiB RAM, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )


def run(days: int, epochs: int, keep: Path | None = None) -> list[str]:
    """The whole loop in a temporary directory (``keep``: in that one, left for inspection:
    the billing files, the outputs with every score, the MLflow store); returns the report's
    lines."""
    started = time.perf_counter()
    with (
        (
            contextlib.nullcontext(str(keep))
            if keep
            else tempfile.TemporaryDirectory(prefix="daily-loop-")
        ) as tmp,
        webhook_server() as hook,
        smtp_server(password=SMTP_PASSWORD) as mail,
        # The secrets are read from the environment at send time, as in a deployment.
        mock.patch.dict(os.environ, {HOOK_ENV: hook.url, SMTP_ENV: SMTP_PASSWORD}),
    ):
        workdir = Path(tmp)
        folder = workdir / "billing"
        folder.mkdir()
        for absolute_day in range(HISTORY_DAYS):
            write_file(folder, absolute_day)
        config_path = write_isolated_config(workdir, loop_config(folder, mail.port, epochs))
        home = workdir / "dagster_home"
        home.mkdir()
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            loop = DailyLoop(config_path, folder, instance, hook)
            print(f"training {len(CUSTOMERS)} customers on {HISTORY_DAYS} days ...", flush=True)
            loop.train_history()
            for day in range(days):
                before = len(hook.bodies), len(loop.record.retrains)
                loop.run_day(day)
                t = loop.record.timings
                print(
                    f"day {day + 1}/{days} {day_key(day)}: {len(hook.bodies) - before[0]} alert(s)"
                    f", drift listed {loop.record.drift_listed.get(day, [])}, retrained "
                    f"{[r.customers for r in loop.record.retrains[before[1] :]]}; daily run "
                    f"{t.daily[-1]:.1f} s ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
            lines = figures(loop, hook, mail, days, time.perf_counter() - started)
        dispose_engines()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=90, help="days simulated after the history")
    parser.add_argument("--epochs", type=int, default=2, help="LSTM epochs of every training")
    parser.add_argument("--out", default=str(ROOT / "docs" / "daily_loop.md"))
    parser.add_argument(
        "--keep", type=Path, help="an empty directory to run in and keep (default: temporary)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Dagster's beta and preview notices, and aiosmtpd's note on AUTH without TLS (loopback).
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    warnings.filterwarnings("ignore", message="Session.login_data is deprecated")
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        if any(args.keep.iterdir()):
            parser.error(f"--keep {args.keep}: not empty")
    lines = run(args.days, args.epochs, args.keep)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
