"""MLflow tracking and model registry for the fitted detectors.

One training call (one customer in a per-customer Dagster run, or thousands in a batch run) is
**one MLflow run** in the experiment ``config.mlflow.experiment``. The run holds the flattened
model settings as params, training metrics, the plots it was given, and the models:

* ``lstm_autoencoder_<i>``: each stacked Keras model (many customers' autoencoders in one model,
  see ``core.models.lstm_autoencoder``), logged with ``mlflow.keras.log_model`` and a signature;
* ``isolation_forest`` and ``local_outlier_factor``: the per-customer scikit-learn bundles
  (``CustomerOutlierModels``), logged with ``mlflow.sklearn.log_model``;
* ``calibrations.pkl`` (what scoring needs) and ``calibrations.json`` (the same, for people),
  ``training_summary.parquet``/``.csv`` (one row per customer) and ``skipped.json``.

Registered models: one **per customer**, named ``<mlflow.model_prefix>.<customer_key(id)>``
(for example ``anomaly_pipelines.customer-001``; an id such as ``Acme/EU`` becomes
``anomaly_pipelines.acme-eu-h<hash>``, see ``core.ids``), so the registry UI lists and searches
customers directly even with thousands of them, and the untrusted id never reaches a name
unescaped. Each registered model carries the tags ``customer_id`` (the exact id) and
``project=anomaly_pipelines``. A version's source is the logged Keras model that holds the
customer's slot (``models:/<model_id>``): registering copies nothing. Version tags point at the
rest: ``customer_id``, ``run_id``, ``slot``, ``lstm_model_name``, ``isolation_forest_uri``,
``local_outlier_factor_uri``. Promotion uses the alias ``mlflow.alias`` (``champion``), never
stages; a new training takes the alias unless a newer version already holds it, and moving the
alias back (``set_alias``) rolls a customer back to an older model.

Several trainings may write to one SQLite store at once (a batch run next to per-customer runs):
the store runs in WAL mode, every write is retried with backoff while SQLite reports the database
locked, and the "is this version newer than the champion?" check and the alias update happen
under a file lock next to the database, so concurrent trainings of one customer neither lose a
version nor leave the alias on the older one.

MLflow's fluent API (needed by ``log_model``) reads a process-wide tracking URI; every method
here points it at this registry's store first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import pickle
import random
import re
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from anomaly_pipelines.core.config import MlflowConfig, PipelineConfig
from anomaly_pipelines.core.detector import Calibration, FittedDetectors
from anomaly_pipelines.core.ids import customer_key
from anomaly_pipelines.core.models import lstm_autoencoder as lstm
from anomaly_pipelines.core.models.outlier import CustomerOutlierModels
from anomaly_pipelines.core.processes import process_alive, process_start
from anomaly_pipelines.core.spreadsheet import write_csv

try:  # POSIX only; elsewhere concurrent promotion falls back to a process-local lock.
    import fcntl
except ImportError:  # pragma: no cover - not reached on Linux/macOS
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

T = TypeVar("T")

PROJECT = "anomaly_pipelines"
NO_CHAMPION = "no champion model registered"
# The config sections that define a model; logged as params ``<section>.<field>``.
PARAM_SECTIONS = (
    "lstm",
    "isolation_forest",
    "local_outlier_factor",
    "windows",
    "training",
    "hybrid",
    "decrease_rule",
)
CALIBRATIONS_PICKLE = "calibrations.pkl"
CALIBRATIONS_JSON = "calibrations.json"
SUMMARY_PARQUET = "training_summary.parquet"
SUMMARY_CSV = "training_summary.csv"
SKIPPED_JSON = "skipped.json"
# Owner of a run (see ``ModelRegistry.close_orphaned_runs``).
OWNER_HOST_TAG = "anomaly_pipelines/host"
OWNER_PID_TAG = "anomaly_pipelines/pid"
OWNER_START_TAG = "anomaly_pipelines/pid_start"
ORPHANED_TAG = "anomaly_pipelines/orphaned"
IF_MODEL_NAME = "isolation_forest"
LOF_MODEL_NAME = "local_outlier_factor"

_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9][A-Za-z0-9_-]*)*")
# Tag or param keys that look like credentials are never sent to MLflow.
_SECRET_KEY = re.compile(r"key|token|secret|passw|credential|auth", re.IGNORECASE)
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")
# Backoff jitter decorrelates processes that collided on the store, so it must differ between
# processes (forked ones included): it is not a result and needs no seed.
_JITTER = random.SystemRandom()
# MLflow's alias rule: word characters and '-'; "latest" and "v<number>" are reserved.
_ALIAS = re.compile(r"[\w-]{1,255}")
_RESERVED_ALIAS = re.compile(r"latest|v\d+", re.IGNORECASE)


@dataclass
class TrainingRecord:
    """What one ``log_training`` call created, for the caller's metadata."""

    run_id: str
    experiment_id: str
    model_versions: dict[str, str]  # customer_id -> version number (str)
    registered_names: dict[str, str]  # customer_id -> registered model name


