"""The alert loop in plain Python: real SQLite store, real loopback HTTP and SMTP servers.

Each test replays days one at a time the way the daily Dagster run does: the scores known on
day d are merged into incidents (``explain_incidents``, offline explainer) and handed to
``process_day``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from anomaly_pipelines.core.alerts import (
    OperationsStore,
    continue_cut_incidents,
    incident_matches,
    process_day,
    send_test,
)
from anomaly_pipelines.core.alerts.store import dispose_engines
from anomaly_pipelines.core.config import AlertSubscriptionConfig, PipelineConfig
from anomaly_pipelines.core.explain import explain_incidents
from anomaly_pipelines.core.feedback import (
    precision_over_time,
    record_feedback,
    training_exclusions,
)
from anomaly_pipelines_tests.loopback import smtp_server, webhook_server

TOKEN = "T0KEN-s3cr3t-abc123"
PASSWORD = "smtp-pa55word-xyz"
START = pd.Timestamp("2024-03-01", tz="UTC")


@pytest.fixture(autouse=True)
def _engines() -> Any:
    yield
    dispose_engines()


def _config(tmp_path: Path, subs: list[dict[str, Any]], **alerts: Any) -> PipelineConfig:
    return PipelineConfig().merged(
        {
            "output": {"directory": str(tmp_path / "out")},
            "alerts": {"subscriptions": subs, "backoff_seconds": 0.01, **alerts},
            "explain": {"cache_dir": None},
        }
    )


@contextlib.contextmanager
def _webhook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *subs: dict[str, Any], **alerts: Any
) -> Iterator[tuple[Any, PipelineConfig, OperationsStore]]:
    """A loopback webhook (its URL in ``TEST_HOOK_URL``, as a deployment passes secrets), and
    the settings and operations store of subscriptions sending to it (by default one, ``ops``)."""
    with webhook_server() as hook:
        monkeypatch.setenv("TEST_HOOK_URL", hook.url)
        config = _config(tmp_path, list(subs) or [_hook()], **alerts)
        yield hook, config, OperationsStore.for_config(config)


def _scores(days: int, anomalies: dict[int, float], customer: str = "acme") -> pd.DataFrame:
    """``days`` daily scores around $1,000 with the given days at the given cost, flagged."""
    rows = []
    for i in range(days):
        cost = anomalies.get(i, 1000.0)
        rows.append(
            {
                "customer_id": customer,
                "timestamp": START + pd.Timedelta(days=i),
                "cost": cost,
                "expected_cost": 1000.0,
                "hybrid_score": 3.0 if i in anomalies else 0.2,
                "is_anomaly": i in anomalies,
                "reasons": "residual,lstm" if i in anomalies else "",
            }
        )
    return pd.DataFrame(rows)


def _run_day(
    config: PipelineConfig,
    store: OperationsStore,
    scores: pd.DataFrame,
    day: int,
    *,
    has_data: bool = True,
    sleeps: list[float] | None = None,
) -> Any:
    """Day ``day`` (0-based) as the daily run sees it: scores up to and including that day."""
    as_of = START + pd.Timedelta(days=day)
    known = scores[scores["timestamp"] <= as_of]
    incidents = explain_incidents(known, None, config.explain)
    last = known.groupby("customer_id")["timestamp"].max().to_dict()
    recorder = sleeps.append if sleeps is not None else (lambda s: None)
    return process_day(
        config,
        store,
        f"{as_of:%Y-%m-%d}",
        incidents,
        last,
        day_has_data=has_data,
        plots={"acme": "/plots/acme.png"},
        sleep=recorder,
    )


def test_an_incident_leaving_the_lookback_window_is_not_alerted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daily run sees the last lookback_days of daily scores. A 3-day incident, and one of
    # 15 days, longer than the 10-day window: as the window moves past their first days, each
    # would start on the window's first day under a new id, every day.
    with _webhook(tmp_path, monkeypatch, lookback_days=10) as (hook, config, store):
        spikes = {5: 2500.0, 6: 2600.0, 7: 2700.0, **{20 + i: 3000.0 for i in range(15)}}
        scores = _scores(45, spikes)
        for day in range(45):
            as_of = START + pd.Timedelta(days=day)
            window_start = as_of - pd.Timedelta(days=9)
            seen = scores[(scores["timestamp"] >= window_start) & (scores["timestamp"] <= as_of)]
            incidents = explain_incidents(seen, None, config.explain)
            incidents = continue_cut_incidents(incidents, seen, window_start, store, 1)
            process_day(
                config, store, f"{as_of:%Y-%m-%d}", incidents, {"acme": as_of}, sleep=lambda s: None
            )
        sent = [(b["kind"], b["incident_id"]) for b in hook.bodies]
        assert [k for k, i in sent if i == "acme-20240306T0000"] == [
            "opened",
            "update",
            "update",
            "ended",
        ]
        # The long one keeps its id to the end, its steps counted from its real start.
        assert [k for k, i in sent if i == "acme-20240321T0000"] == [
            "opened",
            *["update"] * 14,
            "ended",
        ]
        assert {i for _, i in sent} == {"acme-20240306T0000", "acme-20240321T0000"}
        assert hook.bodies[-2]["subject"].startswith("[critical] acme: day 15, ")
        assert list(store.incidents()["incident_id"]) == [
            "acme-20240306T0000",
            "acme-20240321T0000",
        ]


def _hook(name: str = "ops", **extra: Any) -> dict[str, Any]:
    return {"name": name, "channel": "webhook", "url_env": "TEST_HOOK_URL", **extra}


def test_one_alert_per_incident_with_updates_and_one_end_and_reruns_send_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _webhook(tmp_path, monkeypatch) as (hook, config, store):
        scores = _scores(12, {5: 1500.0, 6: 1800.0, 7: 1700.0})
        for day in range(12):
            _run_day(config, store, scores, day)
            if day == 6:  # the same day again, twice: nothing new goes out
                again = _run_day(config, store, scores, day)
                _run_day(config, store, scores, day)
                assert again.new_notices == 0 and again.sent == 0
        kinds = [b["kind"] for b in hook.bodies]
        assert kinds == ["opened", "update", "update", "ended"]
        opened, update1, update2, ended = hook.bodies
        incident_id = opened["incident_id"]
        assert incident_id == "acme-20240306T0000"
        assert {b["incident_id"] for b in hook.bodies} == {incident_id}
        # The day-3 update carries the running total: 500 + 800 + 700 over the expectation.
        assert update2["steps"] == 3 and update2["subject"].startswith("[high] acme: day 3, +$2")
        assert update2["impact"] == pytest.approx(2000.0)
        assert update1["impact"] == pytest.approx(1300.0)
        assert ended["subject"].startswith("Ended: acme")
        assert opened["plot"] == "/plots/acme.png"
        assert opened["headline"] and opened["detail"] and opened["explainer"] == "offline"
        assert incident_id in opened["text"]  # the id is printed for feedback
        # The incident ended once the customer was scored 2 days past its last anomaly.
        row = store.incident(incident_id)
        assert row is not None and row["status"] == "ended"
        sent = store.deliveries(statuses=("sent",))
        assert len(sent) == 4 and (sent["attempts"] == 1).all()


def test_plots_are_drawn_only_for_customers_with_a_notice_that_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Drawing a plot takes about a second: the daily run of a portfolio must not redraw every
    # customer with an incident in the lookback window each day, only those it writes about.
    with _webhook(tmp_path, monkeypatch) as (hook, config, store):
        scores = pd.concat(
            [_scores(12, {2: 1900.0}), _scores(12, {5: 1500.0, 6: 1800.0}, customer="globex")]
        )
        asked: dict[int, list[list[str]]] = {}

        def draw(customers: list[str]) -> dict[str, str]:
            asked[day].append(customers)
            return {cid: f"/plots/{cid}-{day}.png" for cid in customers}

        for day in range(10):
            asked[day] = []
            known = scores[scores["timestamp"] <= START + pd.Timedelta(days=day)]
            incidents = explain_incidents(known, None, config.explain)
            last = known.groupby("customer_id")["timestamp"].max().to_dict()
            for _ in range(2):  # the day re-run draws nothing
                process_day(
                    config,
                    store,
                    f"{START + pd.Timedelta(days=day):%Y-%m-%d}",
                    incidents,
                    last,
                    plots=draw,
                    sleep=lambda s: None,
                )
        # acme: opened on day 2, ended on day 4; globex: opened 5, update 6, ended 8.
        assert {d: a for d, a in asked.items() if a} == {
            2: [["acme"]],
            4: [["acme"]],
            5: [["globex"]],
            6: [["globex"]],
            8: [["globex"]],
        }
        plots = [(b["kind"], b["customer_id"], b["plot"]) for b in hook.bodies]
        assert plots == [
            ("opened", "acme", "/plots/acme-2.png"),
            ("ended", "acme", "/plots/acme-4.png"),
            ("opened", "globex", "/plots/globex-5.png"),
            ("update", "globex", "/plots/globex-6.png"),
            ("ended", "globex", "/plots/globex-8.png"),
        ]


def test_slack_payload_and_secret_header_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with webhook_server(path=f"/services/{TOKEN}") as hook:
        monkeypatch.setenv("TEST_HOOK_URL", hook.url)
        monkeypatch.setenv("TEST_HOOK_TOKEN", f"Bearer {TOKEN}")
        sub = {
            "name": "slack",
            "channel": "slack",
            "url_env": "TEST_HOOK_URL",
            "header_env": {"Authorization": "TEST_HOOK_TOKEN"},
        }
        config = _config(tmp_path, [sub])
        store = OperationsStore.for_config(config)
        scores = _scores(8, {5: 2000.0})
        hook.script = [500]  # one failure first, so an error path runs too
        with caplog.at_level(logging.DEBUG):
            for day in range(8):
                _run_day(config, store, scores, day)
        assert len(hook.requests) == 2  # opened (after a retried 500) and ended
        first = hook.requests[0]
        assert first["headers"]["Authorization"] == f"Bearer {TOKEN}"
        assert set(first["body"]) == {"text", "blocks"}
        assert "acme-20240306T0000" in first["body"]["blocks"][1]["text"]["text"]
        # No secret in the store or in the logs.
        _assert_no_secret(store, caplog, TOKEN)
        assert "HTTP 500" in caplog.text


def _assert_no_secret(
    store: OperationsStore, caplog: pytest.LogCaptureFixture, secret: str
) -> None:
    with store.engine.connect() as conn:
        for table in ("alert_deliveries", "incidents", "feedback"):
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")):
                assert secret not in json.dumps([str(v) for v in row])
    assert secret not in caplog.text
    db = Path(store.url.removeprefix("sqlite:///"))
    assert secret.encode() not in db.read_bytes()


def test_server_errors_and_timeouts_are_retried_with_backoff_then_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = _webhook(tmp_path, monkeypatch, timeout_seconds=0.3, max_attempts=3)
    with slow as (hook, config, store):
        scores = _scores(8, {5: 2000.0})
        for day in range(5):
            _run_day(config, store, scores, day)
        # Day 5: 500, a stall past the timeout, then 200: delivered on the third attempt.
        hook.script = [500, ("stall", 1.0)]
        sleeps: list[float] = []
        summary = _run_day(config, store, scores, 5, sleeps=sleeps)
        assert summary.sent == 1 and summary.failed == 0
        assert sleeps == [0.01, 0.02]  # exponential backoff between the three attempts
        row = store.deliveries(statuses=("sent",)).iloc[0]
        assert row["attempts"] == 3 and hook.attempts == 3
        # Day 6 and 7: the server is down. The run returns normally and records the failure.
        hook.default_status = 503
        summary = _run_day(config, store, scores, 6)
        summary = _run_day(config, store, scores, 7)
        assert summary.failed == 1 and summary.errors == ["ops: HTTP 503"]
        failed = store.deliveries(statuses=("failed",))
        assert list(failed["kind"]) == ["ended"]
        assert failed.iloc[0]["attempts"] == 3 and failed.iloc[0]["last_error"] == "HTTP 503"
        # The next run (same day re-run after the outage) delivers it, once.
        hook.default_status = 200
        summary = _run_day(config, store, scores, 7)
        assert summary.sent == 1
        assert [b["kind"] for b in hook.bodies] == ["opened", "ended"]
        assert store.deliveries(statuses=("failed", "pending")).empty


def test_timeout_is_recorded_as_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = _webhook(tmp_path, monkeypatch, timeout_seconds=0.2, max_attempts=2)
    with slow as (hook, config, store):
        hook.script = [("stall", 0.8), ("stall", 0.8)]
        summary = _run_day(config, store, _scores(6, {5: 2000.0}), 5)
        assert summary.failed == 1
        assert store.deliveries(statuses=("failed",)).iloc[0]["last_error"] == "timeout"


def test_missing_url_variable_is_recorded_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_HOOK_URL", raising=False)
    config = _config(tmp_path, [_hook()])
    store = OperationsStore.for_config(config)
    summary = _run_day(config, store, _scores(6, {5: 2000.0}), 5)
    assert summary.failed == 1
    error = store.deliveries(statuses=("failed",)).iloc[0]["last_error"]
    assert error == "url_env: environment variable TEST_HOOK_URL is not set"


def test_feedback_not_anomaly_silences_the_repeat_but_not_other_directions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _webhook(tmp_path, monkeypatch) as (hook, config, store):
        # A spike on day 3, the same spike again on day 10, then a drop on day 15.
        scores = _scores(20, {3: 2000.0, 10: 2100.0, 15: 300.0})
        for day in range(7):
            _run_day(config, store, scores, day)
        first = hook.bodies[0]["incident_id"]
        with pytest.raises(KeyError, match="unknown incident"):
            record_feedback(store, "nope-20240101T0000", "not-anomaly")
        row = record_feedback(store, first, "not-anomaly", "nightly batch", author="ana")
        assert row["author"] == "ana" and row["direction"] == "increase"
        for day in range(7, 20):
            _run_day(config, store, scores, day)
        kinds = [(b["incident_id"][-13:-5], b["kind"]) for b in hook.bodies]
        # The repeat on day 10 (2024-03-11) sent nothing; the drop on day 15 was alerted.
        assert kinds == [
            ("20240304", "opened"),
            ("20240304", "ended"),
            ("20240316", "opened"),
            ("20240316", "ended"),
        ]
        suppressed = store.deliveries(statuses=("suppressed",))
        assert set(suppressed["incident_id"]) == {"acme-20240311T0000"}
        assert "silences repeats" in suppressed.iloc[0]["payload"]["suppressed_because"]
        record_feedback(store, "acme-20240316T0000", "accurate")
        precision = precision_over_time(store, freq="M")
        assert precision.to_dict("records") == [
            {"period": "2024-03", "marked": 2, "accurate": 1, "precision": 0.5}
        ]
        assert [str(t.date()) for t in training_exclusions(store)["acme"]] == ["2024-03-16"]


def test_thresholds_severity_and_customer_patterns() -> None:
    incident = {
        "customer_id": "team-a-prod",
        "severity": "medium",
        "impact": 400.0,
        "impact_pct": 25.0,
    }

    def sub(**kw: Any) -> AlertSubscriptionConfig:
        return AlertSubscriptionConfig(name="s", **kw)

    assert incident_matches(sub(), incident)
    assert incident_matches(sub(customers=["team-a-*"]), incident)
    assert not incident_matches(sub(customers=["team-b-*", "other"]), incident)
    assert incident_matches(sub(min_impact=300, min_impact_pct=20), incident)
    assert not incident_matches(sub(min_impact=500, min_impact_pct=20), incident)
    assert incident_matches(sub(min_impact=500, min_impact_pct=20, threshold_mode="any"), incident)
    assert not incident_matches(
        sub(min_impact=500, min_impact_pct=30, threshold_mode="any"), incident
    )
    assert not incident_matches(sub(min_severity="high"), incident)
    # A drop counts by its size.
    assert incident_matches(
        sub(min_impact=300), {**incident, "impact": -400.0, "impact_pct": -25.0}
    )


def test_below_threshold_incident_is_alerted_when_it_grows_past_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _webhook(tmp_path, monkeypatch, _hook(min_impact=1000)) as (hook, config, store):
        scores = _scores(10, {4: 1600.0, 5: 1700.0})
        for day in range(10):
            _run_day(config, store, scores, day)
        assert [(b["kind"], b["steps"]) for b in hook.bodies] == [("opened", 2), ("ended", 2)]


def test_no_data_and_missing_file_alerts_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _webhook(tmp_path, monkeypatch, no_data_after_days=2) as (hook, config, store):
        scores = _scores(5, {})  # data stops after 2024-03-05
        incidents = explain_incidents(scores, None, config.explain)
        last = {"acme": scores["timestamp"].max()}
        for day in ("2024-03-06", "2024-03-07", "2024-03-08", "2024-03-08"):
            process_day(
                config, store, day, incidents, last, day_has_data=False, sleep=lambda s: None
            )
        kinds = [(b["kind"], b["as_of"]) for b in hook.bodies]
        assert kinds == [
            ("missing_file", "2024-03-06"),
            ("no_data", "2024-03-07"),
            ("missing_file", "2024-03-07"),
            ("missing_file", "2024-03-08"),
        ]
        assert "acme has no usage after 2024-03-05" in hook.bodies[1]["subject"]


def test_daily_email_digest_over_smtp_with_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with smtp_server(password=PASSWORD) as mail:
        monkeypatch.setenv("TEST_SMTP_PASSWORD", PASSWORD)
        sub = {
            "name": "finops-mail",
            "channel": "email",
            "smtp_host": "127.0.0.1",
            "smtp_port": mail.port,
            "smtp_username": "alerts",
            "smtp_password_env": "TEST_SMTP_PASSWORD",
            "email_to": ["finops@example.com"],
            "frequency": "weekly",
            "digest_weekday": 0,  # Mondays: 2024-03-04 and 2024-03-11
        }
        config = _config(tmp_path, [sub])
        store = OperationsStore.for_config(config)
        scores = _scores(12, {1: 2000.0, 5: 2500.0})
        with caplog.at_level(logging.DEBUG):
            for day in range(12):
                _run_day(config, store, scores, day)
        assert mail.logins == ["alerts", "alerts"]
        assert len(mail.messages) == 2
        first, second = (m["data"] for m in mail.messages)
        assert "Weekly cost anomaly digest for 2024-03-04" in first
        assert "acme-20240302T0000" in first and "acme-20240306T0000" not in first
        assert "acme-20240306T0000" in second
        assert mail.messages[0]["to"] == ["finops@example.com"]
        assert store.deliveries(statuses=("queued", "failed", "pending")).empty
        _assert_no_secret(store, caplog, PASSWORD)


def test_smtp_refusing_recipients_is_recorded(tmp_path: Path) -> None:
    with smtp_server() as mail:
        mail.refuse_recipients = True
        sub = {
            "name": "mail",
            "channel": "email",
            "smtp_host": "127.0.0.1",
            "smtp_port": mail.port,
            "email_to": ["x@example.com"],
        }
        config = _config(tmp_path, [sub])
        store = OperationsStore.for_config(config)
        summary = _run_day(config, store, _scores(6, {5: 2000.0}), 5)
        assert summary.failed == 1 and not mail.messages
        row = store.deliveries(statuses=("failed",)).iloc[0]
        # Not retryable: one attempt, not three.
        assert row["last_error"] == "SMTP refused every recipient" and row["attempts"] == 1


def test_send_test_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _webhook(tmp_path, monkeypatch) as (hook, config, store):
        result = send_test(config, "ops", store)
        assert result.ok and hook.bodies[0]["kind"] == "test"
        assert hook.bodies[0]["subject"].startswith("TEST ")
        with pytest.raises(KeyError, match="known: ops"):
            send_test(config, "nope", store)
        assert list(store.deliveries()["status"]) == ["sent"]


def _incident_in_store(
    tmp_path: Path, costs: Any, expected: Any, flagged: list[int], as_of: str
) -> tuple[OperationsStore, Any]:
    """A store holding the incidents of acme's ``flagged`` days (35 days from START), and
    acme's series of ``costs``."""
    import numpy as np

    from anomaly_pipelines.core.series import CustomerSeries

    config = _config(tmp_path, [])
    store = OperationsStore.for_config(config)
    stamps = pd.date_range(START, periods=len(costs), freq="D", tz="UTC")
    scores = pd.DataFrame(
        {
            "customer_id": "acme",
            "timestamp": stamps,
            "cost": costs,
            "expected_cost": expected,
            "hybrid_score": [3.0 if i in flagged else 0.1 for i in range(len(costs))],
            "is_anomaly": [i in flagged for i in range(len(costs))],
        }
    )
    incidents = explain_incidents(scores, None, config.explain)
    process_day(config, store, as_of, incidents, {"acme": stamps[-1]}, sleep=lambda s: None)
    series = CustomerSeries(
        "acme", pd.DatetimeIndex(stamps), costs, np.zeros(len(costs), bool), pd.Timedelta(days=1)
    )
    return store, series


