"""The code location loads, is complete and stays light: what ``dg dev`` and ``dg check defs``
need before any run happens."""

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from anomaly_pipelines.definitions import build_definitions, defs
from anomaly_pipelines.defs.automation import CUSTOMER_DRIFT, REASON_TAG
from anomaly_pipelines.defs.jobs import (
    CUSTOMER_ASSETS,
    DAILY_ASSETS,
    INGEST_ASSETS,
    OPERATIONS_ASSETS,
    REPORT_ASSETS,
    TRAINS,
)
from anomaly_pipelines.defs.resources import PipelineSettings

ROOT = Path(__file__).resolve().parents[2]
CHAIN = [
    ("raw_usage", "validated_usage"),
    ("validated_usage", "customer_series"),
    ("customer_series", "lstm_autoencoder"),
    ("customer_series", "isolation_forest"),
    ("customer_series", "local_outlier_factor"),
    ("customer_series", "anomaly_scores"),
    ("lstm_autoencoder", "anomaly_scores"),
    ("isolation_forest", "anomaly_scores"),
    ("local_outlier_factor", "anomaly_scores"),
    ("anomaly_scores", "anomaly_explanations"),
    ("anomaly_explanations", "anomaly_plots"),
    ("anomaly_scores", "scores_export"),
    ("anomaly_plots", "anomaly_report"),
    ("daily_usage", "daily_scores"),
    ("validated_usage", "daily_scores"),
    ("daily_scores", "daily_alerts"),
    ("daily_usage", "daily_alerts"),
    ("anomaly_scores", "model_drift"),
    ("daily_scores", "model_drift"),
    (CUSTOMER_DRIFT, "customer_series"),
    (CUSTOMER_DRIFT, "lstm_autoencoder"),
]


def test_definitions_validate() -> None:
    dg.Definitions.validate_loadable(defs)


def test_every_asset_is_documented_grouped_and_kinded() -> None:
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    expected = {
        *INGEST_ASSETS,
        *CUSTOMER_ASSETS,
        *REPORT_ASSETS,
        *DAILY_ASSETS,
        *OPERATIONS_ASSETS,
        CUSTOMER_DRIFT,
    }
    assert set(specs) == expected
    for name, spec in specs.items():
        assert spec.description and len(spec.description) > 40, name
        assert spec.group_name and spec.group_name != "default", name
        assert spec.kinds, name


def test_the_required_chain() -> None:
    graph = defs.resolve_asset_graph()
    for upstream, downstream in CHAIN:
        parents = {k.to_user_string() for k in graph.get(dg.AssetKey(downstream)).parent_keys}
        assert upstream in parents, f"{upstream} -> {downstream}"


def test_customer_assets_are_dynamic_single_run_partitions() -> None:
    graph = defs.resolve_asset_graph()
    for name in CUSTOMER_ASSETS:
        node = graph.get(dg.AssetKey(name))
        assert isinstance(node.partitions_def, dg.DynamicPartitionsDefinition), name
        assert node.partitions_def.name == "customers"
        assert node.backfill_policy == dg.BackfillPolicy.single_run(), name
    for name in DAILY_ASSETS:
        assert isinstance(graph.get(dg.AssetKey(name)).partitions_def, dg.DailyPartitionsDefinition)
    for name in (*INGEST_ASSETS, *REPORT_ASSETS, *OPERATIONS_ASSETS):  # no date x customer grid
        assert graph.get(dg.AssetKey(name)).partitions_def is None


def test_jobs_schedule_and_sensor() -> None:
    names = {j.name for j in defs.resolve_all_job_defs()}
    assert {"ingest_job", "customer_job", "batch_job", "report_job", "daily_scoring_job"} <= names
    assert "drift_job" in names
    for schedule in ("ingest_schedule", "daily_scoring_schedule"):
        assert (
            defs.resolve_schedule_def(schedule).default_status == dg.DefaultScheduleStatus.RUNNING
        )
    assert (
        defs.resolve_sensor_def("daily_files_sensor").default_status
        == dg.DefaultSensorStatus.STOPPED
    )


