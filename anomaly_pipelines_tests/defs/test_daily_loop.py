"""The daily loop through a real Dagster instance: billing files arrive one day at a time, the
daily job scores each day and sends alerts to a loopback webhook and a daily e-mail digest to a
loopback SMTP server, a person marks an incident ``not-anomaly`` from the CLI, and its repeat is
not alerted.

One trained history (ingest + batch training, 2 epochs), then one daily run per simulated day;
then what the declarative automation requests (``dagster.evaluate_automation_conditions``, the
evaluation the daemon's automation sensors run): the drift measurement, and the retraining of
the customer whose level shifted.
"""

from __future__ import annotations

import re
from email import message_from_string, policy
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from anomaly_pipelines import cli, run_demo
from anomaly_pipelines.core.alerts import OperationsStore
from anomaly_pipelines.core.alerts.store import dispose_engines
from anomaly_pipelines.core.registry import ModelRegistry
from anomaly_pipelines.definitions import build_definitions
from anomaly_pipelines.defs.assets.drift import recent_history
from anomaly_pipelines.defs.automation import CUSTOMER_DRIFT
from anomaly_pipelines.defs.jobs import CUSTOMER_ASSETS
from anomaly_pipelines.defs.partitions import CUSTOMERS as CUSTOMER_PARTITIONS
from anomaly_pipelines.defs.settings import read_config
from anomaly_pipelines_tests.daemon_ticks import (
    AutomationTicks,
    run_schedule_tick,
    schedule_ticks,
    sensor_run_tags,
)
from anomaly_pipelines_tests.defs.conftest import write_config
from anomaly_pipelines_tests.loopback import smtp_server, webhook_server

START = pd.Timestamp("2024-01-01")
HISTORY_DAYS = 112
CUSTOMERS = ("acme", "globex", "initech")
# acme spends 5x its usual on these days (offsets from START): one 3-day incident, and a repeat
# after the detector's quiet period (two windows: a flare-up within it is only ``is_repeat``), so
# the repeat is a new incident, which the feedback on the first one silences.
REPEAT = 137
SPIKES = {116: 5.0, 117: 5.0, 118: 5.0, REPEAT: 5.0}
# initech moves to a new steady level (a migrated workload): drift, then a retrain.
SHIFT_FROM, SHIFT = 118, 1.8
MISSING = 127  # no file arrives that day
LAST = REPEAT + 1
SMTP_PASSWORD = "loop-smtp-password"


def _cost(customer: int, day: int) -> float:
    rng = np.random.default_rng(1000 * customer + day)
    weekly = 1.0 + 0.25 * (pd.Timestamp(START + pd.Timedelta(days=day)).weekday() < 5)
    return round(100.0 * (customer + 1) * weekly * (1 + 0.03 * rng.standard_normal()), 2)


def _write_day(folder: Path, day: int) -> None:
    date = (START + pd.Timedelta(days=day)).strftime("%Y-%m-%d")
    factor = {
        "acme": SPIKES.get(day, 1.0),
        "globex": 1.0,
        "initech": SHIFT if day >= SHIFT_FROM else 1.0,
    }
    costs = [_cost(i, day) * factor[c] for i, c in enumerate(CUSTOMERS)]
    pd.DataFrame({"customer_id": CUSTOMERS, "Date": date, "TotalCost": costs}).to_csv(
        folder / f"usage_{date}.csv", index=False
    )


@pytest.fixture(autouse=True)
def _engines() -> Any:
    yield
    dispose_engines()


