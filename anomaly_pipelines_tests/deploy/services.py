"""The real services of the deploy tests: PostgreSQL, Redis, an MLflow tracking server and
celery workers, started and stopped here, never mocked.

PostgreSQL and Redis are the machine's own (127.0.0.1:5432 with trust authentication, 127.0.0.1:6379).
A test that finds one missing is skipped with the reason, unless
``ANOMALY_PIPELINES_REQUIRE_SERVICES=1`` (set by ``.ci/run``) turns the absence into a failure:
CI must never pass by skipping. Every test gets databases and a broker key prefix of its own,
so parallel sessions on one machine (other developers, CI) do not see each other's runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from anomaly_pipelines_tests.loopback import free_port

REQUIRE_ENV = "ANOMALY_PIPELINES_REQUIRE_SERVICES"
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "configs" / "deploy"
BIN = Path(sys.executable).parent
PG_HOST = os.environ.get("ANOMALY_PIPELINES_TEST_PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("ANOMALY_PIPELINES_TEST_PGPORT", "5432"))
REDIS_URL = os.environ.get("ANOMALY_PIPELINES_TEST_REDIS", "redis://127.0.0.1:6379")


def missing(service: str, reason: str) -> None:
    """Skip (a laptop without the service) or fail (CI, where it must be there)."""
    message = f"{service} is not available: {reason}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1: the deploy tests must run)")
    pytest.skip(f"{message} (set up PostgreSQL and Redis on 127.0.0.1 to run the deploy tests)")


# ---------------------------------------------------------------------- PostgreSQL


def postgres_user() -> str:
    """The first of ``$ANOMALY_PIPELINES_TEST_PGUSER``, postgres, root that can connect."""
    try:
        import psycopg2
    except ImportError as exc:
        missing("PostgreSQL", f"psycopg2 is not installed ({exc}); install the deploy extra")
    errors = []
    for user in dict.fromkeys(
        [os.environ.get("ANOMALY_PIPELINES_TEST_PGUSER", ""), "postgres", "root"]
    ):
        if not user:
            continue
        try:
            psycopg2.connect(
                host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", connect_timeout=5
            ).close()
            return user
        except psycopg2.Error as exc:
            errors.append(f"{user}: {str(exc).strip()}")
    missing("PostgreSQL", f"{PG_HOST}:{PG_PORT}: " + "; ".join(errors))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def database(user: str, purpose: str) -> Iterator[str]:
    """A new, empty database named after ``purpose`` and a random suffix, dropped afterwards."""
    import psycopg2

    name = f"ap_test_{purpose}_{uuid.uuid4().hex[:10]}"

    def admin(sql: str) -> None:
        conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=user, dbname="postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql)
        finally:
            conn.close()

    admin(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlalchemy_url(user: str, db: str) -> str:
    # SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql://; psycopg2 is what we ship.
    return f"postgresql+psycopg2://{user}@{PG_HOST}:{PG_PORT}/{db}"


# ---------------------------------------------------------------------- Redis


def redis_available() -> None:
    try:
        import redis
    except ImportError as exc:
        missing("Redis", f"the redis client is not installed ({exc})")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        missing("Redis", f"{REDIS_URL}: {exc}")


# ---------------------------------------------------------------------- processes


def _stop(process: subprocess.Popen[Any], timeout: float = 5) -> None:
    """SIGTERM the process group (the worker and its pool), then SIGKILL what is left."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


def _wait_port(port: int, process: subprocess.Popen[Any], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server exited ({process.returncode}):\n{log.read_text()[-3000:]}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.5)
    raise TimeoutError(
        f"nothing listens on port {port} after {timeout} s:\n{log.read_text()[-3000:]}"
    )


@dataclass
class MlflowServer:
    uri: str
    backend_store: str
    artifacts: Path


@contextlib.contextmanager
def mlflow_server(user: str, workdir: Path) -> Iterator[MlflowServer]:
    """``mlflow server`` with a Postgres backend store and served artifacts, as
    configs/deploy/mlflow-server.sh starts it, on a free port of 127.0.0.1."""
    import urllib.request

    with database(user, "mlflow") as db:
        port = free_port()
        artifacts = workdir / "mlflow-artifacts"
        log = workdir / "mlflow-server.log"
        store = sqlalchemy_url(user, db)
        command = [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            store,
            "--serve-artifacts",
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True
            )
        try:
            _wait_port(port, process, log, timeout=240)
            # Listening is not serving: the workers import MLflow's app after binding.
            deadline = time.monotonic() + 240
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                        break
                except OSError as exc:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError(
                            f"MLflow server not healthy:\n{log.read_text()[-3000:]}"
                        ) from exc
                    time.sleep(0.5)
            yield MlflowServer(f"http://127.0.0.1:{port}", store, artifacts)
        finally:
            _stop(process)


