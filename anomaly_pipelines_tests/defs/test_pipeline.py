"""The whole graph, end to end, on a small synthetic set: the demo command (ingest + ONE batch run
over every customer + export + report) in a fresh temp Dagster instance with a temp MLflow store,
then a per-customer run, a champion-alias rollback, and the daily schedule's run.

Module-scoped fixtures chain the steps so each expensive training runs once; every test asserts
on real outputs (files, the Dagster instance, the MLflow registry), nothing is mocked.
"""

import contextlib
import io
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest

from anomaly_pipelines import cli
from anomaly_pipelines.core.config import PipelineConfig, load_config
from anomaly_pipelines.core.detector import SCORE_COLUMNS
from anomaly_pipelines.core.ids import customer_key
from anomaly_pipelines.core.registry import ModelRegistry
from anomaly_pipelines.core.sources.synthetic import generate_usage
from anomaly_pipelines.definitions import build_definitions
from anomaly_pipelines.defs.jobs import CUSTOMER_ASSETS, DAILY_ASSETS, INGEST_ASSETS, REPORT_ASSETS
from anomaly_pipelines_tests.defs.conftest import write_config

RETRAINED = "customer-001"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def config_path(workdir: Path) -> Path:
    return write_config(workdir)


@pytest.fixture(scope="module")
def config(config_path: Path) -> PipelineConfig:
    return load_config(config_path)


@pytest.fixture(scope="module")
def registry(config: PipelineConfig) -> ModelRegistry:
    return ModelRegistry(config.mlflow)


@pytest.fixture(scope="module")
def demo(
    workdir: Path, config_path: Path, config: PipelineConfig, registry: ModelRegistry
) -> dict[str, Any]:
    """``anomaly-pipelines demo`` exactly as a user runs it, into a temp DAGSTER_HOME; the
    registry state right after it is recorded here, before later steps change it."""
    home = workdir / "dagster_home"
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))  # restored afterwards; the CLI sets it too
        with contextlib.redirect_stdout(out):
            code = cli.main(
                [
                    "demo",
                    "--config-file",
                    str(config_path),
                    "--dagster-home",
                    str(home),
                    "--log-level",
                    "WARNING",
                ]
            )
    customers = sorted(
        generate_usage(**config.source.synthetic.model_dump()).usage["customer_id"].unique()
    )
    return {
        "code": code,
        "printed": out.getvalue(),
        "home": home,
        "customers": customers,
        "versions": {cid: registry.versions(cid) for cid in customers},
        "champions": registry.champion_versions(customers),
    }


@pytest.fixture(scope="module")
def instance(demo: dict[str, Any]) -> Any:
    with dg.DagsterInstance.from_config(str(demo["home"])) as local:
        yield local


@pytest.fixture(scope="module")
def defs(config_path: Path) -> dg.Definitions:
    return build_definitions(config_path=str(config_path))


@pytest.fixture(scope="module")
def batch_scores(demo: dict[str, Any], config: PipelineConfig) -> pd.DataFrame:
    return pd.read_parquet(Path(config.output.directory) / "scores" / "anomaly_scores.parquet")


@pytest.fixture(scope="module")
def retrained(
    demo: dict[str, Any], instance: Any, defs: dg.Definitions, config_path: Path
) -> dg.ExecuteInProcessResult:
    """A per-customer run with a per-run override (another training seed), so the customer's
    second model version differs from the first."""
    run_config = {
        "resources": {
            "pipeline_settings": {
                "config": {
                    # The promotion gate off: this test is about the alias following a new
                    # training (the gate has its own tests in test_promotion.py).
                    "overrides": {"training": {"seed": 1234}, "drift": {"gate_promotion": False}},
                }
            }
        }
    }
    return defs.resolve_job_def("customer_job").execute_in_process(
        instance=instance, partition_key=customer_key(RETRAINED), run_config=run_config
    )


# -- the demo / batch run ------------------------------------------------------------------------