def test_daily_runs_alert_once_per_incident_and_feedback_silences_the_repeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "billing"
    folder.mkdir()
    for day in range(HISTORY_DAYS):
        _write_day(folder, day)
    with webhook_server() as hook, smtp_server(password=SMTP_PASSWORD) as mail:
        monkeypatch.setenv("LOOP_HOOK_URL", hook.url)
        monkeypatch.setenv("LOOP_SMTP_PASSWORD", SMTP_PASSWORD)
        config_path = write_config(
            tmp_path,
            {
                "source": {"kind": "daily_folder", "path": str(folder)},
                "preprocess": {"min_history": 28},
                # initech's retraining (a 139-day series) trains on its first 132 days, 14 of them
                # at the new level. With the default 0.8 its training part would end on day 110,
                # before the shift on day 118: the challenger would judge the shifted days as the
                # champion does (the same days flagged, a tie, promoted only because the gate
                # promotes a challenger that is not worse).
                "training": {"train_fraction": 0.95},
                "feedback": {"suppress_days": 30},
                "alerts": {
                    "subscriptions": [
                        {"name": "finops", "channel": "webhook", "url_env": "LOOP_HOOK_URL"},
                        {
                            "name": "finops-mail",
                            "channel": "email",
                            "smtp_host": "127.0.0.1",
                            "smtp_port": mail.port,
                            "smtp_username": "alerts",
                            "smtp_password_env": "LOOP_SMTP_PASSWORD",
                            "email_to": ["finops@example.com"],
                            "frequency": "daily",
                        },
                    ],
                    "backoff_seconds": 0.01,
                },
            },
        )
        config = read_config(str(config_path))
        defs = build_definitions(config_path=str(config_path))
        job = defs.resolve_job_def("daily_scoring_job")
        ingest = defs.resolve_schedule_def("ingest_schedule")
        with dg.instance_for_test() as instance:
            run_demo(str(config_path), instance=instance, log_level="WARNING")
            # The daemon's automation sensors, ticking from here on (their first tick requests
            # nothing: the demo's customers were just trained).
            automation = AutomationTicks(defs, instance)
            assert automation.tick() == {}

            def run(day: int) -> dg.ExecuteInProcessResult:
                key = (START + pd.Timedelta(days=day)).strftime("%Y-%m-%d")
                result = job.execute_in_process(instance=instance, partition_key=key)
                assert result.success
                return result

            checks: dict[int, dict[str, bool]] = {}
            for day in range(HISTORY_DAYS, LAST + 1):
                if day != MISSING:
                    _write_day(folder, day)
                if day == LAST:  # the morning's ingest_schedule tick (05:00), before the scoring
                    morning = (START + pd.Timedelta(days=day + 1, hours=5)).tz_localize("UTC")
                    day_before = morning - pd.Timedelta(days=1)
                    assert schedule_ticks(ingest, day_before, morning) == [morning]
                    assert len(run_schedule_tick(defs, instance, ingest.name, morning)) == 1
                result = run(day)
                checks[day] = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
                if day == 117:  # a re-run of the same day sends nothing again
                    before = len(hook.requests), len(mail.messages)
                    run(day)
                    assert (len(hook.requests), len(mail.messages)) == before
                if day == 121:
                    incident = next(b for b in hook.bodies if b["kind"] == "opened")
                    assert (
                        cli.main(
                            [
                                "feedback",
                                incident["incident_id"],
                                "not-anomaly",
                                "--note",
                                "load test",
                                "--config-file",
                                str(config_path),
                            ]
                        )
                        == 0
                    )

            # The days were scored: automation measures drift of every customer (one run).
            assert automation.tick() == {"model_drift": {None}}
            drift = defs.resolve_job_def("drift_job").execute_in_process(
                instance=instance, tags=sensor_run_tags(defs, "drift_automation_sensor")
            )
            measures = drift.output_for_node("model_drift")
            assert sorted(measures["customer_id"]) == list(CUSTOMERS)
            assert measures["residual_ks"].notna().all() and (measures["model_age_days"] < 1).all()
            expected = set(measures.loc[measures["drifted"] | measures["stale"], "partition_key"])
            # The level shift drifted; the steady customer did not.
            drifted = measures.set_index("customer_id")["drifted"]
            assert drifted["initech"] and not drifted["globex"], measures.to_dict("records")
            # Automation requests the listed customers' series (from the rows the morning's
            # ingest read), models, scores, explanations and plots, and nothing else.
            assert automation.tick() == {name: expected for name in CUSTOMER_ASSETS}
            # initech's retraining (what the daemon launches, with the sensor's tags) registers
            # a challenger, and the gate's decision is recorded in MLflow and followed by the
            # alias.
            selection = [dg.AssetKey(name) for name in CUSTOMER_ASSETS]
            retrain = defs.resolve_implicit_job_def_def_for_assets(selection).execute_in_process(
                instance=instance,
                asset_selection=selection,
                partition_key="initech",
                tags=sensor_run_tags(defs, "customer_automation_sensor"),
            )
            assert retrain.success
            # Requested once per measurement; the retraining's new scores start no new one.
            assert automation.tick() == {}
            registry = ModelRegistry(config.mlflow)
            assert registry.versions("initech") == ["1", "2"]
            client = MlflowClient(registry.tracking_uri, registry.tracking_uri)
            tags = client.get_model_version(registry.registered_name("initech"), "2").tags
            assert tags["compared_with_version"] == "1" and tags["holdout_days"] == "28"
            print(f"retrained initech: {tags['challenger_reason']}")
            # Having learned the new level, the challenger flags fewer of the newest days than
            # the champion, which still expects the old one: promoted, and the alias follows.
            assert float(tags["challenger_cost"]) < float(tags["champion_cost"]), tags
            assert tags["challenger_decision"] == "promoted"
            assert registry.champion_version("initech") == "2"

        acme = [(b["kind"], b["as_of"]) for b in hook.bodies if b.get("customer_id") == "acme"]
        first = [b for b in hook.bodies if b.get("incident_id") == "acme-20240426T0000"]
        assert [b["kind"] for b in first] == ["opened", "update", "update", "ended"], acme
        assert first[0]["as_of"] == "2024-04-26" and first[-1]["as_of"] == "2024-04-30"
        assert first[2]["subject"].startswith("[critical] acme: day 3, +$")
        assert Path(first[0]["plot"]).is_file()
        # The repeat on 2024-05-17 was recorded as suppressed, not sent.
        store = OperationsStore.for_config(config)
        suppressed = store.deliveries(statuses=("suppressed",))
        assert set(suppressed["incident_id"]) == {"acme-20240517T0000"}
        assert not any(b.get("incident_id") == "acme-20240517T0000" for b in hook.bodies)
        # The missing file was reported once, and its day's check failed (a warning).
        missing = [b for b in hook.bodies if b["kind"] == "missing_file"]
        assert [b["as_of"] for b in missing] == ["2024-05-07"]
        assert checks[MISSING]["daily_data_arrived"] is False
        assert checks[MISSING - 1]["daily_data_arrived"] is True
        assert all(c["daily_alerts_delivered"] for c in checks.values())
        # The steady customer was never alerted; the shifted one was, from its first day.
        assert {b.get("customer_id") for b in hook.bodies} <= {"acme", "initech", None}
        shifted = [b for b in hook.bodies if b.get("customer_id") == "initech"]
        assert shifted[0]["kind"] == "opened" and shifted[0]["as_of"] == "2024-04-28"
        assert sum(b["kind"] == "opened" for b in shifted) == 1  # one incident, updated daily
        _assert_daily_digests(mail.messages, hook.bodies, secrets=(SMTP_PASSWORD, hook.url))
        assert mail.logins == ["alerts"] * len(mail.messages)  # the password from the environment
        assert store.deliveries(subscription="finops-mail", statuses=("queued", "failed")).empty
        assert SMTP_PASSWORD not in store.deliveries().to_json()
        print(
            "figures:",
            {k: int(v) for k, v in store.deliveries()["status"].value_counts().items()},
            {k: int(v) for k, v in store.deliveries()["kind"].value_counts().items()},
        )


