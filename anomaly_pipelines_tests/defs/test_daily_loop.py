"""The daily loop through a real Dagster instance: billing files arrive one day at a time, the
daily job scores each day and sends alerts to a loopback webhook, a person marks an incident
``not-anomaly`` from the CLI, and its repeat is not alerted.

One trained history (ingest + batch training, 2 epochs), then one daily run per simulated day.
"""

from __future__ import annotations

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
from anomaly_pipelines.defs.settings import read_config
from anomaly_pipelines_tests.defs.conftest import write_config
from anomaly_pipelines_tests.loopback import webhook_server

START = pd.Timestamp("2024-01-01")
HISTORY_DAYS = 112
CUSTOMERS = ("acme", "globex", "initech")
# acme spends 5x its usual on these days (offsets from START): one 3-day incident, and a repeat
# after the detector's quiet period (two windows: a flare-up within it is only ``is_repeat``), so
# the repeat is a new incident, which the feedback on the first one silences.
REPEAT = 134
SPIKES = {116: 5.0, 117: 5.0, 118: 5.0, REPEAT: 5.0}
# initech moves to a new steady level (a migrated workload): drift, then a retrain.
SHIFT_FROM, SHIFT = 118, 1.8
MISSING = 127  # no file arrives that day
LAST = REPEAT + 1


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


def _tick(defs: dg.Definitions, sensor: str, instance: dg.DagsterInstance) -> Any:
    """One evaluation of a sensor, as the daemon does it: with the instance as the store of
    dynamic partitions."""
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        return defs.resolve_sensor_def(sensor).evaluate_tick(
            dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def())
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
    with webhook_server() as hook:
        monkeypatch.setenv("LOOP_HOOK_URL", hook.url)
        config_path = write_config(
            tmp_path,
            {
                "source": {"kind": "daily_folder", "path": str(folder)},
                "preprocess": {"min_history": 28},
                "feedback": {"suppress_days": 30},
                "alerts": {
                    "subscriptions": [
                        {"name": "finops", "channel": "webhook", "url_env": "LOOP_HOOK_URL"}
                    ],
                    "backoff_seconds": 0.01,
                },
            },
        )
        config = read_config(str(config_path))
        defs = build_definitions(config_path=str(config_path))
        job = defs.resolve_job_def("daily_scoring_job")
        with dg.instance_for_test() as instance:
            run_demo(str(config_path), instance=instance, log_level="WARNING")

            def run(day: int) -> dg.ExecuteInProcessResult:
                key = (START + pd.Timedelta(days=day)).strftime("%Y-%m-%d")
                result = job.execute_in_process(instance=instance, partition_key=key)
                assert result.success
                return result

            checks: dict[int, dict[str, bool]] = {}
            for day in range(HISTORY_DAYS, LAST + 1):
                if day != MISSING:
                    _write_day(folder, day)
                result = run(day)
                checks[day] = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
                if day == 117:  # a re-run of the same day sends nothing again
                    before = len(hook.requests)
                    run(day)
                    assert len(hook.requests) == before
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

            # Drift of every customer against its champion, then the retrain sensor's requests.
            drift = defs.resolve_job_def("drift_job").execute_in_process(instance=instance)
            measures = drift.output_for_node("model_drift")
            assert sorted(measures["customer_id"]) == list(CUSTOMERS)
            assert measures["residual_ks"].notna().all() and (measures["model_age_days"] < 1).all()
            tick = _tick(defs, "retrain_sensor", instance)
            expected = sorted(
                measures.loc[measures["drifted"] | measures["stale"], "partition_key"]
            )
            assert sorted(r.partition_key for r in tick.run_requests or []) == expected
            # The level shift drifted; the steady customer did not.
            drifted = measures.set_index("customer_id")["drifted"]
            assert drifted["initech"] and not drifted["globex"], measures.to_dict("records")
            # The requested retrain (after an ingest that reads the new files) registers a
            # challenger, and the gate's decision is recorded in MLflow and followed by the alias.
            defs.resolve_job_def("ingest_job").execute_in_process(instance=instance)
            request = next(r for r in tick.run_requests if r.partition_key == "initech")
            retrain = defs.resolve_job_def("customer_job").execute_in_process(
                instance=instance, partition_key=request.partition_key, tags=request.tags
            )
            assert retrain.success
            registry = ModelRegistry(config.mlflow)
            assert registry.versions("initech") == ["1", "2"]
            client = MlflowClient(registry.tracking_uri, registry.tracking_uri)
            tags = client.get_model_version(registry.registered_name("initech"), "2").tags
            assert tags["compared_with_version"] == "1" and tags["holdout_days"] == "28"
            promoted = tags["challenger_decision"] == "promoted"
            assert registry.champion_version("initech") == ("2" if promoted else "1")
            assert float(tags["challenger_cost"]) <= float(tags["champion_cost"]) or not promoted
            print(f"retrained initech: {tags['challenger_reason']}")

        acme = [(b["kind"], b["as_of"]) for b in hook.bodies if b.get("customer_id") == "acme"]
        first = [b for b in hook.bodies if b.get("incident_id") == "acme-20240426T0000"]
        assert [b["kind"] for b in first] == ["opened", "update", "update", "ended"], acme
        assert first[0]["as_of"] == "2024-04-26" and first[-1]["as_of"] == "2024-04-30"
        assert first[2]["subject"].startswith("[critical] acme: day 3, +$")
        assert Path(first[0]["plot"]).is_file()
        # The repeat on 2024-05-14 was recorded as suppressed, not sent.
        store = OperationsStore.for_config(config)
        suppressed = store.deliveries(statuses=("suppressed",))
        assert set(suppressed["incident_id"]) == {"acme-20240514T0000"}
        assert not any(b.get("incident_id") == "acme-20240514T0000" for b in hook.bodies)
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
        print(
            "figures:",
            {k: int(v) for k, v in store.deliveries()["status"].value_counts().items()},
            {k: int(v) for k, v in store.deliveries()["kind"].value_counts().items()},
        )


