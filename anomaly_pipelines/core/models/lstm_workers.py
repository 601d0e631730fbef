"""Training groups of stacked LSTM autoencoders side by side, one worker process per lane.

A group's training step (a few dozen customers, batch 16, 7 steps) is too small for TensorFlow
to keep two cores busy: one process on 2 cores ran at 1.4 cores. Two processes of one thread
each, every one training its own groups, keep both cores busy. A lane gets every ``lanes``-th
group, so the assignment and each group's result do not depend on timing, and a model's
weights are bit-for-bit the ones the caller's process would train (its validation losses,
summed on fewer threads, agree to float rounding).

Workers are started as ``python -m anomaly_pipelines.core.models.lstm_workers``, not through
``multiprocessing``: a spawned child re-imports the caller's main script, which breaks a script
without the ``if __name__ == "__main__":`` guard that calls ``detect()``. A worker reads its
groups from a pickle file, writes one line per epoch to stdout (progress) and its results to
another pickle file: the weights, and the reconstruction errors of the windows the caller asked
it to score, so the caller builds Keras models only when it uses them.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from anomaly_pipelines.core.config import LSTMConfig
from anomaly_pipelines.core.models import lstm_autoencoder as lstm
from anomaly_pipelines.core.processes import tensorflow_threads, usable_cores
from anomaly_pipelines.core.windows import sliding_windows

# Customers, their training windows, and (or None) each one's whole model input: training
# returns the reconstruction error of its every window.
Group = tuple[list[str], list[np.ndarray], list[np.ndarray] | None]


class TrainingReport(Protocol):
    """Where training progress goes (``detector._TrainingProgress``)."""

    def start_cohort(self, size: int) -> None: ...
    def end_cohort(self, size: int) -> None: ...
    def epoch(self, epoch: int, epochs: int, train_loss: float, val_loss: float) -> None: ...


def lanes_for(groups: int, config: LSTMConfig) -> int:
    """How many worker processes train ``groups`` groups: ``config.training_processes``, or
    with 0 one per usable core, never more than there are groups; 1 trains in this process.

    With 0, lanes are used only when each would train at least two groups: a worker's start
    (importing TensorFlow, compiling the training) costs about 6 s, which a single group per
    lane does not win back. A celery worker's cohort step of 50 customers (two groups) ran
    115.7 s for 200 customers in lanes against 93.6 s in its own process on one core
    (``docs/performance.md`` §4); 200 customers in eight groups, 30.3 s in lanes against
    38.7 s in one process."""
    wanted = config.training_processes or usable_cores()
    lanes = max(1, min(wanted, groups))
    if not config.training_processes and groups < 2 * lanes:
        return 1
    return lanes


def train_groups(
    groups: Sequence[Group], config: LSTMConfig, seed: int, report: TrainingReport | None = None
) -> list[lstm.AutoencoderFit]:
    """Train every group's stacked autoencoder, in group order, in this process or in lanes."""
    lanes = lanes_for(len(groups), config)
    if lanes == 1:
        fits = []
        for group in groups:
            ids, windows, _ = group
            if report is not None:
                report.start_cohort(len(ids))
            trained = _train_group(group, config, seed, report.epoch if report else None)
            fits.append(trained.fit(ids, windows[0].shape[1], config.units, seed))
            if report is not None:
                report.end_cohort(len(ids))
        return fits
    threads = max(1, usable_cores() // lanes)
    lock = threading.Lock()
    shares = [list(range(lane, len(groups), lanes)) for lane in range(lanes)]
    workers = _Workers()
    with ThreadPoolExecutor(lanes) as pool:
        futures = [
            pool.submit(_run_lane, [groups[i] for i in share], config, seed, threads, report, lock, workers)
            for share in shares
        ]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f.exception() for f in done if f.exception() is not None), None)
            if failed is not None:
                raise failed
            results = [future.result() for future in futures]
        except BaseException:
            # A failed lane, or this run interrupted (Ctrl-C, Dagster terminating the step): the
            # other workers' results are of no use, and waiting for them could take minutes.
            workers.kill_all()
            raise
    out: list[lstm.AutoencoderFit | None] = [None] * len(groups)
    for share, fits in zip(shares, results, strict=True):
        for i, fit in zip(share, fits, strict=True):
            out[i] = fit
    return [fit for fit in out if fit is not None]