def test_automation_sensors_cover_every_automated_asset_run_by_default_and_tag_their_runs() -> None:
    """Dagster's own default_automation_condition_sensor starts stopped: every asset with an
    automation condition must be evaluated by one of ours, which start running."""
    graph = defs.resolve_asset_graph()
    automated = {k for k in graph.get_all_asset_keys() if graph.get(k).automation_condition}
    sensors = {s.name: s for s in defs.get_repository_def().sensor_defs}
    assert "default_automation_condition_sensor" not in sensors
    customers = sensors["customer_automation_sensor"]
    drift = sensors["drift_automation_sensor"]
    assert isinstance(customers, dg.AutomationConditionSensorDefinition)
    assert isinstance(drift, dg.AutomationConditionSensorDefinition)
    targets = {s.name: s.asset_selection.resolve(graph) for s in (customers, drift)}
    assert targets["customer_automation_sensor"] == {dg.AssetKey(k) for k in CUSTOMER_ASSETS}
    assert targets["drift_automation_sensor"] == {dg.AssetKey(k) for k in OPERATIONS_ASSETS}
    assert automated == set().union(*targets.values())
    for sensor in (customers, drift):
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        assert sensor.run_tags[REASON_TAG]
    # Automated trainings wait for the one training slot of configs/dagster.yaml.
    assert TRAINS.items() <= customers.run_tags.items()


def test_build_definitions_binds_the_given_config(tmp_path: Path) -> None:
    from anomaly_pipelines_tests.defs.conftest import write_config

    path = write_config(tmp_path)
    built = build_definitions(config_path=str(path), overrides={"lstm": {"epochs": 1}})
    settings = PipelineSettings.in_definitions(built)
    assert settings.config.lstm.epochs == 1
    assert settings.config.output.directory == str(tmp_path / "outputs")
    assert built.resources["io_manager"].base_dir == str(tmp_path / "outputs" / "storage")


def test_build_definitions_honours_the_orchestration_of_the_given_config(tmp_path: Path) -> None:
    """The partitions, the schedule, the executor and the alert lookback are part of the code
    location: they must follow the configuration passed in, not the default file."""
    from anomaly_pipelines_tests.defs.conftest import write_config

    orchestration = {
        "daily_start_date": "2025-03-01",
        "timezone": "Europe/Berlin",
        "daily_hour": 9,
        "daily_minute": 30,
        "ingest_cron": "0 7 * * 1-5",
        "schedule_running_by_default": False,
        "executor": "in_process",
    }
    path = write_config(tmp_path, {"orchestration": orchestration, "alerts": {"lookback_days": 3}})
    built = build_definitions(config_path=str(path))
    graph = built.resolve_asset_graph()
    for name in DAILY_ASSETS:
        days = graph.get(dg.AssetKey(name)).partitions_def
        assert isinstance(days, dg.DailyPartitionsDefinition), name
        assert days.start.strftime("%Y-%m-%d") == "2025-03-01", name
        assert days.timezone == "Europe/Berlin", name
    schedule = built.resolve_schedule_def("daily_scoring_schedule")
    assert schedule.cron_schedule == "30 9 * * *"
    assert schedule.execution_timezone == "Europe/Berlin"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    # The ingest: its own cron, in the same time zone, whole source (no partition) each tick.
    ingest = built.resolve_schedule_def("ingest_schedule")
    assert (ingest.cron_schedule, ingest.execution_timezone) == ("0 7 * * 1-5", "Europe/Berlin")
    assert ingest.job_name == "ingest_job"
    assert ingest.default_status == dg.DefaultScheduleStatus.STOPPED
    with dg.instance_for_test() as instance:
        tick = datetime(2025, 3, 3, 7, tzinfo=ZoneInfo("Europe/Berlin"))
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=tick)
        (request,) = ingest.evaluate_tick(context).run_requests or []
    assert request.partition_key is None
    assert built.resolve_job_def("batch_job").executor_def.name == "in_process"
    alerts = built.resolve_assets_def("daily_alerts")
    mapping = alerts.get_partition_mapping(dg.AssetKey("daily_scores"))
    assert isinstance(mapping, dg.TimeWindowPartitionMapping) and mapping.start_offset == -2
    # The default code location is unchanged by building another one.
    default_days = defs.resolve_asset_graph().get(dg.AssetKey("daily_scores")).partitions_def
    assert default_days.start.strftime("%Y-%m-%d") != "2025-03-01"


