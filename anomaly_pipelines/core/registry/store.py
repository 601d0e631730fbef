"""The MLflow store: where it is, opening it safely, and writing to it under contention.

Several trainings may write to one SQLite store at once (a batch run next to per-customer runs):
the store runs in WAL mode, is created under a file lock, and every write is retried with
backoff while SQLite reports the database locked (``retry``). MLflow's fluent API (needed by
``log_model``) reads a process-wide tracking URI, so ``MlflowStore.activate`` points it at this
store before every use. Runs record their owner process, so a run left RUNNING by a killed
process is closed on the next start (``MlflowStore.close_orphaned_runs``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from anomaly_pipelines.core.config import MlflowConfig
from anomaly_pipelines.core.processes import process_alive, process_start

try:  # POSIX only; elsewhere concurrent promotion falls back to a process-local lock.
    import fcntl
except ImportError:  # pragma: no cover - not reached on Linux/macOS
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

T = TypeVar("T")

PROJECT = "anomaly_pipelines"
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, tokens); the
# value below selects the model-training view (runs, metrics, registered models).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Owner of a run (see ``MlflowStore.close_orphaned_runs``).
OWNER_HOST_TAG = "anomaly_pipelines/host"
OWNER_PID_TAG = "anomaly_pipelines/pid"
OWNER_START_TAG = "anomaly_pipelines/pid_start"
ORPHANED_TAG = "anomaly_pipelines/orphaned"

# Tag or param keys that look like credentials are never sent to MLflow.
_SECRET_KEY = re.compile(r"key|token|secret|passw|credential|auth", re.IGNORECASE)
# Backoff jitter decorrelates processes that collided on the store, so it must differ between
# processes (forked ones included): it is not a result and needs no seed.
_JITTER = random.SystemRandom()


class MlflowStore:
    """One MLflow tracking store (and its model registry) and this project's experiment in it."""

    def __init__(self, config: MlflowConfig) -> None:
        self.config = config
        self.tracking_uri = _resolve_tracking_uri(config.tracking_uri)
        self.artifact_uri = _resolve_artifact_uri(config.artifact_location)
        self._experiment: str | None = None
        self._client: MlflowClient | None = None

    def client(self) -> MlflowClient:
        """A client of this store (the fluent API is pointed at it too)."""
        self.activate()
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def activate(self) -> None:
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
        self.activate()  # every run starts here: MLflow's fluent API must point at our store
        if self._experiment is not None:
            return self._experiment
        client = self.client()
        name = self.config.experiment
        experiment = retry(lambda: client.get_experiment_by_name(name), "read experiment")
        if experiment is None:
            try:
                self._experiment = retry(
                    lambda: client.create_experiment(
                        name,
                        artifact_location=self.artifact_uri or None,
                        tags={"project": PROJECT, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                    ),
                    "create experiment",
                )
                return self._experiment
            except MlflowException:
                # Another process created it between our read and our write.
                experiment = retry(lambda: client.get_experiment_by_name(name), "read experiment")
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise ValueError(
                f"MLflow experiment {name!r} in {without_credentials(self.tracking_uri)} is deleted; "
                "restore it or set "
                "mlflow.experiment to another name"
            )
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # created before the tag was set
            retry(
                lambda: client.set_experiment_tag(
                    experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
                ),
                "tag experiment",
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
        client = self.client()
        host = socket.gethostname()
        try:
            runs = retry(
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
            retry(
                lambda run_id=run_id, reason=reason: client.set_tag(run_id, ORPHANED_TAG, reason),
                "tag run",
            )
            retry(lambda run_id=run_id: client.set_terminated(run_id, "KILLED"), "end run")
            log.warning("MLflow run %s marked KILLED: %s", run_id, reason)
            closed.append(run_id)
        return closed

    # ------------------------------------------------------------------ training

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialise a read-compare-write across threads and processes sharing a local SQLite
        store (a file lock ``<db>.<name>.lock`` next to it); other stores only get the
        in-process lock."""
        with _THREAD_LOCK:
            db = _sqlite_path(self.tracking_uri)
            if db is None:
                yield
                return
            with file_lock(Path(f"{db}.{name}.lock")):
                yield


def safe_mapping(values: dict[str, Any], kind: str) -> dict[str, str]:
    """Drop entries whose key names a credential: a key must never reach MLflow."""
    out = {}
    for key, value in values.items():
        if _SECRET_KEY.search(str(key)):
            log.warning("not logging %s %r to MLflow: the name looks like a credential", kind, key)
            continue
        out[str(key)] = str(value)
    return out



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

            with file_lock(Path(f"{db}.init.lock")):
                retry(wal, f"enable WAL on {db}")
                # Without fcntl (not POSIX) another process may still be creating the tables:
                # one that sees a half-made schema ("already exists") tries again.
                retry(
                    lambda: MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(
                        max_results=1
                    ),
                    f"initialise {db}",
                    extra=("already exists",),
                )
        _PREPARED.add(uri)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
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


def is_transient(exc: BaseException, extra: tuple[str, ...] = ()) -> bool:
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


def without_credentials(uri: str) -> str:
    """``uri`` fit for messages and logs: user and password removed from its address."""
    parsed = urlparse(uri)
    if parsed.username is None and parsed.password is None:
        return uri
    return parsed._replace(netloc=(parsed.hostname or "") + (f":{parsed.port}" if parsed.port else "")).geturl()


@contextlib.contextmanager
def start_run(
    experiment_id: str, run_name: str, tags: dict[str, str], started_at: float | None = None
) -> Iterator[Any]:
    """A run in our experiment, nested when the caller (a Dagster op, a notebook) has one open.

    ``started_at`` (seconds since the epoch) backdates the run's start, so its duration in the
    MLflow UI covers the training that happened before anything could be logged.

    Ending it is retried like every other write: ``mlflow.end_run`` takes the run off MLflow's
    stack and then writes its end without retrying, which on a busy store would fail the whole
    training after its versions were registered and leave the run RUNNING.
    """
    parent = mlflow.active_run()
    tags = {**tags, **_owner_tags()}
    if started_at is None:
        run = retry(
            lambda: mlflow.start_run(
                experiment_id=experiment_id, run_name=run_name, tags=tags, nested=parent is not None
            ),
            "start run",
        )
    else:
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.info.run_id
        created = retry(
            lambda: MlflowClient().create_run(
                experiment_id, start_time=int(started_at * 1000), tags=tags, run_name=run_name
            ),
            "start run",
        )
        run = retry(
            lambda: mlflow.start_run(run_id=created.info.run_id, nested=parent is not None), "start run"
        )
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        try:
            mlflow.end_run(status)
        except Exception as exc:
            if not is_transient(exc):
                raise
            retry(lambda: MlflowClient().set_terminated(run.info.run_id, status), "end run")


def retry(
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
            if attempt == attempts - 1 or not is_transient(exc, extra):
                raise
            log.info("MLflow store busy during %s (attempt %d): %s", what, attempt + 1, exc)
            time.sleep(delay * (1.0 + _JITTER.random()))
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")  # pragma: no cover
