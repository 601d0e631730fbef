"""The MLflow registry under faults, against real SQLite stores in temp dirs: a training
process killed mid-run, and trainings that first use a new store at the same moment."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from anomaly_pipelines.core.config import MlflowConfig
from anomaly_pipelines.core.registry import ORPHANED_TAG, ModelRegistry
from anomaly_pipelines.core.registry.store import start_run
from anomaly_pipelines_tests.core import registry_worker

ROOT = Path(__file__).resolve().parents[2]


def _settings(tmp_path: Path) -> MlflowConfig:
    return MlflowConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "artifacts"),
    )


KILLED_TRAINING = """
import os, signal
from anomaly_pipelines.core.config import MlflowConfig
from anomaly_pipelines.core.registry import ModelRegistry
from anomaly_pipelines.core.registry.store import start_run
registry = ModelRegistry(MlflowConfig(tracking_uri={uri!r}, artifact_location={artifacts!r}))
with start_run(registry.experiment_id(), "killed-training", {{"project": "anomaly_pipelines"}}):
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of a training
"""


def test_a_run_left_running_by_a_killed_process_is_closed_on_the_next_start(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    code = KILLED_TRAINING.format(uri=settings.tracking_uri, artifacts=settings.artifact_location)
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, timeout=300
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    (orphan,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert orphan.info.status == "RUNNING"

    registry = ModelRegistry(settings)
    experiment = registry.experiment_id()  # the next start
    with start_run(experiment, "alive", {"project": "anomaly_pipelines"}) as alive:
        # A second process start while this run is open: a live owner's run is not touched.
        assert ModelRegistry(settings).store.close_orphaned_runs(experiment) == []
        assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    closed = client.get_run(orphan.info.run_id)
    assert closed.info.status == "KILLED"
    assert "ended without closing the run" in closed.data.tags[ORPHANED_TAG]
    assert client.get_run(alive.info.run_id).info.status == "FINISHED"
    assert os.getpid() != int(closed.data.tags["anomaly_pipelines/pid"])


def test_two_processes_creating_a_new_store_at_once_both_succeed(tmp_path: Path) -> None:
    """Two trainings start on a store that does not exist yet: MLflow's table creation and
    migrations must not run twice at once ("duplicate column name", alembic "0 found")."""
    context = multiprocessing.get_context("spawn")
    for attempt in range(1):  # failed on the first try before the lock (2 of 2 in the report)
        settings = _settings(tmp_path / f"try-{attempt}")
        start = context.Barrier(2)
        results: Any = context.Queue()
        processes = [
            context.Process(
                target=registry_worker.open_new_store, args=(settings.model_dump(), start, results)
            )
            for _ in range(2)
        ]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=300) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        assert [status for status, _ in outcomes] == ["ok", "ok"], outcomes
        assert outcomes[0][1] == outcomes[1][1]  # one experiment, created once


def test_a_training_killed_at_a_random_point_leaves_a_consistent_registry(tmp_path: Path) -> None:
    """A training process is killed (SIGKILL) at a random point: while fitting, or a random
    moment into logging and registering. A re-run then ends consistent: no RUNNING run, one
    champion per customer pointing at its newest version, and the champions load and score."""
    import json
    import random
    import time

    import numpy as np
    import pandas as pd

    from anomaly_pipelines.core.api import coerce
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_series
    from anomaly_pipelines.core.series import regularize

    settings = _settings(tmp_path)
    days = 70
    seed = random.SystemRandom().randrange(1_000_000)
    chooser = random.Random(seed)
    phase = chooser.choice(["fitting", "logging"])
    delay = chooser.uniform(0.0, 1.5 if phase == "fitting" else 4.0)
    child = subprocess.Popen(
        [sys.executable, "-m", "anomaly_pipelines_tests.core.registry_worker",
         json.dumps(settings.model_dump()), str(days)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip() == phase:
            break
    time.sleep(delay)
    child.kill()
    child.wait(timeout=60)
    where = f"killed {delay:.2f} s into {phase!r} (seed {seed})"

    config = PipelineConfig().merged({"lstm": {"epochs": 1}, "mlflow": settings.model_dump()})
    registry = ModelRegistry(config.mlflow)
    experiment = registry.experiment_id()  # the next start closes what the kill left open
    series = regularize(coerce(registry_worker.kill_test_usage(np, pd, days)), config.preprocess)
    registry.log_training(fit_detectors(series, config), run_name="re-run")

    client = MlflowClient(tracking_uri=registry.tracking_uri)
    statuses = [run.info.status for run in client.search_runs([experiment])]
    assert "RUNNING" not in statuses, (where, statuses)
    customers = [s.customer_id for s in series]
    for cid in customers:
        versions = registry.versions(cid)
        assert versions == [str(v) for v in range(1, len(versions) + 1)], (where, cid, versions)
        assert registry.champion_version(cid) == versions[-1], (where, cid)
    scores = score_series(series, registry.load_champions(customers, config), config)
    assert len(scores) == sum(len(s) for s in series) and scores["hybrid_score"].notna().all(), where
