"""The MLflow registry against real SQLite stores in temp dirs, with really fitted detectors.

Three customers, 120 days, two LSTM epochs: enough to make two trainings give different models,
small enough to keep the file fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from anomaly_pipelines.core.api import coerce
from anomaly_pipelines.core.config import MlflowConfig, PipelineConfig
from anomaly_pipelines.core.detector import (
    SCORE_COLUMNS,
    FittedDetectors,
    fit_detectors,
    score_series,
)
from anomaly_pipelines.core.model_files import CALIBRATIONS_PICKLE
from anomaly_pipelines.core.registry import (
    NO_CHAMPION,
    ModelRegistry,
    TrainingRecord,
    clear_cache,
)
from anomaly_pipelines.core.registry.store import without_credentials
from anomaly_pipelines.core.series import CustomerSeries, regularize
from anomaly_pipelines.core.sources.synthetic import generate_usage
from anomaly_pipelines_tests.core import registry_worker

SHORT = "short-history"
CUSTOMERS = ["customer-001", "customer-002", "customer-003"]


@dataclass
class Trained:
    config: PipelineConfig
    series: list[CustomerSeries]  # the first data set, plus one customer too short to train
    fitted_a: FittedDetectors  # trained on the first data set
    fitted_b: FittedDetectors  # other data, other seed: a "retraining"


def _series(seed: int, config: PipelineConfig, short: bool) -> list[CustomerSeries]:
    usage = generate_usage(customers=3, days=120, seed=seed).usage
    if short:
        first = usage[usage["customer_id"] == CUSTOMERS[0]]
        days = first["timestamp"].drop_duplicates().sort_values().iloc[:30]
        extra = first[first["timestamp"].isin(days)].assign(customer_id=SHORT)
        usage = pd.concat([usage, extra], ignore_index=True)
    return regularize(coerce(usage), config.preprocess)


@pytest.fixture(scope="module")
def trained() -> Trained:
    config = PipelineConfig().merged({"lstm": {"epochs": 2}})
    series = _series(1, config, short=True)
    fitted_a = fit_detectors(series, config)
    fitted_b = fit_detectors(
        _series(2, config, short=False), config.merged({"training": {"seed": 7}})
    )
    assert SHORT in fitted_a.skipped and sorted(fitted_a.calibrations) == CUSTOMERS
    return Trained(config, series, fitted_a, fitted_b)


@pytest.fixture(scope="module")
def blank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow database, made once: creating MLflow's tables takes seconds, so each
    test that needs a store of its own starts from a copy of this one."""
    db = tmp_path_factory.mktemp("blank") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def _config(base: PipelineConfig, root: Path, blank: Path) -> PipelineConfig:
    with (
        contextlib.closing(sqlite3.connect(blank)) as src,
        contextlib.closing(sqlite3.connect(root / "mlflow.db")) as dst,
    ):
        src.backup(dst)
    return base.merged(
        {
            "mlflow": {
                "tracking_uri": f"sqlite:///{root}/mlflow.db",
                "artifact_location": str(root / "artifacts"),
            }
        }
    )


@dataclass
class Logged:
    config: PipelineConfig
    root: Path
    registry: ModelRegistry
    record: TrainingRecord
    plot: Path

    @property
    def client(self) -> MlflowClient:
        uri = self.registry.tracking_uri
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def logged(trained: Trained, tmp_path_factory: pytest.TempPathFactory, blank: Path) -> Logged:
    """One store holding one logged training of ``fitted_a``; tests that read only share it."""
    root = tmp_path_factory.mktemp("store")
    config = _config(trained.config, root, blank)
    plot = root / "loss_curve.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    registry = ModelRegistry(config.mlflow)
    record = registry.log_training(
        trained.fitted_a,
        run_name="unit-test",
        plots=[plot],
        tags={"dagster_run_id": "abc123", "gemini_api_key": "sekrit-value"},
        training_seconds=1.5,
    )
    return Logged(config, root, registry, record, plot)


