"""Regular per-customer series: one value per step, gaps filled by policy and marked.

Models need evenly spaced values; billing exports skip days and 5-minute metrics drop samples.
The frequency is inferred per series (the most common step), so one call handles daily cost,
hourly usage and 5-minute metrics alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from anomaly_pipelines.core.config import PreprocessConfig
from anomaly_pipelines.core.ids import customer_key

_DAY_NS = pd.Timedelta(days=1).value


@dataclass
class CustomerSeries:
    """One customer's regular series. ``filled`` marks steps that were gaps in the input;
    ``declared_normal`` (optional) steps a person marked normal (feedback ``not-anomaly`` or
    ``planned``), which history cleaning keeps however surprising they look."""

    customer_id: str
    timestamps: pd.DatetimeIndex
    values: np.ndarray
    filled: np.ndarray
    frequency: pd.Timedelta
    dimensions: pd.DataFrame | None = field(default=None, repr=False)
    declared_normal: np.ndarray | None = field(default=None, repr=False)

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
    """Most common positive step (ties: the smaller); the median would be fooled by runs of
    missing samples. None with fewer than two distinct timestamps."""
    ts = np.sort(pd.DatetimeIndex(timestamps).as_unit("ns").asi8)
    step = _common_steps(np.zeros(len(ts), dtype=np.int64), ts, 1)[0]
    return pd.Timedelta(int(step), unit="ns") if step else None


def regularize(
    frame: pd.DataFrame, config: PreprocessConfig | None = None, dimensions: pd.DataFrame | None = None
) -> list[CustomerSeries]:
    """Split a long frame (``customer_id``, ``timestamp``, ``cost``) into regular series.

    Duplicate timestamps are summed (costs of the same day add up); off-grid timestamps are
    floored to the inferred grid. Gaps inside a series are filled by ``gap_policy``. The work is
    vectorised over all customers (one sort, one grouped sum), since the daily run regularises
    thousands of customers at once. Timestamps in a time zone other than UTC keep it: a series
    whose step is whole days is a series of calendar days in that zone (a DST day has 23 or 25
    hours), and its timestamps are those days' starts as in the input.
    """
    config = config or PreprocessConfig()
    if frame.empty:
        return []
    zone = _local_zone(frame["timestamp"])
    stamps = pd.to_datetime(frame["timestamp"], utc=True)
    data = pd.DataFrame(
        {
            "customer_id": frame["customer_id"].astype(str).to_numpy(),
            "timestamp": stamps.to_numpy(dtype="datetime64[ns]").view("int64"),
            "wall": (
                stamps.dt.tz_convert(zone).dt.tz_localize(None) if zone is not None else stamps.dt.tz_localize(None)
            ).to_numpy(dtype="datetime64[ns]").view("int64"),
            "cost": pd.to_numeric(frame["cost"]).to_numpy(dtype=float),
        }
    ).sort_values(["customer_id", "timestamp"], kind="stable")
    customers = np.unique(data["customer_id"].to_numpy())
    code = np.searchsorted(customers, data["customer_id"].to_numpy())
    calendar = np.zeros(len(customers), dtype=bool)
    if zone is not None:
        # Days (and weeks) in a zone with DST are calendar days, 23 or 25 hours long twice a
        # year: on a grid of 24-hour steps two days would share one step (their costs summed)
        # and every later day would sit an hour off its input. Such series are put on a grid of
        # wall-clock days and placed back in the zone at the end.
        wall_steps = (
            np.full(len(customers), pd.Timedelta(config.frequency).value, dtype=np.int64)
            if config.frequency
            else _common_steps(code, data["wall"].to_numpy(), len(customers))
        )
        calendar = (wall_steps > 0) & (wall_steps % _DAY_NS == 0)
        ts = np.where(calendar[code], data["wall"].to_numpy(), data["timestamp"].to_numpy())
        order = np.lexsort((ts, code))
        data, code, ts = data.iloc[order], code[order], ts[order]
    else:
        ts = data["timestamp"].to_numpy()
    first = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    if config.frequency:
        freq = np.full(len(customers), pd.Timedelta(config.frequency).value, dtype=np.int64)
    else:  # a customer with a single timestamp gets a day
        freq = _common_steps(code, ts, len(customers))
        freq[freq == 0] = _DAY_NS
    origin = ts[first]
    step = freq[code]
    grid = origin[code] + ((ts - origin[code]) // step) * step
    summed = pd.DataFrame({"code": code, "grid": grid, "cost": data["cost"].to_numpy()}).groupby(
        ["code", "grid"], sort=True
    )["cost"].sum(min_count=1)
    g_code = summed.index.get_level_values(0).to_numpy()
    g_ts = summed.index.get_level_values(1).to_numpy()
    last = pd.Series(g_ts).groupby(g_code).max().to_numpy()
    lengths = (last - origin) // freq + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.full(offsets[-1], np.nan)
    values[offsets[g_code] + (g_ts - origin[g_code]) // freq[g_code]] = summed.to_numpy()
    filled = np.isnan(values)
    dims_by_customer = (
        dict(tuple(dimensions.groupby("customer_id", sort=False)))
        if dimensions is not None and not dimensions.empty
        else {}
    )
    out: list[CustomerSeries] = []
    for c, customer_id in enumerate(customers):
        lo, hi = offsets[c], offsets[c + 1]
        series_values = values[lo:hi]
        if filled[lo:hi].any():
            series_values = _fill(pd.Series(series_values), config.gap_policy).to_numpy(dtype=float)
        out.append(
            CustomerSeries(
                customer_id=str(customer_id),
                timestamps=_timestamps(origin[c] + np.arange(hi - lo) * freq[c], zone, bool(calendar[c])),
                values=series_values,
                filled=filled[lo:hi],
                frequency=pd.Timedelta(int(freq[c]), unit="ns"),
                dimensions=dims_by_customer.get(customer_id),
            )
        )
    return out


def _local_zone(timestamps: pd.Series) -> Any | None:
    """The zone of tz-aware timestamps other than UTC (None for naive or UTC ones, which are
    regularised in UTC)."""
    dtype = getattr(timestamps, "dtype", None)
    if not isinstance(dtype, pd.DatetimeTZDtype):
        return None
    zone = dtype.tz
    return None if str(zone) in ("UTC", "utc", "Etc/UTC", "UTC+00:00") else zone


def _timestamps(grid: np.ndarray, zone: Any | None, calendar: bool) -> pd.DatetimeIndex:
    """Grid points (ns) as timestamps: UTC instants, the same instants shown in ``zone``, or
    wall-clock days of ``zone`` (a skipped wall time moves forward, a repeated one is the first)."""
    index = pd.DatetimeIndex(grid.astype("datetime64[ns]"))
    if zone is None:
        return index.tz_localize("UTC")
    if not calendar:
        return index.tz_localize("UTC").tz_convert(zone)
    return index.tz_localize(zone, ambiguous=np.ones(len(index), dtype=bool), nonexistent="shift_forward")


def _common_steps(code: np.ndarray, ts: np.ndarray, customers: int) -> np.ndarray:
    """Most common positive step per customer in ns (ties: the smaller; 0 when there is none)
    from timestamps sorted within each customer code."""
    same = code[1:] == code[:-1]
    steps = pd.DataFrame({"code": code[1:][same], "step": (ts[1:] - ts[:-1])[same]})
    steps = steps[steps["step"] > 0]
    counts = steps.value_counts().reset_index(name="n")
    counts = counts.sort_values(["code", "n", "step"], ascending=[True, False, True]).drop_duplicates("code")
    out = np.zeros(customers, dtype=np.int64)
    out[counts["code"].to_numpy()] = counts["step"].to_numpy()
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
