"""IsolationForest and LocalOutlierFactor over each customer's windows.

Both are fitted per customer on the training windows only (LOF in novelty mode, so later windows
are scored against training behaviour, not against each other). Scores are flipped so that
higher means more anomalous, like every other signal in the hybrid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor

from anomaly_pipelines.core.config import IsolationForestConfig, LocalOutlierFactorConfig


def window_features(windows: np.ndarray) -> np.ndarray:
    """Scaled window values plus their step changes: the shape as well as the level."""
    if len(windows) == 0:
        return np.empty((0, windows.shape[1] * 2 - 1))
    return np.hstack([windows, np.diff(windows, axis=1)])


def fit_isolation_forest(windows: np.ndarray, config: IsolationForestConfig, seed: int) -> IsolationForest:
    model = IsolationForest(
        n_estimators=config.n_estimators,
        max_samples=config.max_samples,
        contamination=config.contamination,
        random_state=seed,
    )
    return model.fit(window_features(windows))


def fit_local_outlier_factor(windows: np.ndarray, config: LocalOutlierFactorConfig) -> LocalOutlierFactor:
    features = window_features(windows)
    neighbours = max(1, min(config.n_neighbors, len(features) - 1))
    return LocalOutlierFactor(n_neighbors=neighbours, novelty=True).fit(features)


def anomaly_score(model: IsolationForest | LocalOutlierFactor, windows: np.ndarray) -> np.ndarray:
    if len(windows) == 0:
        return np.empty(0)
    return -model.score_samples(window_features(windows))


@dataclass
class CustomerOutlierModels(BaseEstimator):
    """Per-customer fitted estimators of one kind, as one picklable, loggable object."""

    kind: str = "isolation_forest"
    models: dict[str, BaseEstimator] = field(default_factory=dict)

    def score(self, customer_id: str, windows: np.ndarray) -> np.ndarray:  # type: ignore[override]
        return anomaly_score(self.models[customer_id], windows)

    def __sklearn_tags__(self):  # keeps sklearn's tag machinery happy for a non-standard estimator
        return super().__sklearn_tags__()
