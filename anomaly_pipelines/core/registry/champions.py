"""Loading the champion models of many customers for scoring.

A champion version points at the logged model of the training that fitted it, shared by all
the customers of that training; each such model is downloaded and loaded once however many
customers it serves, and kept in a small process-wide cache (a logged model never changes).
A champion that cannot be used (a deleted artifact, an older format, or trained under
settings the configuration now changes) leaves its customer unscored with the reason, and the
other customers are still scored.
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from anomaly_pipelines.core import serving
from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.detector import FittedDetectors
from anomaly_pipelines.core.registry.store import retry

if TYPE_CHECKING:
    from anomaly_pipelines.core.registry.versions import ModelRegistry

T = TypeVar("T")

NO_CHAMPION = "no champion model registered"


def load_champions(
    registry: ModelRegistry, customer_ids: list[str], config: PipelineConfig
) -> FittedDetectors:
    """The champions of ``customer_ids`` that can score under ``config``, as one model.

    Customers without a usable champion are in ``skipped`` with the reason; one whose champion
    was trained under other defining settings (``model_settings``) gets a reason naming them.
    """
    champions = registry.champion_model_versions(customer_ids)
    skipped = {cid: NO_CHAMPION for cid in dict.fromkeys(customer_ids) if cid not in champions}
    by_source: dict[str, list[tuple[str, ModelVersion]]] = {}
    for cid, version in champions.items():
        by_source.setdefault(version.source, []).append((cid, version))
    parts: list[FittedDetectors] = []
    for source, members in by_source.items():
        problem, model = _usable(registry, source, config)
        for cid, version in members:
            if problem is None and cid not in model.calibrations:
                problem = "its model holds no such customer"
            if problem is not None:
                skipped[cid] = f"champion version {version.version} of {version.name} is unusable: {problem}"
        usable = [cid for cid, _ in members if cid not in skipped]
        if usable:
            parts.append(model.subset(usable))
    return FittedDetectors.combine(parts, skipped)


def _usable(
    registry: ModelRegistry, source: str, config: PipelineConfig
) -> tuple[str | None, FittedDetectors]:
    """(why the logged model ``source`` cannot score under ``config``, or None; the model)."""
    try:
        model = _CACHE.get((registry.tracking_uri, source), lambda: _load(registry, source))
    except (MlflowException, OSError, ValueError) as exc:  # a deleted artifact, another format
        return str(exc), FittedDetectors()
    if model.settings is None:
        return "it records no settings", model
    differences = model.settings.differences(config)
    if differences:
        return "trained under other settings (" + "; ".join(differences) + ")", model
    return None, model


def _load(registry: ModelRegistry, source: str) -> FittedDetectors:
    registry.store.activate()
    with tempfile.TemporaryDirectory(prefix="anomaly-pipelines-champion-") as tmp:
        local = retry(
            lambda: mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=tmp, tracking_uri=registry.tracking_uri
            ),
            f"download {source}",
        )
        return serving.load_downloaded(Path(local))


class _LoadedCache:
    """A small LRU of loaded models keyed by store and immutable source."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, ...], FittedDetectors] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, ...], load: Callable[[], FittedDetectors]) -> FittedDetectors:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = load()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_CACHE = _LoadedCache()


def clear_cache() -> None:
    """Drop loaded champion models (to free memory in a long-lived process)."""
    _CACHE.clear()