def test_demo_prints_where_everything_is(demo: dict[str, Any], config: PipelineConfig) -> None:
    assert demo["code"] == 0
    printed = demo["printed"]
    for expected in (
        str(Path(config.output.directory) / "scores" / "anomaly_scores.parquet"),
        str(Path(config.output.directory) / "scores" / "anomaly_scores.csv"),
        "report.html",
        "dg dev",
        f"mlflow ui --backend-store-uri {config.mlflow.tracking_uri}",
        f"DAGSTER_HOME={demo['home'].resolve()}",
    ):
        assert expected in printed
    assert (demo["home"] / "dagster.yaml").read_text() == Path("configs/dagster.yaml").read_text()


def test_batch_is_one_run_that_materializes_every_asset_and_partition(
    demo: dict[str, Any], instance: Any
) -> None:
    keys = {customer_key(c) for c in demo["customers"]}
    assert set(instance.get_dynamic_partitions("customers")) == keys
    runs = instance.get_run_records()
    by_job = pd.Series([r.dagster_run.job_name for r in runs]).value_counts().to_dict()
    assert by_job == {"ingest_job": 1, "batch_job": 1}  # every customer in ONE run
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    for name in CUSTOMER_ASSETS:
        assert instance.get_materialized_partitions(dg.AssetKey(name)) == keys, name
    for name in (*INGEST_ASSETS, *REPORT_ASSETS):
        assert instance.get_latest_materialization_event(dg.AssetKey(name)) is not None, name
    for name in DAILY_ASSETS:  # not part of the batch
        assert instance.get_latest_materialization_event(dg.AssetKey(name)) is None, name


def test_asset_checks_pass(demo: dict[str, Any], instance: Any) -> None:
    batch = next(r for r in instance.get_run_records() if r.dagster_run.job_name == "batch_job")
    ingest = next(r for r in instance.get_run_records() if r.dagster_run.job_name == "ingest_job")
    evaluations = []
    for record in (ingest, batch):
        for event in instance.all_logs(
            record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ):
            evaluations.append(event.dagster_event.event_specific_data)
    names = {e.check_name: e.passed for e in evaluations}
    assert {
        "validated_usage_failure_rate",
        "validated_usage_customers",
        "validated_usage_schema",
        "customer_series_regular",
        "anomaly_scores_rate",
        "scores_export_schema",
    } <= set(names)
    assert all(names.values()), names


def test_registry_has_one_version_per_customer_with_champion(demo: dict[str, Any]) -> None:
    assert demo["versions"] == {cid: ["1"] for cid in demo["customers"]}
    assert demo["champions"] == {cid: "1" for cid in demo["customers"]}