def _assert_same_scores(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Bit for bit: a model that went through MLflow scores exactly like the one fitted."""
    assert list(actual.columns) == SCORE_COLUMNS
    pd.testing.assert_frame_equal(
        actual.reset_index(drop=True), expected.reset_index(drop=True), check_exact=True
    )


def _of(scores: pd.DataFrame, customer: str) -> pd.DataFrame:
    return scores[scores["customer_id"] == customer].reset_index(drop=True)


# ---------------------------------------------------------------------- one logged training


def test_run_holds_params_metrics_artifacts_and_models(trained: Trained, logged: Logged) -> None:
    client = logged.client
    run = client.get_run(logged.record.run_id)
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["lstm.epochs"] == "2"
    assert params["hybrid.weights.residual"] == "1.0"
    assert params["decrease_rule.threshold"] == "-0.3"
    assert not any(key.startswith(("mlflow.", "explain.", "source.")) for key in params)
    assert tags["dagster_run_id"] == "abc123"
    assert "gemini_api_key" not in tags
    assert not any("sekrit" in str(v) for v in [*params.values(), *tags.values()])

    summary = trained.fitted_a.training_summary().set_index("customer_id")
    assert metrics["n_customers"] == 3 and metrics["n_skipped"] == 1
    assert metrics["training_seconds"] == 1.5
    assert metrics["train_loss_mean"] == pytest.approx(summary["train_loss"].mean())
    for cid in CUSTOMERS:  # <= 50 customers: per-customer metrics too
        assert metrics[f"customers/{cid}/val_loss"] == pytest.approx(summary.loc[cid, "val_loss"])

    root_files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"training_summary.parquet", "training_summary.csv", "skipped.json", "plots"} <= root_files
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == [
        "plots/loss_curve.png"
    ]
    local = Path(client.download_artifacts(run.info.run_id, "", str(logged.root / "download")))
    assert json.loads((local / "skipped.json").read_text()) == trained.fitted_a.skipped
    table = pd.read_parquet(local / "training_summary.parquet")
    assert sorted(table["customer_id"]) == CUSTOMERS

    experiment = client.get_experiment(logged.record.experiment_id)
    assert experiment.artifact_location == (logged.root / "artifacts").resolve().as_uri()
    models = client.search_logged_models(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    assert [m.name for m in models] == ["anomaly_detectors"]  # the whole model, logged once
    assert models[0].artifact_location.startswith(experiment.artifact_location)
    # The logged model holds the fitted model's own directory, readable without Python.
    saved = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{models[0].model_id}", dst_path=str(logged.root / "model")
        )
    )
    manifest = json.loads(next(saved.rglob("model.json")).read_text())
    assert manifest["customers"] == CUSTOMERS
    assert manifest["settings"]["lstm"]["epochs"] == 2
    calibrations = json.loads(next(saved.rglob("calibrations.json")).read_text())
    for cid in CUSTOMERS:
        expected = trained.fitted_a.calibrations[cid].residual_sigma
        assert calibrations[cid]["residual_sigma"] == pytest.approx(expected)
    assert any((logged.root / "artifacts").rglob("*.keras")), (
        "model files must live in the artifact location"
    )
    info = mlflow.models.get_model_info(f"models:/{models[0].model_id}")
    assert "python_function" in info.flavors
    assert info.signature.inputs.input_names() == ["customer_id", "timestamp", "cost"]


def test_one_registered_model_per_customer_with_the_champion_alias(
    trained: Trained, logged: Logged
) -> None:
    client, registry, record = logged.client, logged.registry, logged.record
    assert sorted(record.model_versions) == CUSTOMERS  # the short customer was not registered
    assert registry.versions(SHORT) == []
    names = set()
    for cid in CUSTOMERS:
        name = record.registered_names[cid]
        assert name == registry.registered_name(cid) == f"anomaly_pipelines.{cid}"
        names.add(name)
        model = client.get_registered_model(name)
        assert model.tags == {"customer_id": cid, "project": "anomaly_pipelines"}
        assert str(model.aliases["champion"]) == record.model_versions[cid] == "1"
        version = client.get_model_version_by_alias(name, "champion")
        assert version.run_id == record.run_id
        assert version.source.startswith("models:/m-")
        assert version.tags["customer_id"] == cid
        assert version.tags["run_id"] == record.run_id
    assert len(names) == 3
    # The training's one logged model is the source of every customer's version: nothing was
    # copied.
    sources = {client.get_model_version_by_alias(n, "champion").source for n in names}
    assert len(sources) == 1


def test_untrusted_ids_get_safe_distinct_names(logged: Logged) -> None:
    registry = logged.registry
    odd = ["../etc/passwd", "Acme", "acme", "a b'c\"d", "x" * 300]
    names = [registry.registered_name(cid) for cid in odd]
    assert len(set(names)) == len(odd)
    for name in names:
        assert name.startswith("anomaly_pipelines.")
        assert all(ch.isalnum() or ch in "._-" for ch in name)
        assert len(name) < 100


@pytest.mark.parametrize("lookup", ["direct", "paged"])
def test_champions_score_like_the_fitted_models(
    trained: Trained, logged: Logged, lookup: str
) -> None:
    registry = ModelRegistry(logged.config.mlflow)
    if lookup == "paged":  # force the listing path, one registered model per page
        registry.direct_lookup_limit = 0
        registry.page_size = 1
    clear_cache()
    ids = [s.customer_id for s in trained.series]
    loaded = registry.load_champions([*ids, "nobody"], logged.config)

    assert sorted(loaded.calibrations) == CUSTOMERS
    assert len(loaded.autoencoders) == 1, "one logged Keras model serves all three customers"
    assert loaded.autoencoders[0].model is not trained.fitted_a.autoencoders[0].model
    assert loaded.skipped == {SHORT: NO_CHAMPION, "nobody": NO_CHAMPION}
    actual = score_series(trained.series, loaded, logged.config)
    for cid in CUSTOMERS:
        _assert_same_scores(
            _of(actual, cid),
            _of(score_series(trained.series, trained.fitted_a, logged.config), cid),
        )
    short = _of(actual, SHORT)
    assert (short["reasons"] == NO_CHAMPION).all() and (short["status"] == "unscored").all()
    summary = trained.fitted_a.training_summary().set_index("customer_id")
    restored = loaded.training_summary().set_index("customer_id")
    np.testing.assert_allclose(
        restored.loc[CUSTOMERS, "val_loss"], summary.loc[CUSTOMERS, "val_loss"]
    )
    assert registry.champion_versions([*ids, "nobody"]) == dict.fromkeys(CUSTOMERS, "1")


def test_bad_settings_and_requests_fail_with_clear_errors(logged: Logged, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"mlflow\.model_prefix"):
        ModelRegistry(MlflowConfig(model_prefix="bad'prefix"))
    # MLflow reserves these; reading them would silently find no champion for anyone.
    for alias in ("latest", "v3", "has space", ""):
        with pytest.raises(ValueError, match=r"mlflow\.alias"):
            ModelRegistry(MlflowConfig(alias=alias))
    with pytest.raises(ValueError, match=r"customer-001.*'99'"):
        logged.registry.set_alias("customer-001", "99")
    assert logged.registry.champion_version("customer-001") == "1"
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        logged.registry.log_training(
            FittedDetectors(), run_name="x", plots=[tmp_path / "missing.png"]
        )


def test_a_training_without_trained_customers_logs_a_run_but_registers_nothing(
    logged: Logged,
) -> None:
    nothing = FittedDetectors(skipped={"tiny": "insufficient history: 3 steps, need 42"})
    record = logged.registry.log_training(nothing, run_name="empty")
    assert record.model_versions == {} and record.registered_names == {}
    run = logged.client.get_run(record.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["n_customers"] == 0 and run.data.metrics["n_skipped"] == 1
    assert logged.registry.versions("tiny") == []


def test_a_broken_champion_is_skipped_not_fatal(
    trained: Trained, tmp_path: Path, blank: Path
) -> None:
    config = _config(trained.config, tmp_path, blank)
    registry = ModelRegistry(config.mlflow)
    registry.log_training(trained.fitted_a, run_name="to-break")
    for path in (tmp_path / "artifacts").rglob(CALIBRATIONS_PICKLE):
        path.unlink()  # e.g. an artifact store cleaned up by hand
    loaded = registry.load_champions(CUSTOMERS, config)
    assert not loaded.calibrations
    assert sorted(loaded.skipped) == CUSTOMERS
    assert all("is unusable" in reason for reason in loaded.skipped.values())


def test_a_champion_trained_under_other_settings_is_skipped_naming_them(
    trained: Trained, logged: Logged
) -> None:
    """An edited YAML file (or an alias moved back to an older model) no longer mixes the
    settings a model learned its thresholds under with the live ones: the customer is left
    unscored, with the setting in the reason; a decision-time change needs no retraining."""
    clear_cache()
    series = [s for s in trained.series if s.customer_id in CUSTOMERS]
    edited = logged.config.merged({"hybrid": {"seasonal_cycles": 6}})
    loaded = logged.registry.load_champions(CUSTOMERS, edited)
    assert not loaded.calibrations
    for cid in CUSTOMERS:
        assert "hybrid.seasonal_cycles: trained with 4, configured 6" in loaded.skipped[cid]
    scores = score_series(series, loaded, edited)
    assert (scores["status"] == "unscored").all()

    stricter = logged.config.merged({"hybrid": {"decision_threshold": 3.0}})
    loaded = logged.registry.load_champions(CUSTOMERS, stricter)
    assert sorted(loaded.calibrations) == CUSTOMERS
    _assert_same_scores(
        score_series(series, loaded, stricter),
        score_series(series, trained.fitted_a, stricter),
    )


def test_store_addresses_in_messages_carry_no_credentials() -> None:
    assert without_credentials("postgresql://user:pass@db:5432/mlflow") == "postgresql://db:5432/mlflow"
    assert without_credentials("https://token@mlflow.example/") == "https://mlflow.example/"
    assert without_credentials("sqlite:///.mlflow/mlflow.db") == "sqlite:///.mlflow/mlflow.db"


def test_default_store_is_created_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    registry = ModelRegistry(MlflowConfig())
    experiment_id = registry.experiment_id()
    monkeypatch.chdir("/")  # the registry pinned its paths; a later chdir changes nothing
    db = tmp_path / ".mlflow" / "mlflow.db"
    assert registry.tracking_uri == f"sqlite:///{db.resolve()}"
    client = MlflowClient(tracking_uri=registry.tracking_uri)
    experiment = client.get_experiment(experiment_id)
    assert experiment.name == "anomaly_pipelines"
    assert experiment.artifact_location == (tmp_path / ".mlflow" / "artifacts").resolve().as_uri()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ---------------------------------------------------------------------- stores of their own


def test_large_runs_log_a_summary_table_instead_of_per_customer_metrics(
    trained: Trained, tmp_path: Path, blank: Path
) -> None:
    config = _config(trained.config, tmp_path, blank)
    registry = ModelRegistry(config.mlflow)
    registry.per_customer_metrics_limit = 2  # three customers count as "many" here
    record = registry.log_training(trained.fitted_a, run_name="many")
    run = MlflowClient(tracking_uri=registry.tracking_uri).get_run(record.run_id)
    assert not any(key.startswith("customers/") for key in run.data.metrics)
    assert run.data.metrics["n_customers"] == 3
    files = {
        a.path
        for a in MlflowClient(tracking_uri=registry.tracking_uri).list_artifacts(record.run_id)
    }
    assert {"training_summary.parquet", "training_summary.csv"} <= files


def test_retraining_takes_the_alias_and_moving_it_back_changes_scoring(
    trained: Trained, tmp_path: Path, blank: Path
) -> None:
    config = _config(trained.config, tmp_path, blank)
    registry = ModelRegistry(config.mlflow)
    first = registry.log_training(trained.fitted_a, run_name="first")
    second = registry.log_training(trained.fitted_b, run_name="second")
    assert first.model_versions == dict.fromkeys(CUSTOMERS, "1")
    assert second.model_versions == dict.fromkeys(CUSTOMERS, "2")
    for cid in CUSTOMERS:
        assert registry.versions(cid) == ["1", "2"]
    assert registry.champion_versions(CUSTOMERS) == dict.fromkeys(CUSTOMERS, "2")

    series = [s for s in trained.series if s.customer_id in CUSTOMERS]
    by_a = score_series(series, trained.fitted_a, config)
    by_b = score_series(series, trained.fitted_b, config)
    rolled, kept = CUSTOMERS[0], CUSTOMERS[1:]
    assert not np.allclose(_of(by_a, rolled)["hybrid_score"], _of(by_b, rolled)["hybrid_score"])

    _assert_same_scores(score_series(series, registry.load_champions(CUSTOMERS, config), config), by_b)

    registry.set_alias(rolled, "1")
    assert registry.champion_version(rolled) == "1"
    loaded = registry.load_champions(CUSTOMERS, config)
    assert (
        loaded.calibrations[rolled].residual_sigma
        == trained.fitted_a.calibrations[rolled].residual_sigma
    )
    assert len(loaded.autoencoders) == 2  # two logged models, each loaded once
    scores = score_series(series, loaded, config)
    _assert_same_scores(_of(scores, rolled), _of(by_a, rolled))
    for cid in kept:
        _assert_same_scores(_of(scores, cid), _of(by_b, cid))


def test_parallel_trainings_of_the_same_customers_keep_every_version(
    trained: Trained, tmp_path: Path, blank: Path
) -> None:
    """Two runs (two threads, two registries, one empty store) train the same customers at
    the same moment: both versions survive, numbered 1 and 2, and the alias ends on 2."""
    config = _config(trained.config, tmp_path, blank)
    start = threading.Barrier(2)
    records: dict[str, TrainingRecord] = {}
    errors: list[BaseException] = []

    def train(label: str, fitted: FittedDetectors) -> None:
        registry = ModelRegistry(config.mlflow)
        start.wait(timeout=60)
        try:
            records[label] = registry.log_training(fitted, run_name=label)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=train, args=("a", trained.fitted_a)),
        threading.Thread(target=train, args=("b", trained.fitted_b)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    registry = ModelRegistry(config.mlflow)
    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)
    assert records["a"].experiment_id == records["b"].experiment_id
    for cid in CUSTOMERS:
        assert registry.versions(cid) == ["1", "2"]
        assert {records["a"].model_versions[cid], records["b"].model_versions[cid]} == {"1", "2"}
        runs = {
            client.get_model_version(registry.registered_name(cid), v).run_id for v in ("1", "2")
        }
        assert runs == {records["a"].run_id, records["b"].run_id}
        assert registry.champion_version(cid) == "2"


def test_parallel_processes_register_without_loss(
    trained: Trained, tmp_path: Path, blank: Path
) -> None:
    """Two processes register 30 customers each on one SQLite store, 10 customers in common;
    one reads the registry customer by customer, the other through the paged listing."""
    config = _config(trained.config, tmp_path, blank)
    registry = ModelRegistry(config.mlflow)
    record = registry.log_training(trained.fitted_a, run_name="source")
    uri = registry.tracking_uri
    source = (
        MlflowClient(tracking_uri=uri, registry_uri=uri)
        .get_model_version(record.registered_names[CUSTOMERS[0]], "1")
        .source
    )
    ids = [f"p-{i:02d}" for i in range(40)]
    batches = [ids[0:30], ids[10:40]]
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    results: Any = context.Queue()
    processes = [
        context.Process(
            target=registry_worker.register_many,
            args=(config.mlflow.model_dump(), batch, source, record.run_id, paged, start, results),
        )
        for batch, paged in zip(batches, (False, True), strict=True)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert [status for status, _ in outcomes] == ["ok", "ok"], outcomes

    returned: dict[str, list[str]] = {}
    for _, versions in outcomes:
        for cid, version in versions.items():
            returned.setdefault(cid, []).append(version)
    for cid in ids:
        shared = cid in ids[10:30]
        expected = ["1", "2"] if shared else ["1"]
        assert registry.versions(cid) == expected, cid
        assert sorted(returned[cid]) == expected, cid
        assert registry.champion_version(cid) == expected[-1], cid


def test_a_locked_database_is_waited_out_not_reported(tmp_path: Path, blank: Path) -> None:
    """Another process holds SQLite's write lock longer than MLflow waits for it (MLflow sets a
    20 s busy timeout, so this test takes that long): the registration retries until the lock
    is gone instead of failing with "database is locked", and adds exactly one version."""
    config = _config(PipelineConfig(), tmp_path, blank)
    registry = ModelRegistry(config.mlflow)
    registry.experiment_id()
    source = (tmp_path / "model").resolve()
    source.mkdir()
    retried = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "busy" in record.getMessage():
                retried.set()

    watcher = Watch(level=logging.INFO)
    logger = logging.getLogger("anomaly_pipelines.core.registry")
    previous = logger.level
    logger.addHandler(watcher)
    logger.setLevel(logging.INFO)
    blocker = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    outcome: list[object] = []
    try:
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock, like a long commit elsewhere

        def register() -> None:
            try:
                outcome.append(
                    registry.register_version("locked-out", source=source.as_uri(), run_id="r1")
                )
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=register)
        thread.start()
        assert retried.wait(timeout=120), "the registration never met the lock"
        blocker.execute("ROLLBACK")
        thread.join(timeout=120)
    finally:
        blocker.close()
        logger.removeHandler(watcher)
        logger.setLevel(previous)
    assert outcome == ["1"]
    assert registry.versions("locked-out") == ["1"]
    assert registry.champion_version("locked-out") == "1"


def test_run_spans_the_training_and_draws_its_loss_curve(trained: Trained, logged: Logged) -> None:
    client = logged.client
    run = client.get_run(logged.record.run_id)
    # The run was started 1.5 s before logging began: the training it records.
    assert run.info.end_time - run.info.start_time >= 1500
    (fit,) = trained.fitted_a.autoencoders
    curve = client.get_metric_history(run.info.run_id, "epoch_loss")
    assert [m.step for m in curve] == list(range(1, len(fit.history) + 1))
    assert [m.value for m in curve] == pytest.approx([loss for loss, _ in fit.history])
    assert len(client.get_metric_history(run.info.run_id, "epoch_val_loss")) == len(fit.history)
