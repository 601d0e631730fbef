"""Suite-wide test ordering.

The suite runs on two pytest-xdist workers, a test file per unit of work (``-n 2 --dist
loadfile`` in pyproject). Work is handed out in collection order, so the few files that take
minutes (real celery workers and an MLflow server, the simulated daily loop, processes killed
mid-registration) are collected first: the other worker runs everything else meanwhile instead
of one of them running alone at the end.
"""

from __future__ import annotations

import pytest

SLOWEST_FIRST = (
    "anomaly_pipelines_tests/deploy/",
    "anomaly_pipelines_tests/defs/test_daily_loop.py",
    "anomaly_pipelines_tests/core/test_registry_faults.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        for position, prefix in enumerate(SLOWEST_FIRST):
            if item.nodeid.startswith(prefix):
                return position
        return len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: the order within each file and among the rest is kept
