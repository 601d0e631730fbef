"""Regular per-customer series: one value per step, gaps filled by policy and marked.

Models need evenly spaced values; billing exports skip days and 5-minute metrics drop samples.
The frequency is inferred per series (the most common step), so one call handles daily cost,
hourly usage and 5-minute metrics alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from anomaly_pipelines.core.config import PreprocessConfig
from anomaly_pipelines.core.ids import customer_key


@dataclass
class CustomerSeries:
    """One customer's regular series. ``filled`` marks steps that were gaps in the input."""

    customer_id: str
    timestamps: pd.DatetimeIndex
    values: np.ndarray
    filled: np.ndarray
    frequency: pd.Timedelta
    dimensions: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return customer_key(self.customer_id)

    def __len__(self) -> int:
        return len(self.values)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "customer_id": self.customer_id,
                "timestamp": self.timestamps,
                "cost": self.values,
                "is_filled": self.filled,
            }
        )


def infer_frequency(timestamps: pd.Series | pd.DatetimeIndex) -> pd.Timedelta | None:
    """Most common positive step; the median would be fooled by runs of missing samples."""
    ts = pd.DatetimeIndex(timestamps).sort_values().unique()
    if len(ts) < 2:
        return None
    steps = pd.Series(ts[1:] - ts[:-1])
    steps = steps[steps > pd.Timedelta(0)]
    if steps.empty:
        return None
    return pd.Timedelta(steps.mode().iloc[0])


def regularize(
    frame: pd.DataFrame, config: PreprocessConfig | None = None, dimensions: pd.DataFrame | None = None
) -> list[CustomerSeries]:
    """Split a long frame (``customer_id``, ``timestamp``, ``cost``) into regular series.

    Duplicate timestamps are summed (costs of the same day add up); off-grid timestamps are
    floored to the inferred grid. Gaps inside a series are filled by ``gap_policy``.
    """
    config = config or PreprocessConfig()
    out: list[CustomerSeries] = []
    if frame.empty:
        return out
    data = frame[["customer_id", "timestamp", "cost"]].copy()
    data["timestamp"] = pd.to_datetime(data["timestamp"], utc=True)
    for customer_id, group in data.groupby("customer_id", sort=True):
        freq = pd.Timedelta(config.frequency) if config.frequency else infer_frequency(group["timestamp"])
        if freq is None:
            freq = pd.Timedelta(days=1)
        origin = group["timestamp"].min()
        grid_ts = origin + ((group["timestamp"] - origin) // freq) * freq
        summed = group.assign(timestamp=grid_ts).groupby("timestamp")["cost"].sum(min_count=1)
        index = pd.date_range(summed.index.min(), summed.index.max(), freq=freq)
        regular = summed.reindex(index)
        filled = regular.isna().to_numpy()
        if filled.any():
            regular = _fill(regular, config.gap_policy)
        dims = None
        if dimensions is not None and not dimensions.empty:
            dims = dimensions[dimensions["customer_id"] == customer_id]
        out.append(
            CustomerSeries(
                customer_id=str(customer_id),
                timestamps=pd.DatetimeIndex(index),
                values=regular.to_numpy(dtype=float),
                filled=filled,
                frequency=freq,
                dimensions=dims,
            )
        )
    return out


def _fill(values: pd.Series, policy: str) -> pd.Series:
    if policy == "zero":
        return values.fillna(0.0)
    if policy == "ffill":
        return values.ffill().bfill()
    return values.interpolate(method="linear", limit_direction="both")


def series_to_frame(series: list[CustomerSeries]) -> pd.DataFrame:
    if not series:
        return pd.DataFrame(
            {
                "customer_id": pd.Series(dtype=str),
                "timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
                "cost": pd.Series(dtype=float),
                "is_filled": pd.Series(dtype=bool),
            }
        )
    return pd.concat([s.to_frame() for s in series], ignore_index=True)


def frame_to_series(frame: pd.DataFrame) -> list[CustomerSeries]:
    """Inverse of ``series_to_frame`` for frames already regular (as stored between assets)."""
    out = []
    for customer_id, group in frame.groupby("customer_id", sort=True):
        group = group.sort_values("timestamp")
        ts = pd.DatetimeIndex(group["timestamp"])
        freq = infer_frequency(ts) or pd.Timedelta(days=1)
        out.append(
            CustomerSeries(
                customer_id=str(customer_id),
                timestamps=ts,
                values=group["cost"].to_numpy(dtype=float),
                filled=group["is_filled"].to_numpy(dtype=bool)
                if "is_filled" in group
                else np.zeros(len(group), dtype=bool),
                frequency=freq,
            )
        )
    return out