def test_runs_use_the_configuration_read_when_the_code_location_was_built(tmp_path: Path) -> None:
    """One reading per code location: a run does not re-read the YAML (which may have been
    edited or removed since), and a run's overrides go on top of that reading, not on top of
    the defaults (Dagster replaces a resource's whole run config)."""
    from anomaly_pipelines_tests.defs.conftest import write_config

    path = write_config(tmp_path, {"source": {"synthetic": {"customers": 2, "days": 60}}})
    built = build_definitions(config_path=str(path))
    path.unlink()
    with dg.instance_for_test() as instance:
        result = built.resolve_job_def("ingest_job").execute_in_process(instance=instance)
        assert result.success
        usage = result.output_for_node("validated_usage", "validated_usage")
        assert usage["customer_id"].nunique() == 2
        assert usage["timestamp"].nunique() == 60
        overridden = built.resolve_job_def("ingest_job").execute_in_process(
            instance=instance,
            run_config={
                "resources": {
                    "pipeline_settings": {
                        "config": {"overrides": {"source": {"synthetic": {"customers": 3}}}}
                    }
                }
            },
        )
        usage = overridden.output_for_node("validated_usage", "validated_usage")
        assert usage["customer_id"].nunique() == 3
        assert usage["timestamp"].nunique() == 60  # the file's days, not the default's
    # Everything the runs stored went where the file said, not into the checkout's data/.
    assert any((tmp_path / "outputs" / "storage").iterdir())


def test_loading_imports_no_heavy_library() -> None:
    """TensorFlow, MLflow, google-genai and scikit-learn load inside runs, never with the code
    location (``dg dev`` reloads it on every code change)."""
    code = (
        "import sys, json, anomaly_pipelines.definitions as d; "
        "print(json.dumps([m for m in ('tensorflow', 'keras', 'mlflow', 'google.genai', 'sklearn', 'pandera') "
        "if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize(
    "command",
    [
        ["dg", "check", "defs"],
        ["dagster", "definitions", "validate", "-w", "workspace.yaml"],
    ],
    ids=["dg-check-defs", "dagster-workspace"],
)
def test_cli_loads_the_code_location(command: list[str]) -> None:
    executable = Path(sys.executable).parent / command[0]
    env = {**os.environ, "DAGSTER_HOME": ""}
    env.pop("DAGSTER_HOME")
    started = time.perf_counter()
    out = subprocess.run(
        [str(executable), *command[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    elapsed = time.perf_counter() - started
    print(f"{' '.join(command)}: {elapsed:.1f} s wall clock")  # measured, not asserted (shared CPU)
    assert out.returncode == 0, out.stdout + out.stderr


def test_report_before_any_scoring_fails_with_a_clear_message(tmp_path: Path) -> None:
    from anomaly_pipelines_tests.defs.conftest import write_config

    built = build_definitions(config_path=str(write_config(tmp_path)))
    with dg.instance_for_test() as instance:
        result = built.resolve_job_def("report_job").execute_in_process(
            instance=instance, raise_on_error=False
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "no stored anomaly_scores" in str(failure.event_specific_data.error)
    assert not (tmp_path / "outputs" / "scores" / "anomaly_scores.parquet").exists()