def test_mlflow_run_has_params_metrics_plots_and_report(
    demo: dict[str, Any], config: PipelineConfig
) -> None:
    client = mlflow.MlflowClient(tracking_uri=config.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    training = [r for r in runs if r.data.tags.get("kind") != "report"]
    reports = [r for r in runs if r.data.tags.get("kind") == "report"]
    assert len(training) == 1 and len(reports) == 1
    run = training[0]
    assert run.data.params and run.data.metrics
    assert any(v == str(config.lstm.epochs) for k, v in run.data.params.items() if "epochs" in k)
    plots = [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    assert plots and all(p.endswith(".png") for p in plots)
    report_files = {
        Path(a.path).name for a in client.list_artifacts(reports[0].info.run_id, "report")
    }
    assert {"report.html", "summary.md"} <= report_files


def test_export_schema_and_rows(
    batch_scores: pd.DataFrame, config: PipelineConfig, demo: dict[str, Any]
) -> None:
    csv = pd.read_csv(Path(config.output.directory) / "scores" / "anomaly_scores.csv")
    assert list(batch_scores.columns) == SCORE_COLUMNS
    assert list(csv.columns) == SCORE_COLUMNS
    assert len(csv) == len(batch_scores)
    assert isinstance(batch_scores["timestamp"].dtype, pd.DatetimeTZDtype)
    assert batch_scores["is_anomaly"].dtype == bool
    assert not batch_scores.duplicated(["customer_id", "timestamp"]).any()
    assert sorted(batch_scores["customer_id"].unique()) == demo["customers"]
    days = config.source.synthetic.days
    assert batch_scores.groupby("customer_id").size().eq(days).all()  # gaps filled and marked
    assert (batch_scores["status"] != "unscored").all()


def test_injected_spike_and_drop_are_flagged_and_quiet_customers_are_not(
    batch_scores: pd.DataFrame, config: PipelineConfig
) -> None:
    synthetic = config.source.synthetic
    data = generate_usage(**synthetic.model_dump())
    flagged = batch_scores[batch_scores["is_anomaly"]]

    def hit(incident: pd.Series) -> bool:
        rows = flagged[
            (flagged["customer_id"] == incident["customer_id"])
            & (flagged["timestamp"] >= incident["start"])
            & (flagged["timestamp"] <= incident["end"])
        ]
        return not rows.empty

    incidents = data.incidents
    assert {"spike", "drop"} <= set(incidents["kind"])
    assert any(hit(i) for _, i in incidents[incidents["kind"] == "spike"].iterrows())
    assert any(hit(i) for _, i in incidents[incidents["kind"] == "drop"].iterrows())
    quiet = sorted(set(data.usage["customer_id"]) - set(incidents["customer_id"]))
    assert len(quiet) == 2
    assert flagged[flagged["customer_id"].isin(quiet)].empty


def test_outputs_on_disk(demo: dict[str, Any], config: PipelineConfig) -> None:
    out = Path(config.output.directory)
    for cid in demo["customers"]:
        assert (out / "plots" / f"{customer_key(cid)}.png").stat().st_size > 1000
    assert (out / "plots" / "portfolio.png").is_file()
    html = (out / "report" / "report.html").read_text(encoding="utf-8")
    markdown = (out / "report" / "summary.md").read_text(encoding="utf-8")
    assert "customer-001" in html and "customer-001" in markdown


def _latest_metadata(instance: Any, asset: str, partition: str | None = None) -> dict[str, Any]:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None
        ),
        limit=1,
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def test_metadata_per_customer_and_for_the_run(
    demo: dict[str, Any], instance: Any, batch_scores: pd.DataFrame
) -> None:
    key = customer_key("customer-003")
    scores = _latest_metadata(instance, "anomaly_scores", key)
    mine = batch_scores[batch_scores["customer_id"] == "customer-003"]
    assert scores["customer_anomaly_count"] == int(mine["is_anomaly"].sum())
    assert scores["anomaly_count"] == int(batch_scores["is_anomaly"].sum())
    moved = batch_scores["reasons"].astype(str).str.contains("portfolio_move", regex=False)
    assert scores["portfolio_move_steps"] == int(moved.sum())
    assert scores["champion_version"] == "1"
    assert scores["customer_lstm_threshold"] == pytest.approx(float(mine["lstm_threshold"].iloc[0]))
    assert "| customer_id |" in scores["top_anomalies"]
    plots = _latest_metadata(instance, "anomaly_plots", key)
    assert "data:image/png;base64," in plots["plot"]
    model = _latest_metadata(instance, "lstm_autoencoder", key)
    assert model["customer_version"] == "1" and model["customer_epochs"] <= 2
    export = _latest_metadata(instance, "scores_export")
    assert export["row_count"] == len(batch_scores)
    assert [c.name for c in export["dagster/column_schema"].columns] == SCORE_COLUMNS
    report = _latest_metadata(instance, "anomaly_report")
    assert report["incident_count"] >= 1 and "data:image/png;base64," in report["portfolio_plot"]


# -- per-customer run, champion alias --------------------------------------------------------------


def test_per_customer_run_processes_one_partition_and_registers_a_new_version(
    retrained: dg.ExecuteInProcessResult, registry: ModelRegistry
) -> None:
    assert retrained.success
    partitions = {
        e.event_specific_data.materialization.partition
        for e in retrained.get_asset_materialization_events()
    }
    assert partitions == {customer_key(RETRAINED)}
    assert registry.versions(RETRAINED) == ["1", "2"]
    assert registry.champion_version(RETRAINED) == "2"  # a new training takes the alias
    assert registry.versions("customer-002") == ["1"]  # other customers untouched


def test_moving_the_champion_alias_changes_what_scores(
    retrained: dg.ExecuteInProcessResult,
    registry: ModelRegistry,
    instance: Any,
    defs: dg.Definitions,
    batch_scores: pd.DataFrame,
) -> None:
    key = customer_key(RETRAINED)
    v1 = batch_scores[batch_scores["customer_id"] == RETRAINED].reset_index(drop=True)
    v2 = retrained.output_for_node("anomaly_scores")
    assert v1["lstm_threshold"].iloc[0] != pytest.approx(v2["lstm_threshold"].iloc[0])
    job = defs.resolve_job_def("customer_job")
    registry.set_alias(RETRAINED, "1")
    try:
        rescored = job.execute_in_process(
            instance=instance, partition_key=key, asset_selection=[dg.AssetKey("anomaly_scores")]
        ).output_for_node("anomaly_scores")
    finally:
        registry.set_alias(RETRAINED, "2")
    # Scoring with version 1 reproduces the batch run's scores exactly: the alias, not the last
    # training, decides which model scores.
    pd.testing.assert_frame_equal(rescored.reset_index(drop=True), v1, check_exact=False, rtol=1e-6)
    again = job.execute_in_process(
        instance=instance, partition_key=key, asset_selection=[dg.AssetKey("anomaly_scores")]
    ).output_for_node("anomaly_scores")
    np.testing.assert_allclose(again["hybrid_score"], v2["hybrid_score"], rtol=1e-6)


# -- the daily schedule ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daily(
    demo: dict[str, Any], instance: Any, defs: dg.Definitions, config: PipelineConfig
) -> dict[str, Any]:
    """Evaluate the schedule's tick for the morning after the data's last day (no waiting),
    then execute the run it requests."""
    schedule = defs.resolve_schedule_def("daily_scoring_schedule")
    synthetic = config.source.synthetic
    last_day = pd.Timestamp(synthetic.start, tz="UTC") + pd.Timedelta(days=synthetic.days - 1)
    tick = last_day + pd.Timedelta(days=1, hours=config.orchestration.daily_hour)
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=tick.to_pydatetime()
    )
    requests = schedule.evaluate_tick(context).run_requests
    assert requests is not None and len(requests) == 1
    result = defs.resolve_job_def("daily_scoring_job").execute_in_process(
        instance=instance, partition_key=requests[0].partition_key
    )
    return {"schedule": schedule, "request": requests[0], "last_day": last_day, "result": result}