def test_accurate_incidents_are_replaced_by_the_usual_level_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import numpy as np

    from anomaly_pipelines.core.feedback import exclude_from_training

    monkeypatch.delenv("TEST_HOOK_URL", raising=False)
    # Weekdays cost their index (Mon=0 ... Sun=6) x 10; days 29 and 30 spike.
    stamps = pd.date_range(START, periods=35, freq="D", tz="UTC")
    values = np.array([10.0 * t.weekday() + 1 for t in stamps])
    spiked = values.copy()
    spiked[[29, 30]] = 999.0
    store, series = _incident_in_store(tmp_path, spiked, values, [29, 30], "2024-04-04")
    other = dataclasses.replace(series, customer_id="globex")
    same, replaced = exclude_from_training([series, other], store)
    assert replaced == {} and same[0] is series  # no feedback yet: nothing changes
    record_feedback(store, "acme-20240330T0000", "accurate")
    (cleaned, untouched), replaced = exclude_from_training([series, other], store)
    assert replaced == {"acme": 2}
    np.testing.assert_array_equal(cleaned.values, values)  # the usual level of those weekdays
    assert list(np.flatnonzero(cleaned.filled)) == [29, 30]
    assert untouched is other and series.values[29] == 999.0  # inputs are not modified


def test_planned_incidents_are_marked_normal_for_training_and_scoring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from anomaly_pipelines.core.feedback import mark_declared_normal

    monkeypatch.delenv("TEST_HOOK_URL", raising=False)
    values = np.full(35, 10.0)
    values[29:] = 30.0  # a planned migration: the new level from day 29 on
    store, series = _incident_in_store(tmp_path, values, 10.0, list(range(29, 35)), "2024-04-05")
    same, marked = mark_declared_normal([series], store)
    assert marked == {} and same[0] is series
    record_feedback(store, "acme-20240330T0000", "accurate")
    record_feedback(store, "acme-20240330T0000", "planned", note="migration to the new cluster")
    (declared,), marked = mark_declared_normal([series], store)  # the latest judgement counts
    assert marked == {"acme": 6}
    assert list(np.flatnonzero(declared.declared_normal)) == list(range(29, 35))
    assert series.declared_normal is None  # inputs are not modified


def test_concurrent_runs_of_the_same_day_send_each_alert_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from anomaly_pipelines.core.alerts import flush

    with _webhook(tmp_path, monkeypatch, max_attempts=1) as (hook, config, store):
        scores = _scores(12, {3: 2000.0, 7: 1900.0})
        hook.default_status = 503  # everything fails first: 4 notices wait as "failed"
        for day in range(12):
            _run_day(config, store, scores, day)
        failed = store.deliveries(statuses=("failed",))
        assert len(failed) == 4 and not hook.requests
        first_attempts = hook.attempts
        hook.default_status = 200
        hook.script = [("sleep", 0.2)] * 4  # a slow receiver: the three runs overlap
        runs = [
            threading.Thread(
                target=flush, args=(config, store, "2024-03-12"), kwargs={"sleep": lambda s: None}
            )
            for _ in range(3)
        ]
        for run in runs:
            run.start()
        for run in runs:
            run.join()
        assert sorted(b["kind"] for b in hook.bodies) == ["ended", "ended", "opened", "opened"]
        assert hook.attempts == first_attempts + 4  # one send per notice, not one per run
        assert set(store.deliveries()["status"]) == {"sent"}
