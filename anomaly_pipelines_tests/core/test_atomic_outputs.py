"""A write that fails half-way (a full disk) leaves the previous output whole.

The failure is real: the process' file-size limit (``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored
so the write fails with ``EFBIG`` like a full disk fails with ``ENOSPC``) stops the write after
a few kilobytes, in the middle of a PNG or a report.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_pipelines.core.explain import find_incidents
from anomaly_pipelines.core.plots import plot_customer, plot_portfolio
from anomaly_pipelines.core.report import write_report

LIMIT = 4096  # bytes a file may grow to while the "disk is full"


@contextlib.contextmanager
def disk_full_after(limit: int) -> Iterator[None]:
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


def _scores(customer: str = "acme", periods: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    stamps = pd.date_range("2024-01-01", periods=periods, freq="D", tz="UTC")
    cost = 100 * (1 + rng.normal(0, 0.03, periods))
    flagged = np.zeros(periods, dtype=bool)
    cost[100], flagged[100] = 300.0, True
    return pd.DataFrame(
        {
            "customer_id": customer, "timestamp": stamps, "cost": cost, "expected_cost": 100.0,
            "hybrid_score": np.where(flagged, 3.0, 0.2), "is_anomaly": flagged,
            "residual_score": np.abs(cost - 100) / 3, "lstm_error": 1.0, "lstm_threshold": 2.5,
            "reasons": np.where(flagged, "residual", ""), "split": "train", "status": "scored",
        }
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("which", ["customer", "portfolio"])
def test_a_plot_that_cannot_be_written_keeps_the_previous_png(tmp_path: Path, which: str) -> None:
    scores = _scores()
    incidents = find_incidents(scores)
    path = tmp_path / "plot.png"

    def draw() -> Path:
        if which == "customer":
            return plot_customer(scores, incidents, path)
        return plot_portfolio(scores, incidents, path)

    draw()
    before = path.read_bytes()
    assert len(before) > LIMIT
    with disk_full_after(LIMIT), pytest.raises(OSError) as failure:
        draw()
    assert failure.value.errno == errno.EFBIG
    assert path.read_bytes() == before  # not a truncated PNG
    assert _leftovers(tmp_path) == []  # and no temporary file behind


def test_a_report_that_cannot_be_written_keeps_the_previous_one(tmp_path: Path) -> None:
    scores = _scores()
    incidents = find_incidents(scores)
    explanations = incidents.assign(headline="Spike", detail="x" * 10_000, explainer="offline")
    html, md = write_report(scores, explanations, {}, tmp_path)
    before = html.read_bytes(), md.read_bytes()
    assert len(before[0]) > LIMIT
    with disk_full_after(LIMIT), pytest.raises(OSError):
        write_report(scores, explanations, {}, tmp_path)
    assert (html.read_bytes(), md.read_bytes()) == before
    assert _leftovers(tmp_path) == []