def test_daily_schedule_requests_the_day_that_just_ended_and_its_run_scores_every_customer(
    daily: dict[str, Any], demo: dict[str, Any], batch_scores: pd.DataFrame
) -> None:
    schedule, request = daily["schedule"], daily["request"]
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "daily_scoring_job"
    assert request.partition_key == daily["last_day"].strftime("%Y-%m-%d")
    assert daily["result"].success
    scores = daily["result"].output_for_node("daily_scores")
    assert sorted(scores["customer_id"]) == demo["customers"]
    assert (scores["as_of"] == request.partition_key).all()
    assert (scores["timestamp"] <= daily["last_day"]).all()
    assert (scores["status"] == "scored").all()
    # Customers whose champion is still the batch model get exactly the batch score of that day
    # (the daily run scores only the tail of each history: it must not change the result).
    same_model = _daily_vs_batch(scores, batch_scores)
    assert len(same_model) == len(demo["customers"]) - 1
    np.testing.assert_allclose(
        same_model["hybrid_score"], same_model["hybrid_score_batch"], rtol=1e-6
    )
    assert (same_model["is_anomaly"] == same_model["is_anomaly_batch"]).all()


def _daily_vs_batch(daily_scores: pd.DataFrame, batch_scores: pd.DataFrame) -> pd.DataFrame:
    return daily_scores[daily_scores["customer_id"] != RETRAINED].merge(
        batch_scores, on=["customer_id", "timestamp"], suffixes=("", "_batch")
    )
