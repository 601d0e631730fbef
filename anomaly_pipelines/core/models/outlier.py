"""IsolationForest and LocalOutlierFactor over windows of standardised residuals.

The windows these models see are already free of each customer's level, scale and seasonality
(see ``detector._model_input``), so one model can serve a whole cohort of customers: it is fitted
on the pooled training windows of the cohort (the same customers that share a stacked LSTM), while
every customer keeps its own threshold, learned from its own training scores. A forest per
customer would cost ~2 MB and ~3 ms per scoring call each, which rules out scoring thousands of
customers a day; a cohort model scores all its customers in one vectorised call. A per-customer
run is a cohort of one, i.e. the per-customer model of the notebook.

Every window detector is a PyOD model behind PyOD's one interface (``fit`` on training windows,
``decision_function``: higher is more anomalous, like every other signal): IsolationForest and
LOF are the hybrid's two votes, and any other PyOD detector can be built by name
(``window_detector``) and compared in the evaluation. LOF runs in novelty mode, so later windows
are scored against training behaviour, not against each other.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from anomaly_pipelines.core.config import IsolationForestConfig, LocalOutlierFactorConfig

# PyOD's own contamination only sets its ``threshold_``, which nothing here uses: thresholds are
# learned per customer on its own training scores.
_CONTAMINATION = 0.1
# Window detectors by name: the hybrid's two, and the others the evaluation compares them with.
# Imported on first use: some PyOD modules pull in numba and matplotlib.
WINDOW_DETECTORS: dict[str, str] = {
    "isolation_forest": "pyod.models.iforest:IForest",
    "local_outlier_factor": "pyod.models.lof:LOF",
    "ecod": "pyod.models.ecod:ECOD",
    "copod": "pyod.models.copod:COPOD",
    "hbos": "pyod.models.hbos:HBOS",
    "knn": "pyod.models.knn:KNN",
}


def _pyod(name: str) -> Any:
    try:
        module, cls = WINDOW_DETECTORS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown window detector {name!r}; known: {', '.join(WINDOW_DETECTORS)}") from None
    return getattr(importlib.import_module(module), cls)


def window_detector(name: str, seed: int) -> Any:
    """An unfitted PyOD detector with its defaults (seeded where it draws random numbers)."""
    cls = _pyod(name)
    return cls(random_state=seed) if name == "isolation_forest" else cls(contamination=_CONTAMINATION)


def window_features(windows: np.ndarray) -> np.ndarray:
    """Scaled window values plus their step changes: the shape as well as the level."""
    if len(windows) == 0:
        return np.empty((0, windows.shape[1] * 2 - 1))
    return np.hstack([windows, np.diff(windows, axis=1)])


def pooled(windows: list[np.ndarray], limit: int, seed: int) -> np.ndarray:
    """All customers' training windows stacked, subsampled (seeded) to at most ``limit`` rows."""
    stacked = np.vstack(windows) if windows else np.empty((0, 1))
    if len(stacked) > limit:
        keep = np.random.default_rng(seed).choice(len(stacked), size=limit, replace=False)
        stacked = stacked[np.sort(keep)]
    return stacked


def fit_isolation_forest(windows: np.ndarray, config: IsolationForestConfig, seed: int) -> Any:
    contamination = _CONTAMINATION if config.contamination == "auto" else config.contamination
    model = _pyod("isolation_forest")(
        n_estimators=config.n_estimators,
        max_samples=config.max_samples,
        contamination=contamination,
        random_state=seed,
    )
    return model.fit(window_features(windows))


def fit_local_outlier_factor(windows: np.ndarray, config: LocalOutlierFactorConfig) -> Any:
    features = window_features(windows)
    neighbours = max(1, min(config.n_neighbors, len(features) - 1))
    model = _pyod("local_outlier_factor")(n_neighbors=neighbours, algorithm=config.algorithm, novelty=True, contamination=_CONTAMINATION)
    return model.fit(features)


def anomaly_score(model: Any, windows: np.ndarray) -> np.ndarray:
    if len(windows) == 0:
        return np.empty(0)
    return np.asarray(model.decision_function(window_features(windows)), dtype=float)


@dataclass
class CustomerOutlierModels(BaseEstimator):
    """Fitted estimators of one kind by customer, as one picklable, loggable object.

    Customers of one cohort share one estimator object; pickling keeps shared objects shared,
    so a cohort's model is stored once however many customers point at it.
    """

    kind: str = "isolation_forest"
    models: dict[str, BaseEstimator] = field(default_factory=dict)

    def score(self, customer_id: str, windows: np.ndarray) -> np.ndarray:  # type: ignore[override]
        return anomaly_score(self.models[customer_id], windows)

    def subset(self, customer_ids: set[str]) -> CustomerOutlierModels:
        """The estimators of ``customer_ids`` (shared, not copied)."""
        return CustomerOutlierModels(
            self.kind, {cid: m for cid, m in self.models.items() if cid in customer_ids}
        )

    def score_many(self, windows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score several customers with one call per shared estimator."""
        groups: dict[int, list[str]] = {}
        for cid in windows:
            groups.setdefault(id(self.models[cid]), []).append(cid)
        out: dict[str, np.ndarray] = {}
        for members in groups.values():
            model = self.models[members[0]]
            sizes = [len(windows[cid]) for cid in members]
            stacked = [windows[cid] for cid in members if len(windows[cid])]
            scores = anomaly_score(model, np.vstack(stacked)) if stacked else np.empty(0)
            for cid, part in zip(members, np.split(scores, np.cumsum(sizes)[:-1]), strict=True):
                out[cid] = part
        return out

    def __sklearn_tags__(self):  # keeps sklearn's tag machinery happy for a non-standard estimator
        return super().__sklearn_tags__()