@dataclass(frozen=True)
class VersionRequest:
    """One model version to register for a customer (see ``ModelRegistry.register_versions``)."""

    customer_id: str
    source: str  # usually ``models:/<model_id>`` of a logged model
    run_id: str
    model_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class _RunArtifacts:
    """The per-run half of a champion: everything except the Keras model."""

    calibrations: dict[str, Calibration]
    isolation_forest: CustomerOutlierModels
    local_outlier_factor: CustomerOutlierModels
    summary: pd.DataFrame


class ModelRegistry:
    """Log trainings to MLflow and serve each customer's champion model back for scoring."""

    # Runs with more customers than this get the summary table only, not per-customer metrics
    # (thousands of metric keys make the MLflow run page unusable).
    per_customer_metrics_limit: int = 50
    # Up to this many customers are resolved one ``get_model_version_by_alias`` call each;
    # beyond it, registered models are listed in pages (one call per ``page_size`` customers).
    direct_lookup_limit: int = 50
    page_size: int = 1000

    def __init__(self, config: MlflowConfig) -> None:
        if not _PREFIX.fullmatch(config.model_prefix):
            raise ValueError(
                f"mlflow.model_prefix {config.model_prefix!r} is not a valid model-name prefix: "
                "use letters, digits, '_', '-' and '.'-separated parts"
            )
        if not _ALIAS.fullmatch(config.alias) or _RESERVED_ALIAS.fullmatch(config.alias):
            raise ValueError(
                f"mlflow.alias {config.alias!r} is not a usable MLflow alias: use letters, digits, "
                "'_' and '-', and not the reserved 'latest' or 'v<number>'"
            )
        self.config = config
        self.tracking_uri = _resolve_tracking_uri(config.tracking_uri)
        self.artifact_uri = _resolve_artifact_uri(config.artifact_location)
        self._experiment: str | None = None
        self._client_instance: MlflowClient | None = None

    # ------------------------------------------------------------------ names and store

    def registered_name(self, customer_id: str) -> str:
        return f"{self.config.model_prefix}.{customer_key(customer_id)}"

    def _client(self) -> MlflowClient:
        self._activate()
        if self._client_instance is None:
            self._client_instance = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._client_instance

    def _activate(self) -> None:
        """Create the store on first use and point MLflow's process-wide URIs at it."""
        # Per-file progress bars would flood Dagster's captured stderr on every load.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        _prepare_store(self.tracking_uri)
        if mlflow.get_tracking_uri() != self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        if mlflow.get_registry_uri() != self.tracking_uri:
            mlflow.set_registry_uri(self.tracking_uri)

    def experiment_id(self) -> str:
        """The experiment's id, created with ``artifact_location`` when it does not exist."""
        self._activate()  # every run starts here: MLflow's fluent API must point at our store
        if self._experiment is not None:
            return self._experiment
        client = self._client()
        name = self.config.experiment
        experiment = _retry(lambda: client.get_experiment_by_name(name), "read experiment")
        if experiment is None:
            try:
                self._experiment = _retry(
                    lambda: client.create_experiment(
                        name, artifact_location=self.artifact_uri or None, tags={"project": PROJECT}
                    ),
                    "create experiment",
                )
                return self._experiment
            except MlflowException:
                # Another process created it between our read and our write.
                experiment = _retry(lambda: client.get_experiment_by_name(name), "read experiment")
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise ValueError(
                f"MLflow experiment {name!r} in {_without_credentials(self.tracking_uri)} is deleted; "
                "restore it or set "
                "mlflow.experiment to another name"
            )
        self.close_orphaned_runs(experiment.experiment_id)
        if self.artifact_uri and experiment.artifact_location.rstrip("/") != self.artifact_uri.rstrip("/"):
            log.warning(
                "MLflow experiment %r keeps its artifacts in %s, not in the configured %s "
                "(an experiment's artifact location is fixed when it is created)",
                name,
                experiment.artifact_location,
                self.artifact_uri,
            )
        self._experiment = experiment.experiment_id
        return self._experiment

    def close_orphaned_runs(self, experiment_id: str) -> list[str]:
        """Mark runs whose process died (``kill -9``, OOM, a lost machine) as KILLED.

        A killed training leaves its MLflow run RUNNING for ever, which reads as "still
        training" in the UI and hides that its models were never registered. Every run of this
        project records its owner (host, pid and the pid's start time, which tells a reused pid
        apart); on the first use of the store in a process, RUNNING runs of this host whose owner
        is gone are ended as KILLED with the tag ``anomaly_pipelines/orphaned`` saying why.
        Runs of other hosts are left alone: their owners cannot be checked from here.
        Returns the ids of the runs closed.
        """
        client = self._client()
        host = socket.gethostname()
        try:
            runs = _retry(
                lambda: client.search_runs(
                    [experiment_id],
                    filter_string=f"attributes.status = 'RUNNING' and tags.project = '{PROJECT}'",
                    max_results=1000,
                ),
                "find running runs",
            )
        except MlflowException as exc:  # a store that cannot search must not block training
            log.warning("could not look for orphaned MLflow runs: %s", exc)
            return []
        closed = []
        for run in runs:
            tags = run.data.tags
            if tags.get(OWNER_HOST_TAG) != host or not tags.get(OWNER_PID_TAG, "").isdigit():
                continue
            if process_alive(int(tags[OWNER_PID_TAG]), tags.get(OWNER_START_TAG) or None):
                continue
            run_id = run.info.run_id
            reason = (
                f"process {tags[OWNER_PID_TAG]} on {host} ended without closing the run "
                "(killed or crashed); its models were not necessarily registered"
            )
            _retry(
                lambda run_id=run_id, reason=reason: client.set_tag(run_id, ORPHANED_TAG, reason),
                "tag run",
            )
            _retry(lambda run_id=run_id: client.set_terminated(run_id, "KILLED"), "end run")
            log.warning("MLflow run %s marked KILLED: %s", run_id, reason)
            closed.append(run_id)
        return closed

    # ------------------------------------------------------------------ training

    def log_training(
        self,
        fitted: FittedDetectors,
        config: PipelineConfig,
        *,
        run_name: str,
        plots: list[Path] | None = None,
        tags: dict[str, str] | None = None,
        training_seconds: float | None = None,
    ) -> TrainingRecord:
        """Log one training as one MLflow run and register a new version per trained customer.

        ``training_seconds`` (how long ``fit_detectors`` took) is logged when given; the fitted
        object does not know it.
        """
        started = time.perf_counter()
        experiment_id = self.experiment_id()
        missing = [str(p) for p in plots or [] if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"log_training(): plot file(s) not found: {missing}")
        customers = [cid for fit in fitted.autoencoders for cid in fit.customer_ids]
        run_tags = {**_safe_mapping(tags or {}, "tag"), "project": PROJECT}
        model_versions: dict[str, str] = {}
        registered_names: dict[str, str] = {}
        with _start_run(experiment_id, run_name, run_tags) as run:
            run_id = run.info.run_id
            _retry(lambda: mlflow.log_params(_training_params(config)), "log params")
            summary = fitted.training_summary()
            metrics = _training_metrics(fitted, summary, training_seconds)
            if 0 < len(customers) <= self.per_customer_metrics_limit:
                metrics.update(_per_customer_metrics(summary))
            for chunk in _chunks(list(metrics.items()), 500):
                _retry(lambda chunk=chunk: mlflow.log_metrics(dict(chunk)), "log metrics")
            with tempfile.TemporaryDirectory(prefix="anomaly-pipelines-run-") as tmp:
                _write_run_files(Path(tmp), fitted, summary)
                _retry(lambda: mlflow.log_artifacts(tmp), "log artifacts")
            for plot in plots or []:
                _retry(
                    lambda plot=plot: mlflow.log_artifact(str(plot), artifact_path="plots"),
                    "log plot",
                )

            if customers:
                model_versions = self._log_models(fitted, config, run_id)
                registered_names = {cid: self.registered_name(cid) for cid in model_versions}
            elapsed = time.perf_counter() - started
            _retry(
                lambda: mlflow.log_metrics(
                    {"registered_versions": len(model_versions), "logging_seconds": elapsed}
                ),
                "log metrics",
            )
        return TrainingRecord(run_id, str(experiment_id), model_versions, registered_names)

    def _log_models(
        self, fitted: FittedDetectors, config: PipelineConfig, run_id: str
    ) -> dict[str, str]:
        """Log the bundles and each stacked Keras model into the active run, then register one
        version per customer pointing at the Keras model that holds its slot."""
        import mlflow.keras
        import mlflow.sklearn

        bundle_uris: dict[str, str] = {}
        with _quiet("mlflow.sklearn"):
            for name, bundle in (
                (IF_MODEL_NAME, fitted.isolation_forest),
                (LOF_MODEL_NAME, fitted.local_outlier_factor),
            ):
                # pickle, not MLflow's default skops: skops took minutes for a few hundred
                # IsolationForests and must be told to trust every tree type anyway.
                info = _retry(
                    lambda name=name, bundle=bundle: mlflow.sklearn.log_model(
                        bundle,
                        name=name,
                        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_PICKLE,
                        pip_requirements=_requirements("scikit-learn"),
                    ),
                    f"log {name}",
                )
                bundle_uris[name] = info.model_uri
        requests: list[VersionRequest] = []
        for index, fit in enumerate(fitted.autoencoders):
            lstm_name = f"lstm_autoencoder_{index}"
            info = _retry(
                lambda fit=fit, lstm_name=lstm_name: mlflow.keras.log_model(
                    fit.model,
                    name=lstm_name,
                    signature=_keras_signature(fit.model),
                    pip_requirements=_requirements("keras", "tensorflow-cpu", "tensorflow"),
                    params={"customers": len(fit.customer_ids), "units": config.lstm.units},
                ),
                f"log {lstm_name}",
            )
            slots = {cid: i for i, cid in enumerate(_layer(fit.model).customer_ids)}
            requests.extend(
                VersionRequest(
                    cid,
                    source=info.model_uri,
                    run_id=run_id,
                    model_id=info.model_id,
                    tags={
                        "slot": str(slots[cid]),
                        "lstm_model_name": lstm_name,
                        "isolation_forest_uri": bundle_uris[IF_MODEL_NAME],
                        "local_outlier_factor_uri": bundle_uris[LOF_MODEL_NAME],
                    },
                )
                for cid in fit.customer_ids
            )
        started = time.perf_counter()
        versions = self.register_versions(requests)
        _retry(
            lambda: mlflow.log_metric("registration_seconds", time.perf_counter() - started),
            "log metrics",
        )
        return versions

    def register_version(
        self,
        customer_id: str,
        *,
        source: str,
        run_id: str,
        tags: dict[str, str] | None = None,
        model_id: str | None = None,
    ) -> str:
        """Register one version (see ``register_versions``); returns its number."""
        request = VersionRequest(customer_id, source, run_id, model_id, dict(tags or {}))
        return self.register_versions([request])[customer_id]

    def register_versions(self, requests: list[VersionRequest]) -> dict[str, str]:
        """Add one version per request to the customer's registered model (created on first
        use) and give it the alias unless a newer version already holds it.

        Existing models and current aliases are read in bulk (a listing page per
        ``page_size`` customers when there are many), so a batch costs about three writes
        per customer: model (first time only), version, alias.
        """
        customers = [r.customer_id for r in requests]
        if len(set(customers)) != len(customers):
            raise ValueError("register_versions(): each customer may appear only once per call")
        client = self._client()
        names = {cid: self.registered_name(cid) for cid in customers}
        existing = self._registered_models(client, list(names.values()))
        for cid, name in names.items():
            if name in existing:
                owner = existing[name].tags.get("customer_id")
                if owner is not None and owner != cid:
                    raise ValueError(
                        f"registered model {name!r} belongs to customer {owner!r}, not {cid!r}; "
                        "another project may share mlflow.model_prefix in this store"
                    )
            else:
                self._create_registered_model(client, name, cid)
        created = {
            r.customer_id: self._create_version(
                client,
                names[r.customer_id],
                r.source,
                r.run_id,
                {**r.tags, "customer_id": r.customer_id, "run_id": r.run_id},
                r.model_id,
            )
            for r in requests
        }
        alias = self.config.alias
        with self._alias_lock():
            current = self._registered_models(client, list(names.values()))
            for cid, version in created.items():
                name = names[cid]
                holder = current[name].aliases.get(alias) if name in current else None
                if holder is None or int(holder) < int(version):
                    _retry(
                        lambda name=name, version=version: client.set_registered_model_alias(
                            name, alias, version
                        ),
                        "set alias",
                    )
        return created

    def _create_registered_model(self, client: MlflowClient, name: str, customer_id: str) -> None:
        try:
            _retry(
                lambda: client.create_registered_model(
                    name,
                    tags={"customer_id": customer_id, "project": PROJECT},
                    description=f"Anomaly detectors of customer {customer_id!r}.",
                ),
                "create model",
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # else: a parallel run made it
                raise

    def _registered_models(
        self, client: MlflowClient, names: list[str]
    ) -> dict[str, RegisteredModel]:
        """The registered models among ``names`` that exist, with their tags and aliases."""
        wanted = set(names)
        out: dict[str, RegisteredModel] = {}
        if len(wanted) <= self.direct_lookup_limit:
            for name in wanted:
                try:
                    out[name] = _retry(
                        lambda name=name: client.get_registered_model(name), "read model"
                    )
                except MlflowException as exc:
                    if exc.error_code not in _MISSING:
                        raise
            return out
        for model in self._list_models(client):
            if model.name in wanted:  # LIKE treats '_' as a wildcard: keep exact names only
                out[model.name] = model
        return out

    def _list_models(self, client: MlflowClient) -> Iterator[RegisteredModel]:
        """Every registered model under the prefix, ``page_size`` per call."""
        token: str | None = None
        while True:
            page = _retry(
                lambda token=token: client.search_registered_models(
                    filter_string=f"name LIKE '{self.config.model_prefix}.%'",
                    max_results=self.page_size,
                    page_token=token,
                ),
                "list registered models",
            )
            yield from page
            token = page.token
            if not token:
                return

    def _create_version(
        self,
        client: MlflowClient,
        name: str,
        source: str,
        run_id: str,
        tags: dict[str, str],
        model_id: str | None,
    ) -> str:
        # A retry after "database is locked" must not add a second version if the first attempt
        # did land, so each registration carries its own id and a retry looks for it first.
        registration = uuid.uuid4().hex
        tags = {**tags, "registration_id": registration}

        attempts = 0

        def attempt() -> str:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                found = client.search_model_versions(
                    f"name = '{name}' and run_id = '{run_id}' "
                    f"and tags.registration_id = '{registration}'"
                )
                if found:
                    return str(found[0].version)
            version = client.create_model_version(
                name, source, run_id=run_id, tags=tags, model_id=model_id, await_creation_for=0
            )
            return str(version.version)

        return _retry(attempt, f"create version of {name}")

    @contextlib.contextmanager
    def _alias_lock(self) -> Iterator[None]:
        """Serialise "read champion, compare, move alias" across threads and processes that
        share a local SQLite store; other stores only get the in-process lock."""
        with _THREAD_LOCK:
            db = _sqlite_path(self.tracking_uri)
            if db is None:
                yield
                return
            with _file_lock(Path(f"{db}.alias.lock")):
                yield

    # ------------------------------------------------------------------ aliases and versions

    def set_alias(self, customer_id: str, version: str) -> None:
        """Point the customer's alias at ``version`` (a rollback or a manual promotion)."""
        client = self._client()
        name = self.registered_name(customer_id)
        with self._alias_lock():
            try:
                _retry(
                    lambda: client.set_registered_model_alias(
                        name, self.config.alias, str(version)
                    ),
                    "set alias",
                )
            except MlflowException as exc:
                raise ValueError(
                    f"cannot point alias {self.config.alias!r} of {name!r} (customer "
                    f"{customer_id!r}) at version {version!r}: {exc.message}"
                ) from exc

    def versions(self, customer_id: str) -> list[str]:
        """All version numbers of the customer's registered model, oldest first."""
        client = self._client()
        name = self.registered_name(customer_id)
        found: list[ModelVersion] = []
        token: str | None = None
        while True:
            page = _retry(
                lambda token=token: client.search_model_versions(
                    f"name = '{name}'", max_results=self.page_size, page_token=token
                ),
                "search versions",
            )
            found.extend(page)
            token = page.token
            if not token:
                break
        return [str(v) for v in sorted({int(mv.version) for mv in found})]

    def champion_version(self, customer_id: str) -> str | None:
        """The version the alias points at, or None."""
        return self.champion_versions([customer_id]).get(customer_id)

    def champion_versions(self, customer_ids: list[str]) -> dict[str, str]:
        """Alias targets of many customers at once; customers without one are left out."""
        return {
            cid: str(mv.version) for cid, mv in self._resolve(self._client(), customer_ids).items()
        }

    def _resolve(
        self, client: MlflowClient, customer_ids: Iterable[str]
    ) -> dict[str, ModelVersion]:
        """Champion version of each customer that has one: direct lookups for a few customers,
        paged listing of the prefix for many (registered models carry their aliases, and
        usually the champion is also the latest version, which the listing includes)."""
        wanted = {self.registered_name(cid): cid for cid in dict.fromkeys(customer_ids)}
        alias = self.config.alias
        out: dict[str, ModelVersion] = {}
        if len(wanted) <= self.direct_lookup_limit:
            for name, cid in wanted.items():
                try:
                    out[cid] = _retry(
                        lambda name=name: client.get_model_version_by_alias(name, alias),
                        "read alias",
                    )
                except MlflowException as exc:
                    if exc.error_code not in _MISSING:
                        raise
            return out
        pending: dict[str, str] = {}
        for model in self._list_models(client):
            # LIKE treats '_' as a wildcard: keep exact names only.
            if model.name not in wanted or alias not in model.aliases:
                continue
            version = str(model.aliases[alias])
            latest = [mv for mv in model.latest_versions or [] if str(mv.version) == version]
            if latest:
                out[wanted[model.name]] = latest[0]
            else:
                pending[model.name] = version
        for name, version in pending.items():
            out[wanted[name]] = _retry(
                lambda name=name, version=version: client.get_model_version(name, version),
                "read version",
            )
        return out

    # ------------------------------------------------------------------ loading

    def load_champions(self, customer_ids: list[str]) -> FittedDetectors:
        """The champion models of ``customer_ids`` as one ``FittedDetectors`` for scoring.

        Each logged Keras model and each run's bundles are loaded once, however many of the
        customers they serve (and kept in a small process-wide cache, since logged models never
        change). Customers without a usable champion are in ``skipped`` with the reason.
        """
        client = self._client()
        champions = self._resolve(client, customer_ids)
        fitted = FittedDetectors()
        for cid in dict.fromkeys(customer_ids):
            if cid not in champions:
                fitted.skipped[cid] = NO_CHAMPION
        by_source: dict[str, list[tuple[str, ModelVersion]]] = {}
        for cid, version in champions.items():
            by_source.setdefault(version.source, []).append((cid, version))
        for source, members in by_source.items():
            # One broken champion (a deleted run, a missing artifact) must not stop the others.
            try:
                model = self._cached(("keras", source), lambda source=source: _load_keras(source))
            except (MlflowException, OSError) as exc:
                for cid, version in members:
                    fitted.skipped[cid] = f"champion version {version.version} of {version.name} is unusable: {exc}"
                continue
            layer_ids = set(_layer(model).customer_ids)
            loaded: list[str] = []
            losses: list[tuple[float, float, int]] = []
            for cid, version in members:
                try:
                    problem, run = self._run_artifacts(version)
                except (MlflowException, OSError) as exc:
                    problem, run = str(exc), None
                if run is not None:
                    problem = problem or _missing_parts(cid, layer_ids, run)
                if problem or run is None:
                    fitted.skipped[cid] = (
                        f"champion version {version.version} of {version.name} is unusable: {problem}"
                    )
                    continue
                fitted.calibrations[cid] = run.calibrations[cid]
                fitted.isolation_forest.models[cid] = run.isolation_forest.models[cid]
                fitted.local_outlier_factor.models[cid] = run.local_outlier_factor.models[cid]
                losses.append(_losses(run.summary, cid))
                loaded.append(cid)
            if loaded:
                train, val, epochs = (np.array(col) for col in zip(*losses, strict=True))
                fitted.autoencoders.append(
                    lstm.AutoencoderFit(model, loaded, train, val, epochs.astype(int))
                )
        return fitted

    def _run_artifacts(self, version: ModelVersion) -> tuple[str, _RunArtifacts | None]:
        tags = version.tags or {}
        if_uri, lof_uri = tags.get("isolation_forest_uri"), tags.get("local_outlier_factor_uri")
        if not version.run_id or not if_uri or not lof_uri:
            return (
                "the version lacks the run_id / isolation_forest_uri / local_outlier_factor_uri tags",
                None,
            )
        run_id = version.run_id
        run = _RunArtifacts(
            calibrations=self._cached(
                ("calibrations", run_id), lambda: self._load_calibrations(run_id)
            ),
            isolation_forest=self._cached(("sklearn", if_uri), lambda: _load_sklearn(if_uri)),
            local_outlier_factor=self._cached(("sklearn", lof_uri), lambda: _load_sklearn(lof_uri)),
            summary=self._cached(("summary", run_id), lambda: self._load_summary(run_id)),
        )
        return "", run

    def _download(self, run_id: str, artifact_path: str, dst: str) -> str:
        return _retry(
            lambda: mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact_path, dst_path=dst, tracking_uri=self.tracking_uri
            ),
            f"download {artifact_path}",
        )

    def _load_calibrations(self, run_id: str) -> dict[str, Calibration]:
        with tempfile.TemporaryDirectory(prefix="anomaly-pipelines-cal-") as tmp:
            path = self._download(run_id, CALIBRATIONS_PICKLE, tmp)
            with open(path, "rb") as handle:
                return pickle.load(handle)

    def _load_summary(self, run_id: str) -> pd.DataFrame:
        with tempfile.TemporaryDirectory(prefix="anomaly-pipelines-sum-") as tmp:
            try:
                path = self._download(run_id, SUMMARY_PARQUET, tmp)
            except (MlflowException, OSError):  # runs logged before the summary existed
                return pd.DataFrame(columns=["customer_id", "train_loss", "val_loss", "epochs"])
            return pd.read_parquet(path)

    def _cached(self, key: tuple[str, str], load: Callable[[], T]) -> T:
        return _CACHE.get((self.tracking_uri, *key), load)

    # ------------------------------------------------------------------ reports

    def log_report(
        self, paths: list[Path], *, run_name: str, tags: dict[str, str] | None = None
    ) -> str:
        """Log report files as their own run next to the trainings; returns the run id."""
        experiment_id = self.experiment_id()
        missing = [str(p) for p in paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"log_report(): file(s) not found: {missing}")
        run_tags = {**_safe_mapping(tags or {}, "tag"), "project": PROJECT, "kind": "report"}
        with _start_run(experiment_id, run_name, run_tags) as run:
            for path in paths:
                _retry(
                    lambda path=path: mlflow.log_artifact(str(path), artifact_path="report"),
                    "log report",
                )
            return run.info.run_id