def test_retrain_sensor_requests_each_listed_customer_once_per_drift_measurement() -> None:
    from anomaly_pipelines.defs.assets.drift import RETRAIN_KEYS

    defs = build_definitions()
    with dg.instance_for_test() as instance:

        def tick() -> Any:
            return _tick(defs, "retrain_sensor", instance)

        assert "not been materialized" in (tick().skip_message or "")
        instance.add_dynamic_partitions("customers", ["acme", "globex"])
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                "model_drift", metadata={RETRAIN_KEYS: dg.MetadataValue.json(["acme", "gone"])}
            )
        )
        first = tick()
        # "gone" is no longer a customer partition: nothing to train.
        assert [r.partition_key for r in first.run_requests] == ["acme"]
        assert first.run_requests[0].run_key == tick().run_requests[0].run_key  # same measurement
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                "model_drift", metadata={RETRAIN_KEYS: dg.MetadataValue.json([])}
            )
        )
        assert "no drifted" in (tick().skip_message or "")


def test_new_customer_sensor_trains_partitions_never_trained() -> None:
    defs = build_definitions()
    with dg.instance_for_test() as instance:

        def tick() -> Any:
            return _tick(defs, "new_customer_sensor", instance)

        assert "every customer" in (tick().skip_message or "")
        instance.add_dynamic_partitions("customers", ["acme", "globex"])
        assert "run ingest_job first" in (tick().skip_message or "")
        instance.report_runless_asset_event(dg.AssetMaterialization("validated_usage"))
        instance.report_runless_asset_event(
            dg.AssetMaterialization("lstm_autoencoder", partition="acme")
        )
        first = tick()
        assert [r.partition_key for r in first.run_requests] == ["globex"]
        assert first.run_requests[0].run_key == tick().run_requests[0].run_key
        # A new ingest (new rows) makes a new request for a customer still untrained.
        instance.report_runless_asset_event(dg.AssetMaterialization("validated_usage"))
        assert tick().run_requests[0].run_key != first.run_requests[0].run_key