def _assert_daily_digests(
    messages: list[dict[str, Any]], bodies: list[dict[str, Any]], secrets: tuple[str, ...]
) -> None:
    """One e-mail per day that had alerts, each listing that day's notices (the webhook got
    the same ones one by one), the suppressed repeat in none, and no secret anywhere."""
    digests: dict[str, str] = {}
    for received in messages:
        email = message_from_string(received["data"], policy=policy.default)
        day = re.fullmatch(r"Daily cost anomaly digest for (\S+): \d+ notice\(s\)", email["Subject"])
        assert day is not None, email["Subject"]
        assert day[1] not in digests and received["to"] == ["finops@example.com"]
        digests[day[1]] = email.get_content()
    assert sorted(digests) == sorted({b["as_of"] for b in bodies})
    for day, text in digests.items():
        sent = [b for b in bodies if b["as_of"] == day]
        assert text.count("-" * 40) == len(sent) - 1  # the items' separators
        assert all(b["subject"] in text for b in sent)
        assert all(f"Incident: {b['incident_id']}" in text for b in sent if b.get("incident_id"))
        assert "acme-20240517T0000" not in text
    assert not any(secret in received["data"] for secret in secrets for received in messages)


def _materialize(instance: dg.DagsterInstance, asset: str, partitions: list[str]) -> None:
    for key in partitions:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=key))


