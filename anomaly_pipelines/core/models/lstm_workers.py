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
another pickle file; the caller builds the Keras models from the returned weights.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from anomaly_pipelines.core.config import LSTMConfig
from anomaly_pipelines.core.models import lstm_autoencoder as lstm
from anomaly_pipelines.core.processes import usable_cores

Group = tuple[list[str], list[np.ndarray]]


class TrainingReport(Protocol):
    """Where training progress goes (``detector._TrainingProgress``)."""

    def start_cohort(self, size: int) -> None: ...
    def end_cohort(self, size: int) -> None: ...
    def epoch(self, epoch: int, epochs: int, train_loss: float, val_loss: float) -> None: ...


def lanes_for(groups: int, config: LSTMConfig) -> int:
    """How many worker processes train ``groups`` groups: ``config.training_processes``, or
    with 0 one per usable core, never more than there are groups; 1 trains in this process."""
    wanted = config.training_processes or usable_cores()
    return max(1, min(wanted, groups))


def train_groups(
    groups: Sequence[Group], config: LSTMConfig, seed: int, report: TrainingReport | None = None
) -> list[lstm.AutoencoderFit]:
    """Train every group's stacked autoencoder, in group order, in this process or in lanes."""
    lanes = lanes_for(len(groups), config)
    if lanes == 1:
        fits = []
        for ids, windows in groups:
            if report is not None:
                report.start_cohort(len(ids))
            fits.append(lstm.train_autoencoders(ids, windows, config, seed, report.epoch if report else None))
            if report is not None:
                report.end_cohort(len(ids))
        return fits
    threads = max(1, usable_cores() // lanes)
    lock = threading.Lock()
    shares = [list(range(lane, len(groups), lanes)) for lane in range(lanes)]
    with ThreadPoolExecutor(lanes) as pool:
        results = list(
            pool.map(lambda share: _run_lane([groups[i] for i in share], config, seed, threads, report, lock), shares)
        )
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
) -> list[lstm.AutoencoderFit]:
    with tempfile.TemporaryDirectory(prefix="lstm-lane-") as tmp:
        job, result, log = Path(tmp) / "job.pkl", Path(tmp) / "result.pkl", Path(tmp) / "stderr.txt"
        job.write_bytes(pickle.dumps((groups, config, seed), protocol=pickle.HIGHEST_PROTOCOL))
        env = dict(os.environ, TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        package_root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", __name__, str(job), str(result)]
        # The worker's stdin stays open and unused: it ends when this process does, however it
        # ends, and the worker then stops (``_exit_with_parent``) instead of training on alone.
        with log.open("w") as errors, subprocess.Popen(
            command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True
        ) as worker:
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
        lstm.AutoencoderFit(
            lstm.build_model(ids, windows[0].shape[1], config.units, seed, weights), ids, *rest
        )
        for (ids, windows), (weights, *rest) in zip(groups, trained, strict=True)
    ]


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


def _train_lane(job: Path, result: Path, say: Callable[[str], None]) -> None:
    groups, config, seed = pickle.loads(job.read_bytes())
    trained: list[tuple[Any, ...]] = []
    for ids, windows in groups:
        say(f"start {len(ids)}")
        fit = lstm.train_autoencoders(
            ids, windows, config, seed, lambda e, n, loss, val: say(f"epoch {e} {n} {loss!r} {val!r}")
        )
        say(f"end {len(ids)}")
        weights = [w.copy() for w in fit.model.get_weights()]
        trained.append((weights, fit.train_loss, fit.val_loss, fit.epochs, fit.history))
    result.write_bytes(pickle.dumps(trained, protocol=pickle.HIGHEST_PROTOCOL))


def _exit_with_parent() -> None:
    """Stop this worker when its parent's end of stdin closes (the parent was killed)."""

    def watch() -> None:
        sys.stdin.read()
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


if __name__ == "__main__":
    _exit_with_parent()
    _train_lane(Path(sys.argv[1]), Path(sys.argv[2]), lambda line: print(line, flush=True))
