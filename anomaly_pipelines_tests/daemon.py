"""The real ``dagster-daemon`` for tests that need what ``dg dev`` runs in the background
(run queue, run monitoring), started for the length of a ``with`` block and always stopped."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def dagster_daemon(workspace: str | Path, cwd: Path, env: dict[str, str]) -> Iterator[None]:
    """``dagster-daemon run -w workspace`` in ``cwd`` with ``env`` (which names DAGSTER_HOME)."""
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