def _run_lane(
    groups: list[Group],
    config: LSTMConfig,
    seed: int,
    threads: int,
    report: TrainingReport | None,
    lock: threading.Lock,
    workers: _Workers,
) -> list[lstm.AutoencoderFit]:
    with tempfile.TemporaryDirectory(prefix="lstm-lane-") as tmp:
        job, result, log = Path(tmp) / "job.pkl", Path(tmp) / "result.pkl", Path(tmp) / "stderr.txt"
        job.write_bytes(pickle.dumps((groups, config, seed), protocol=pickle.HIGHEST_PROTOCOL))
        env = {**os.environ, **tensorflow_threads(threads)}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        package_root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", __name__, str(job), str(result)]
        # Should this process die, however, the worker's next progress line meets a closed pipe
        # and ends it: no worker trains on for nobody.
        with log.open("w") as errors, workers.start(command, env, errors) as worker:
            assert worker.stdout is not None
            for line in worker.stdout:
                _relay(line, report, lock)
            code = worker.wait()
        if code != 0:
            tail = log.read_text(errors="replace").strip()[-4000:]
            last = tail.splitlines()[-1] if tail else "no error output"
            raise RuntimeError(f"LSTM training worker failed (exit {code}): {last}\n{tail}")
        trained = pickle.loads(result.read_bytes())
    return [
        weights.fit(ids, windows[0].shape[1], config.units, seed)
        for (ids, windows, _), weights in zip(groups, trained, strict=True)
    ]


class _Workers:
    """The lanes' worker processes, so all can be stopped at once, including one that starts
    after the stop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: list[subprocess.Popen[str]] = []
        self._stopped = False

    def start(self, command: list[str], env: dict[str, str], errors: IO[str]) -> subprocess.Popen[str]:
        worker = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, text=True
        )
        with self._lock:
            self._started.append(worker)
            if self._stopped:
                worker.kill()
        return worker

    def kill_all(self) -> None:
        with self._lock:
            self._stopped = True
            for worker in self._started:
                worker.kill()


def _relay(line: str, report: TrainingReport | None, lock: threading.Lock) -> None:
    """Pass a worker's progress line (``start n``, ``epoch e E loss val``, ``end n``) on."""
    if report is None:
        return
    kind, *values = line.split() or [""]
    with lock:
        if kind == "start":
            report.start_cohort(int(values[0]))
        elif kind == "epoch":
            report.epoch(int(values[0]), int(values[1]), float(values[2]), float(values[3]))
        elif kind == "end":
            report.end_cohort(int(values[0]))


def _train_group(group: Group, config: LSTMConfig, seed: int, on_epoch: lstm.EpochCallback | None) -> lstm.TrainedWeights:
    """One group's training, here or in a worker. The inputs to score come as series, not
    their windows (window-times smaller to send), and become every window here."""
    ids, windows, inputs = group
    score = None if inputs is None else [sliding_windows(x, windows[0].shape[1]) for x in inputs]
    return lstm.train_weights(ids, windows, config, seed, on_epoch, score)


def _train_lane(job: Path, result: Path, say: Callable[[str], None]) -> None:
    groups, config, seed = pickle.loads(job.read_bytes())
    trained: list[lstm.TrainedWeights] = []
    for group in groups:
        say(f"start {len(group[0])}")
        trained.append(_train_group(group, config, seed, lambda e, n, loss, val: say(f"epoch {e} {n} {loss!r} {val!r}")))
        say(f"end {len(group[0])}")
    result.write_bytes(pickle.dumps(trained, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    _train_lane(Path(sys.argv[1]), Path(sys.argv[2]), lambda line: print(line, flush=True))
