"""``detect()``: the whole method on one DataFrame, for notebooks and scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from anomaly_pipelines.core.config import PipelineConfig, as_config
from anomaly_pipelines.core.detector import fit_detectors, score_series
from anomaly_pipelines.core.series import CustomerSeries, regularize

REQUIRED = ("customer_id", "timestamp", "cost")


def detect(
    usage: pd.DataFrame,
    config: PipelineConfig | dict[str, Any] | str | Path | None = None,
    *,
    online: bool = False,
) -> pd.DataFrame:
    """Score every customer's series in ``usage`` and return one row per customer and timestamp.

    ``usage`` is a long frame with ``customer_id``, ``timestamp`` and ``cost`` (other columns are
    ignored). Each series' frequency is inferred, so daily, hourly and 5-minute data all work.
    Series too short to model come back with ``is_anomaly`` False and the reason in ``reasons``.
    Gaps are filled to fit the models but only timestamps present in the input are returned.

    ``online=True`` scores every step from data up to and including it only (models fitted on
    the training part as usual): each row is what the scheduled daily run would have reported
    that day, which is how quality should be judged. The default, retrospective, lets the window
    models use windows that reach a few steps past a step, which localises anomalies better in
    hindsight.
    """
    cfg = as_config(config)
    series = usage_series(usage, cfg)
    fitted = fit_detectors(series, cfg)
    return input_rows(score_series(series, fitted, cfg, online=online))


def usage_series(usage: pd.DataFrame, config: PipelineConfig) -> list[CustomerSeries]:
    """``detect()``'s input checks and regularisation: one regular series per customer."""
    return regularize(_coerce(usage), config.preprocess)


def input_rows(scores: pd.DataFrame) -> pd.DataFrame:
    """Scores of the timestamps present in the input (gaps were filled only to fit the models)."""
    return scores[~scores["is_filled"].astype(bool)].drop(columns="is_filled").reset_index(drop=True)


def _coerce(usage: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED if c not in usage.columns]
    if missing:
        raise ValueError(
            f"detect(): input frame is missing column(s) {missing}; it has {list(usage.columns)}. "
            "Rename yours, e.g. usage.rename(columns={'account': 'customer_id', 'date': "
            "'timestamp', 'amount': 'cost'})"
        )
    frame = usage[list(REQUIRED)].copy()
    frame["customer_id"] = frame["customer_id"].astype(str)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame["cost"] = pd.to_numeric(frame["cost"], errors="raise").astype(float)
    bad = ~frame["cost"].map(lambda v: pd.notna(v) and abs(v) != float("inf"))
    if bad.any():
        first = frame.index[bad][0]
        raise ValueError(
            f"detect(): column 'cost' has {int(bad.sum())} missing or infinite value(s), "
            f"first at row {first}; clean them or load the data through a source with quarantine"
        )
    return frame
