"""Registering N customers: the local SQLite store against an MLflow tracking server on
PostgreSQL (the deployment of configs/deploy/), through the project's own registry code.

    .venv/bin/python benchmarks/registry_stores.py --customers 1000 [--server-only]

Needs PostgreSQL on 127.0.0.1:5432 (trust authentication); starts ``mlflow server`` on a free
port with a new database and drops it afterwards. Prints a Markdown table with seconds and
milliseconds per customer for: registering one new version per customer (a first training:
registered model, version and alias per customer), registering a second version (a
retraining), and reading every champion back (what scoring does first). docs/scaling.md
scales these per-customer costs up.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from anomaly_pipelines.core.config import MlflowConfig
from anomaly_pipelines.core.registry import ModelRegistry, VersionRequest


def _timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(registry: ModelRegistry, customers: int) -> dict[str, float]:
    """Seconds for each registry operation on ``customers`` new customers."""
    import mlflow

    ids = [f"bench-{i:06d}" for i in range(customers)]
    experiment = registry.experiment_id()
    with mlflow.start_run(experiment_id=experiment, run_name="registry-benchmark") as run:
        run_id = run.info.run_id
    # A version's source is the logged Keras model holding the customer's slot; the registry
    # copies nothing, so any model URI of the run measures the same writes.
    source = f"runs:/{run_id}/lstm_autoencoder_0"

    def register() -> None:
        registry.register_versions(
            [VersionRequest(cid, source=source, run_id=run_id, tags={"slot": "0"}) for cid in ids]
        )

    first = _timed(register)
    second = _timed(register)
    champions: dict[str, str] = {}
    read = _timed(lambda: champions.update(registry.champion_versions(ids)))
    assert champions == dict.fromkeys(ids, "2"), "every champion must be the second version"
    return {"first": first, "second": second, "read": read}


@contextlib.contextmanager
def server_store(workdir: Path) -> Iterator[str]:
    from anomaly_pipelines_tests.deploy.services import mlflow_server, postgres_user

    with mlflow_server(postgres_user(), workdir) as server:
        yield server.uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--server-only", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="registry-bench-") as tmp:
        workdir = Path(tmp)
        stores: list[tuple[str, Callable[[], Any]]] = [
            ("mlflow server + PostgreSQL", lambda: server_store(workdir))
        ]
        if not args.server_only:
            sqlite = f"sqlite:///{workdir / 'mlflow.db'}"
            stores.insert(0, ("SQLite file", lambda: contextlib.nullcontext(sqlite)))
        for name, store in stores:
            with store() as uri:
                artifacts = "" if uri.startswith("http") else str(workdir / "artifacts")
                registry = ModelRegistry(MlflowConfig(tracking_uri=uri, artifact_location=artifacts))
                rows.append((name, measure(registry, args.customers)))
    n = args.customers
    print(f"Registering {n} customers ({time.strftime('%Y-%m-%d')}):\n")
    print("| store | first version s | ms/customer | second version s | ms/customer | read champions s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t in rows:
        print(
            f"| {name} | {t['first']:.1f} | {1000 * t['first'] / n:.1f} | {t['second']:.1f} | "
            f"{1000 * t['second'] / n:.1f} | {t['read']:.1f} |"
        )


if __name__ == "__main__":
    main()