@contextlib.contextmanager
def port_forward(port: int, target: int) -> Iterator[None]:
    """From now on, connections to ``port`` of 127.0.0.1 reach ``target`` there, bytes unchanged
    both ways: an address of a real server that starts answering only now, as a tracking
    server's published port or load balancer does once the server behind it is back. Before,
    nothing listens on ``port`` and a client gets a refused connection."""
    import threading

    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.2)
    stop = threading.Event()
    open_sockets: list[socket.socket] = []

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(("127.0.0.1", target), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            open_sockets.extend([client, upstream])
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield
    finally:
        stop.set()
        acceptor.join(timeout=5)
        listener.close()
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.close()


@dataclass
class Deployment:
    """A Dagster instance on Postgres, celery settings on Redis and the environment that the
    run processes and the workers share (what docker-compose.yaml gives every container)."""

    home: Path
    env: dict[str, str]
    celery_config: Path
    workers: list[subprocess.Popen[Any]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def instance(self) -> Any:
        import dagster as dg

        with _environ(self.env):
            return dg.DagsterInstance.from_config(str(self.home))


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def deployment(user: str, workdir: Path, pipeline_config: Path) -> Iterator[Deployment]:
    """configs/deploy/dagster.yaml on a new database, and configs/deploy/celery.yaml with a key
    prefix of this test's own on the Redis broker."""
    with database(user, "dagster") as db:
        home = workdir / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text())
        celery = yaml.safe_load((DEPLOY / "celery.yaml").read_text())
        source = celery["execution"]["config"]["config_source"]
        prefix = f"ap-test-{uuid.uuid4().hex[:10]}:"
        for key in ("broker_transport_options", "result_backend_transport_options"):
            source[key] = {**source.get(key, {}), "global_keyprefix": prefix}
        celery_config = workdir / "celery.yaml"
        celery_config.write_text(yaml.safe_dump(celery))
        env = {
            "DAGSTER_HOME": str(home),
            "DAGSTER_POSTGRES_HOST": PG_HOST,
            "DAGSTER_POSTGRES_PORT": str(PG_PORT),
            "DAGSTER_POSTGRES_USER": user,
            "DAGSTER_POSTGRES_PASSWORD": "",
            "DAGSTER_POSTGRES_DB": db,
            "ANOMALY_PIPELINES_CELERY_BROKER": f"{REDIS_URL}/0",
            "ANOMALY_PIPELINES_CELERY_BACKEND": f"{REDIS_URL}/1",
            "ANOMALY_PIPELINES_CONFIG": str(pipeline_config),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        deploy = Deployment(home, env, celery_config)
        try:
            yield deploy
        finally:
            for worker in deploy.workers:
                _stop(worker)
            _forget(prefix)


def _forget(prefix: str) -> None:
    """Delete this test's queues and results from Redis (only keys under its own prefix)."""
    import redis

    for db in (0, 1):
        client = redis.Redis.from_url(f"{REDIS_URL}/{db}")
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


def start_workers(deploy: Deployment, count: int, workdir: Path, pinned: bool = False) -> list[str]:
    """``dagster-celery worker start`` (the command docker-compose.yaml runs), ``count`` times,
    one pool process each; returns their names (``wait_for_workers`` waits until they answer).
    ``pinned``: worker i may run on the i-th core only, as a worker given one core would."""
    # dagster-celery appends "@<host>" to the name it is given.
    names = [f"ap-test-{i}-{uuid.uuid4().hex[:6]}" for i in range(count)]
    cores = sorted(os.sched_getaffinity(0)) if pinned else []
    for index, name in enumerate(names):
        core = {cores[index % len(cores)]} if cores else None
        log = workdir / f"worker-{name}.log"
        with open(log, "wb") as out:
            deploy.workers.append(
                subprocess.Popen(
                    [
                        str(BIN / "dagster-celery"),
                        "worker",
                        "start",
                        "-A",
                        "dagster_celery.app",
                        "-y",
                        str(deploy.celery_config),
                        "-n",
                        name,
                        "--",
                        "--concurrency=1",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    env={**os.environ, **deploy.env},
                    start_new_session=True,
                    preexec_fn=None if core is None else lambda core=core: os.sched_setaffinity(0, core),
                )
            )
        deploy.logs.append(log)
    return [f"{name}@{socket.gethostname()}" for name in names]


def wait_for_workers(deploy: Deployment, names: list[str], timeout: float = 240) -> None:
    """Until every named worker answers a ping through the broker."""
    from dagster_celery.make_app import make_app

    with _environ(deploy.env):
        from dagster_celery.cli import get_validated_config

        settings = get_validated_config(str(deploy.celery_config))
        app = make_app(
            {
                "broker": settings["broker"],
                "backend": settings["backend"],
                "config_source": type("Conf", (), dict(settings["config_source"]))(),
            }
        )
    deadline = time.monotonic() + timeout
    try:
        while True:
            replies = app.control.ping(timeout=2) or []
            answered = {name for reply in replies for name in reply}
            if set(names) <= answered:
                return
            dead = [w for w in deploy.workers if w.poll() is not None]
            if dead or time.monotonic() > deadline:
                tails = "\n".join(log.read_text()[-2000:] for log in deploy.logs)
                raise RuntimeError(f"celery workers not ready ({answered} answered):\n{tails}")
            time.sleep(1)
    finally:
        app.close()


def launch(
    deploy: Deployment, job: str, run_config: dict[str, Any], log: Path
) -> subprocess.Popen[Any]:
    """One run of ``job`` from the code location, in its own process, as a run worker does: the
    executor (celery) comes from the pipeline settings that the environment names."""
    config = log.with_suffix(".run.yaml")
    config.write_text(yaml.safe_dump(run_config))
    with open(log, "wb") as out:
        return subprocess.Popen(
            [
                str(BIN / "dagster"),
                "job",
                "execute",
                "-m",
                "anomaly_pipelines.definitions",
                "-a",
                "defs",
                "-j",
                job,
                "-c",
                str(config),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **deploy.env},
            start_new_session=True,
        )