def test_automation_trains_a_new_customer_once_its_rows_are_ingested() -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        automation = AutomationTicks(build_definitions(), instance)
        assert automation.tick() == {}
        # Registered by a day's file: validated_usage has no rows of it yet, nothing to train on.
        instance.add_dynamic_partitions(CUSTOMER_PARTITIONS, ["acme"])
        assert automation.tick() == {}
        # The next ingest has its rows: series, models, scores, explanations, plots, in one go.
        instance.report_runless_asset_event(dg.AssetMaterialization("validated_usage"))
        assert automation.tick() == {name: {"acme"} for name in CUSTOMER_ASSETS}
        assert automation.tick() == {}  # requested once
        for name in CUSTOMER_ASSETS:  # the run did its work
            _materialize(instance, name, ["acme"])
        # A later ingest trains the newly registered customer only.
        instance.add_dynamic_partitions(CUSTOMER_PARTITIONS, ["globex"])
        instance.report_runless_asset_event(dg.AssetMaterialization("validated_usage"))
        assert automation.tick() == {name: {"globex"} for name in CUSTOMER_ASSETS}


def test_automation_retrains_the_customers_each_drift_measurement_lists_once() -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        automation = AutomationTicks(build_definitions(), instance)
        instance.add_dynamic_partitions(CUSTOMER_PARTITIONS, ["acme", "globex"])
        for name in CUSTOMER_ASSETS:
            _materialize(instance, name, ["acme", "globex"])
        assert automation.tick() == {}
        # A drift measurement lists acme (model_drift records its customer_drift partition).
        _materialize(instance, CUSTOMER_DRIFT, ["acme"])
        assert automation.tick() == {name: {"acme"} for name in CUSTOMER_ASSETS}
        assert automation.tick() == {}  # once per measurement
        for name in CUSTOMER_ASSETS:  # the retraining rescored acme: no new measurement, no loop
            _materialize(instance, name, ["acme"])
        assert automation.tick() == {}
        # A day was scored: drift is measured (once), though most days were never scored.
        instance.report_runless_asset_event(
            dg.AssetMaterialization("daily_scores", partition="2025-03-01")
        )
        assert automation.tick() == {"model_drift": {None}}
        assert automation.tick() == {}
        # That measurement lists acme again: retrained again; globex never.
        _materialize(instance, CUSTOMER_DRIFT, ["acme"])
        assert automation.tick() == {name: {"acme"} for name in CUSTOMER_ASSETS}


def test_drift_measures_a_retrained_customer_on_the_days_after_its_series_only() -> None:
    days = pd.date_range("2024-01-01", periods=10, freq="D", tz="UTC")

    def scores(customer: str, stamps: pd.DatetimeIndex, split: str, **extra: Any) -> pd.DataFrame:
        return pd.DataFrame(
            {"customer_id": customer, "timestamp": stamps, "split": split, "is_anomaly": True}
        ).assign(**extra)

    # acme was retrained on days 0-7 (its training part days 0-5); globex was never trained.
    batch = pd.concat([scores("acme", days[:6], "train"), scores("acme", days[6:8], "test")])
    # Daily scores of acme's days 5-9, the first three by the champion before the retraining.
    daily = pd.concat(
        [scores("acme", days[5:], "daily", as_of="x"), scores("globex", days[8:], "daily")]
    )
    history = recent_history(batch, daily)
    acme = history[history["customer_id"] == "acme"]
    # What the champion learned from, then only the days its training never saw: the days
    # the retraining was judged on are not measured again (it would be listed again for them).
    assert list(acme["split"]) == ["train"] * 6 + ["daily"] * 2
    assert list(acme["timestamp"]) == [*days[:6], *days[8:]]
    assert list(history.loc[history["customer_id"] == "globex", "timestamp"]) == list(days[8:])
    assert "as_of" not in history.columns
