"""Processes: how many cores this one may use, a pool of workers on them, and is another process
still the one we think it is? (Linux ``/proc``; elsewhere: does it exist.)

Used to find work left behind by a killed process: MLflow runs still RUNNING and Dagster runs
still STARTED whose owner is gone. A pid alone is not enough, since pids are reused; the
process' start time tells a new process with an old pid apart.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the system tells)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def tensorflow_threads(threads: int) -> dict[str, str]:
    """Environment that sizes TensorFlow's thread pools in a process that has not imported it
    yet, so processes sharing the cores do not each start one thread per core."""
    return {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": str(threads)}


def spawned_pool(
    workers: int, initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes. Spawned, not forked: the caller may hold
    TensorFlow's threads, which a forked child inherits in an unusable state. As with any
    spawned process, a script using it needs the ``if __name__ == "__main__":`` guard."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, context, initializer, initargs)


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22);
    None when unknown (no such process, or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the name in parentheses may hold spaces
    return fields[19] if len(fields) > 19 else None


def process_started_at(pid: int) -> float | None:
    """Process start as a Unix timestamp (from ``/proc``), or None when unknown."""
    ticks = process_start(pid)
    if ticks is None:
        return None
    try:
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text(encoding="ascii").splitlines()
            if line.startswith("btime ")
        )
        return boot + int(ticks) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError):
        return None


def process_alive(pid: int, started: str | None = None) -> bool:
    """Process ``pid`` exists and, when its start time (``process_start``) is given and known,
    is still the same process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    if started is not None:
        current = process_start(pid)
        if current is not None and current != started:
            return False  # the pid now belongs to a later process
    return True
