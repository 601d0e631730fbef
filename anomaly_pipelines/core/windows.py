"""Sliding windows, scaling fitted on training data only, and frequency-aware sizes.

Min-max scaling over a history that contains anomalies lets one spike squash everything else
into a narrow band, so the default is robust scaling (median and IQR of the training part).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from anomaly_pipelines.core.config import WindowConfig

DAY = pd.Timedelta(days=1)
HOUR = pd.Timedelta(hours=1)
WEEK = pd.Timedelta(days=7)
MONTH = pd.Timedelta(days=28)
YEAR = pd.Timedelta(days=365.25)


def sliding_windows(values: np.ndarray, size: int) -> np.ndarray:
    """All windows of ``size`` consecutive steps; row ``i`` ends at step ``i + size - 1``."""
    values = np.asarray(values, dtype=np.float32)
    if len(values) < size:
        return np.empty((0, size), dtype=np.float32)
    return np.lib.stride_tricks.sliding_window_view(values, size).copy()


def season_period(frequency: pd.Timedelta) -> int | None:
    """Steps in the dominant business cycle: a year for monthly or coarser data (invoices
    follow the fiscal year, and a month's value is too far from last month's to be expected
    from it), a week for daily data, a day for sub-daily data. Weekly data have none: a year
    of warm-up would cost more than the slow season costs the last weeks' median."""
    if frequency <= pd.Timedelta(0):
        return None
    if frequency >= MONTH:
        steps = round(YEAR / frequency)
        return steps if steps >= 2 else None
    if frequency >= DAY:
        steps = round(pd.Timedelta(days=7) / frequency)
        return steps if steps >= 2 else None
    steps = round(DAY / frequency)
    return steps if steps >= 2 else None


def window_size(frequency: pd.Timedelta, config: WindowConfig) -> int:
    """The configured size for daily data; for finer data, about an hour of steps (at least
    the configured size) so a window spans a comparable stretch of behaviour."""
    if not config.size_by_frequency or frequency >= DAY:
        return config.size
    steps = round(HOUR / frequency) if frequency < HOUR else round(6 * HOUR / frequency)
    return max(config.size, min(steps, 48))


@dataclass(frozen=True)
class Scaler:
    """Affine scaler ``(x - center) / scale``, fitted on the training part of one series."""

    center: float
    scale: float

    @classmethod
    def fit(cls, values: np.ndarray, kind: str = "robust") -> Scaler:
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return cls(0.0, 1.0)
        if kind == "minmax":
            low, high = float(values.min()), float(values.max())
            return cls(low, _safe_scale(high - low, values))
        q25, q50, q75 = np.percentile(values, [25, 50, 75])
        return cls(float(q50), _safe_scale(float(q75 - q25) / 1.349, values))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=float) - self.center) / self.scale

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=float) * self.scale + self.center


def _safe_scale(spread: float, values: np.ndarray) -> float:
    # A constant (or nearly constant) series must not divide by zero; fall back to the
    # standard deviation, then to a fraction of the level, then to 1.
    if spread > 1e-12:
        return spread
    std = float(values.std())
    if std > 1e-12:
        return std
    level = float(np.abs(values).mean())
    return level * 0.01 if level > 1e-12 else 1.0
