"""Drift: has a customer's data moved away from what its champion model learned?

Three measures per customer, from the champion's own scores of the customer's history:

- ``residual_ks``: the Kolmogorov-Smirnov distance between the |residual z| of the newest
  ``drift.recent_days`` steps and those of the training part. A level shift or a new weekly
  pattern moves the recent residuals away from the training ones; 0 means the same
  distribution, 1 disjoint ones. Measured from half of ``drift.recent_days`` steps on (a week at
  least): on a few days the distance of a steady but noisy customer reaches the limit by
  chance.
- ``alert_rate``: the share of the recent steps flagged (of at least ``drift.recent_days``),
  against ``drift.alert_budget``. A model that flags a third of the days has stopped describing
  the customer.
- ``model_age_days``: days since the champion version was registered, against
  ``drift.max_model_age_days`` (stale).

``drifted`` or ``stale`` customers are the ones to retrain (``retrain_keys``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from anomaly_pipelines.core.config import DriftConfig
from anomaly_pipelines.core.ids import customer_key

DRIFT_COLUMNS = [
    "customer_id",
    "partition_key",
    "recent_steps",
    "train_steps",
    "residual_ks",
    "alert_rate",
    "model_age_days",
    "drifted",
    "stale",
    "reason",
]


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
    if not len(a) or not len(b):
        return float("nan")
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def drift_measures(
    scores: pd.DataFrame,
    config: DriftConfig,
    model_created: Mapping[str, pd.Timestamp] | None = None,
    now: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """One row per customer of ``scores`` (``core.detector.SCORE_COLUMNS``): the measures of the
    module docstring and the verdicts. Unscored customers get no measures and no verdict."""
    model_created = model_created or {}
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    rows = []
    if scores.empty:
        return pd.DataFrame(columns=DRIFT_COLUMNS)
    for cid, group in scores.groupby("customer_id", sort=True):
        cid = str(cid)
        scored = group[group["status"] == "scored"].sort_values("timestamp")
        train = scored[scored["split"] == "train"]
        recent = scored[scored["split"] != "train"].tail(config.recent_days)
        z_train = np.abs(train["residual_score"].to_numpy(dtype=float))
        z_recent = np.abs(recent["residual_score"].to_numpy(dtype=float))
        enough = len(recent) >= max(7, config.recent_days // 2)
        ks = ks_distance(z_recent, z_train) if enough else float("nan")
        # A share of ``recent_days``, the days not scored yet counting as quiet: just after a
        # (re)training the recent part is a few days long, and two flagged days out of three
        # are not a model that stopped describing the customer.
        rate = (
            float(recent["is_anomaly"].astype(bool).sum() / max(len(recent), config.recent_days))
            if len(recent)
            else float("nan")
        )
        created = model_created.get(cid)
        age = (
            (now - pd.Timestamp(created)).total_seconds() / 86400 if created is not None else np.nan
        )
        reasons = []
        if np.isfinite(ks) and ks > config.max_residual_ks:
            reasons.append(f"recent residuals moved (KS {ks:.2f} > {config.max_residual_ks:g})")
        if np.isfinite(rate) and rate > config.alert_budget:
            reasons.append(f"alert rate {rate:.0%} over the budget {config.alert_budget:.0%}")
        stale = bool(np.isfinite(age) and age > config.max_model_age_days)
        if stale:
            reasons.append(f"model {age:.0f} days old (max {config.max_model_age_days})")
        rows.append(
            {
                "customer_id": cid,
                "partition_key": customer_key(cid),
                "recent_steps": len(recent),
                "train_steps": len(train),
                "residual_ks": ks,
                "alert_rate": rate,
                "model_age_days": float(age),
                "drifted": bool(
                    (np.isfinite(ks) and ks > config.max_residual_ks)
                    or (np.isfinite(rate) and rate > config.alert_budget)
                ),
                "stale": stale,
                "reason": "; ".join(reasons),
            }
        )
    return pd.DataFrame(rows, columns=DRIFT_COLUMNS)


def retrain_keys(measures: pd.DataFrame) -> list[str]:
    """Partition keys of the customers to retrain: drifted or stale."""
    if measures.empty:
        return []
    chosen = measures[measures["drifted"] | measures["stale"]]
    return sorted(chosen["partition_key"].astype(str))