# ---------------------------------------------------------------------- store helpers

_PREPARED: set[str] = set()
_PREPARE_LOCK = threading.Lock()
_THREAD_LOCK = threading.RLock()


def _resolve_tracking_uri(uri: str) -> str:
    """Relative SQLite paths are relative to the working directory when the registry is made;
    pin them so a later ``chdir`` cannot switch stores."""
    if not uri.startswith("sqlite:///"):
        return uri
    rest = uri[len("sqlite:///") :]
    path, _, query = rest.partition("?")
    absolute = Path(unquote(path)).expanduser().resolve()
    return f"sqlite:///{absolute}" + (f"?{query}" if query else "")


def _resolve_artifact_uri(location: str) -> str:
    """An absolute URI; empty stays empty: the tracking server then chooses (with
    ``--serve-artifacts``, ``mlflow-artifacts:/<experiment>``, so clients never write to a
    path of their own disk that other machines cannot read)."""
    if not location:
        return ""
    parsed = urlparse(location)
    if parsed.scheme and len(parsed.scheme) > 1:  # a URI (file:, s3:, ...), not "C:\..."
        return location
    return Path(location).expanduser().resolve().as_uri()


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///") :].partition("?")[0]))


def _prepare_store(uri: str) -> None:
    """Create the SQLite folder, switch the database to WAL (readers stop blocking writers; the
    setting is stored in the file) and let MLflow create its tables, once per process.

    MLflow creates and migrates a new SQLite store without any lock of its own: two processes
    doing it at once interleave their migrations and one fails ("duplicate column name",
    alembic "0 found"). Both steps therefore run under an exclusive file lock next to the
    database, so the second process waits and then finds the store complete.
    """
    if uri in _PREPARED:
        return
    with _PREPARE_LOCK:
        if uri in _PREPARED:
            return
        db = _sqlite_path(uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)

            def wal() -> None:
                with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
                    conn.execute("PRAGMA journal_mode=WAL").fetchone()

            with _file_lock(Path(f"{db}.init.lock")):
                _retry(wal, f"enable WAL on {db}")
                # Without fcntl (not POSIX) another process may still be creating the tables:
                # one that sees a half-made schema ("already exists") tries again.
                _retry(
                    lambda: MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(
                        max_results=1
                    ),
                    f"initialise {db}",
                    extra=("already exists",),
                )
        _PREPARED.add(uri)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes of this machine (``flock``; a no-op without fcntl)."""
    if fcntl is None:  # pragma: no cover - not reached on Linux/macOS
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _owner_tags() -> dict[str, str]:
    """Who opened a run, so a later process can tell whether it is still alive."""
    pid = os.getpid()
    return {
        OWNER_HOST_TAG: socket.gethostname(),
        OWNER_PID_TAG: str(pid),
        OWNER_START_TAG: process_start(pid) or "",
    }


def _is_transient(exc: BaseException, extra: tuple[str, ...] = ()) -> bool:
    markers = (
        "database is locked",  # SQLITE_BUSY
        "table is locked",  # SQLITE_LOCKED
        "schema is locked",
        # MLflow gave up after its own retries of a version-number collision.
        "model version creation error",
        *extra,
    )
    visited: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in visited:
        if any(m in str(current).lower() for m in markers):
            return True
        visited.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _without_credentials(uri: str) -> str:
    """``uri`` fit for messages and logs: user and password removed from its address."""
    parsed = urlparse(uri)
    if parsed.username is None and parsed.password is None:
        return uri
    return parsed._replace(netloc=(parsed.hostname or "") + (f":{parsed.port}" if parsed.port else "")).geturl()


@contextlib.contextmanager
def _start_run(experiment_id: str, run_name: str, tags: dict[str, str]) -> Iterator[Any]:
    """A run in our experiment, nested when the caller (a Dagster op, a notebook) has one open.

    Ending it is retried like every other write: ``mlflow.end_run`` takes the run off MLflow's
    stack and then writes its end without retrying, which on a busy store would fail the whole
    training after its versions were registered and leave the run RUNNING.
    """
    nested = mlflow.active_run() is not None
    tags = {**tags, **_owner_tags()}
    run = _retry(
        lambda: mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags, nested=nested),
        "start run",
    )
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        try:
            mlflow.end_run(status)
        except Exception as exc:
            if not _is_transient(exc):
                raise
            _retry(lambda: MlflowClient().set_terminated(run.info.run_id, status), "end run")


def _retry(
    action: Callable[[], T], what: str, attempts: int = 12, extra: tuple[str, ...] = ()
) -> T:
    """Run ``action``, retrying with exponential backoff while SQLite reports a lock. Other
    errors are raised at once; so is the last lock error, after about a minute of backoff plus
    the store's own busy timeout on each attempt."""
    delay = 0.05
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:
            if attempt == attempts - 1 or not _is_transient(exc, extra):
                raise
            log.info("MLflow store busy during %s (attempt %d): %s", what, attempt + 1, exc)
            time.sleep(delay * (1.0 + _JITTER.random()))
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Hide the warnings MLflow repeats on every log of a pickled sklearn model (format chosen
    on purpose; the bundle has no ``predict`` so no pyfunc flavour)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _LoadedCache:
    """A small LRU of loaded models keyed by store and immutable source."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, ...], load: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = load()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_CACHE = _LoadedCache()


def clear_cache() -> None:
    """Drop loaded champion models (to free memory in a long-lived process)."""
    _CACHE.clear()


# ---------------------------------------------------------------------- model helpers


def _layer(model: Any) -> Any:
    return model.get_layer(lstm.LAYER_NAME)


def _keras_signature(model: Any) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    layer = _layer(model)
    shape = (-1, int(layer.n_models), int(layer.window))
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), shape, "windows")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), shape, "reconstruction")]),
    )


def _requirements(*packages: str) -> list[str]:
    """Pinned requirements of the installed packages (skips MLflow's slow inference, which
    would import and run the model in a subprocess)."""
    out = []
    for package in (*packages, "anomaly_pipelines"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out.append(f"{package}=={metadata.version(package)}")
    return out


def _load_keras(source: str) -> Any:
    lstm.keras_module()  # registers the custom layer before Keras deserialises the model
    import mlflow.keras

    with tempfile.TemporaryDirectory(prefix="anomaly-pipelines-keras-") as tmp:
        return _retry(lambda: mlflow.keras.load_model(source, dst_path=tmp), f"load {source}")


def _load_sklearn(uri: str) -> CustomerOutlierModels:
    import mlflow.sklearn

    with tempfile.TemporaryDirectory(prefix="anomaly-pipelines-sk-") as tmp:
        return _retry(lambda: mlflow.sklearn.load_model(uri, dst_path=tmp), f"load {uri}")


def _missing_parts(cid: str, layer_ids: set[str], run: _RunArtifacts) -> str:
    parts = {
        "the Keras model": cid in layer_ids,
        "calibrations": cid in run.calibrations,
        "isolation forests": cid in run.isolation_forest.models,
        "local outlier factors": cid in run.local_outlier_factor.models,
    }
    absent = [name for name, present in parts.items() if not present]
    return f"customer missing from {', '.join(absent)}" if absent else ""


def _losses(summary: pd.DataFrame, cid: str) -> tuple[float, float, int]:
    rows = summary[summary["customer_id"] == cid] if "customer_id" in summary else summary.iloc[0:0]
    if rows.empty:
        return math.nan, math.nan, 0
    row = rows.iloc[0]
    return float(row["train_loss"]), float(row["val_loss"]), int(row["epochs"])


# ---------------------------------------------------------------------- run contents


def _safe_mapping(values: dict[str, Any], kind: str) -> dict[str, str]:
    """Drop entries whose key names a credential: a key must never reach MLflow."""
    out = {}
    for key, value in values.items():
        if _SECRET_KEY.search(str(key)):
            log.warning("not logging %s %r to MLflow: the name looks like a credential", kind, key)
            continue
        out[str(key)] = str(value)
    return out


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(f"{prefix}.{key}", item)
    else:
        yield prefix, value


def _training_params(config: PipelineConfig) -> dict[str, str]:
    params: dict[str, Any] = {}
    for section in PARAM_SECTIONS:
        params.update(_flatten(section, getattr(config, section).model_dump(mode="json")))
    return _safe_mapping(params, "param")


def _finite(values: pd.Series) -> np.ndarray:
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return array[np.isfinite(array)]


def _training_metrics(
    fitted: FittedDetectors, summary: pd.DataFrame, training_seconds: float | None
) -> dict[str, float]:
    metrics: dict[str, float] = {
        "n_customers": float(len(fitted.calibrations)),
        "n_skipped": float(len(fitted.skipped)),
        "n_stacked_models": float(len(fitted.autoencoders)),
    }
    if training_seconds is not None:
        metrics["training_seconds"] = float(training_seconds)
    for column, name in (
        ("train_loss", "train_loss"),
        ("val_loss", "val_loss"),
        ("epochs", "epochs"),
    ):
        values = _finite(summary[column]) if column in summary else np.empty(0)
        if values.size:
            metrics[f"{name}_mean"] = float(values.mean())
            metrics[f"{name}_median"] = float(np.median(values))
    return metrics


def _per_customer_metrics(summary: pd.DataFrame) -> dict[str, float]:
    metrics = {}
    for row in summary.itertuples(index=False):
        key = customer_key(str(row.customer_id))
        for column in ("train_loss", "val_loss", "epochs", "lstm_threshold"):
            value = float(getattr(row, column))
            if math.isfinite(value):
                metrics[f"customers/{key}/{column}"] = value
    return metrics


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, int | str | bool) or value is None:
        return value
    return str(value)


def _write_run_files(directory: Path, fitted: FittedDetectors, summary: pd.DataFrame) -> None:
    with open(directory / CALIBRATIONS_PICKLE, "wb") as handle:
        pickle.dump(fitted.calibrations, handle, protocol=pickle.HIGHEST_PROTOCOL)
    (directory / CALIBRATIONS_JSON).write_text(
        json.dumps(_jsonable(fitted.calibrations), indent=1, sort_keys=True), encoding="utf-8"
    )
    (directory / SKIPPED_JSON).write_text(
        json.dumps(fitted.skipped, indent=1, sort_keys=True), encoding="utf-8"
    )
    if len(summary):
        summary.to_parquet(directory / SUMMARY_PARQUET, index=False)
        # For people (the parquet is for code): ids must not run as spreadsheet formulas.
        write_csv(summary, directory / SUMMARY_CSV)


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
