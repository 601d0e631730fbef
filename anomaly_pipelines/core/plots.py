"""Pictures of the results: one customer's cost against its expectation, and the portfolio.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting never changes the
backend of a notebook that imports this package and is safe from worker threads. matplotlib is
imported inside the functions: scoring must not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_pipelines.core.explain.incidents import SEVERITIES
from anomaly_pipelines.core.files import atomic_write
from anomaly_pipelines.core.ids import visible
from anomaly_pipelines.core.processes import spawned_pool

SEVERITY_COLORS = {"low": "#e0b000", "medium": "#f28e2b", "high": "#d62728", "critical": "#6a0dad"}
UNMATCHED_COLOR = "#555555"  # an anomaly whose incident is not in the incidents frame
THRESHOLD_COLOR = "#8c564b"
BAND_SIGMAS = 3.0
DPI = 100
# A customer's plot is about half a second of matplotlib on one core, and starting a worker
# process (imports) about as long as three plots: from this many plots on, they are drawn on
# every core.
PARALLEL_FROM = 16


def _plain(text: object) -> str:
    """Data text shown literally: matplotlib treats ``$...$`` as math, which would garble an id
    (or fail to parse) instead of printing it."""
    return visible(text).replace("\\", "\\\\").replace("$", r"\$")


def _naive_utc(values: pd.Series) -> np.ndarray:
    return pd.to_datetime(values, utc=True).dt.tz_convert(None).to_numpy()


def _canvas(
    width: float, height: float, rows: int = 1, height_ratios: list[float] | None = None
) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(
        rows,
        1,
        sharex=True,
        gridspec_kw={"height_ratios": height_ratios} if height_ratios else None,
    )
    return fig, axes


def _date_axis(ax: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _save(fig: Any, path: Path) -> Path:
    """Save atomically: a full disk or a killed run must not leave a truncated PNG in place."""
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def _step(timestamps: pd.Series) -> pd.Timedelta:
    diffs = timestamps.sort_values().diff().dropna()
    diffs = diffs[diffs > pd.Timedelta(0)]
    return diffs.mode().iloc[0] if not diffs.empty else pd.Timedelta(days=1)


def _residual_sigma(frame: pd.DataFrame) -> float | None:
    """The detector's residual spread, recovered from the scores: residual_score = |z|, so
    |cost - expected| / residual_score is the same sigma on every step of a customer."""
    if "residual_score" not in frame.columns:
        return None
    z = pd.to_numeric(frame["residual_score"], errors="coerce")
    gap = (frame["cost"] - frame["expected_cost"]).abs()
    ok = (z > 1e-6) & gap.notna()
    if not ok.any():
        return None
    return float((gap[ok] / z[ok]).median())


def plot_customer(
    scores: pd.DataFrame, incidents: pd.DataFrame, path: Path, title: str | None = None
) -> Path:
    """Cost over time with the expected band, anomalies coloured by severity and incidents
    shaded; below it the LSTM reconstruction error against its threshold. ``scores`` holds one
    customer; ``incidents`` may hold any (others are ignored). Returns ``path``."""
    customers = scores["customer_id"].astype(str).unique()
    if len(customers) != 1:
        raise ValueError(
            f"plot_customer: scores must hold exactly one customer, got {len(customers)}"
            + (f" ({', '.join(sorted(customers)[:5])}...)" if len(customers) else "")
        )
    customer = customers[0]
    frame = scores.copy()
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame = frame.sort_values("timestamp").reset_index(drop=True)
    for column in ("cost", "expected_cost", "lstm_error", "lstm_threshold"):
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    mine = (
        incidents[incidents["customer_id"].astype(str) == customer] if len(incidents) else incidents
    )
    step = _step(frame["timestamp"])
    x = _naive_utc(frame["timestamp"])
    dense = len(frame) > 1500  # two years of days or a few weeks of 5-minute steps

    fig, (ax, ax_err) = _canvas(12, 6.5, rows=2, height_ratios=[3.0, 1.3])
    # Incidents first, so lines and points are drawn over the shading. A one-step incident in
    # two years of days (or weeks of 5-minute steps) would be a hairline: widen it to be seen.
    span = (frame["timestamp"].iloc[-1] - frame["timestamp"].iloc[0]) if len(frame) else step
    least = span * 0.004
    for _, inc in mine.iterrows():
        color = SEVERITY_COLORS.get(str(inc["severity"]), UNMATCHED_COLOR)
        start = pd.Timestamp(inc["start"]).tz_convert(None)
        end = pd.Timestamp(inc["end"]).tz_convert(None) + step
        if end - start < least:
            middle = start + (end - start) / 2
            start, end = middle - least / 2, middle + least / 2
        for axis in (ax, ax_err):
            axis.axvspan(start, end, color=color, alpha=0.18, lw=0)

    if "status" in frame.columns:
        # Warm-up expectations are placeholders (too little history for a seasonal median).
        frame.loc[frame["status"].astype(str) != "scored", "expected_cost"] = np.nan
    sigma = _residual_sigma(frame)
    expected = frame["expected_cost"].to_numpy()
    if sigma is not None and np.isfinite(expected).any():
        ax.fill_between(
            x,
            expected - BAND_SIGMAS * sigma,
            expected + BAND_SIGMAS * sigma,
            color="#9ecae1",
            alpha=0.45,
            lw=0,
            label=f"expected ± {BAND_SIGMAS:g}σ",
        )
    if np.isfinite(expected).any():
        ax.plot(x, expected, color="#3182bd", lw=0.8, ls="--", label="expected")
    ax.plot(
        x,
        frame["cost"].to_numpy(),
        color="#222222",
        lw=0.4 if dense else 1.1,
        alpha=0.85 if dense else 1.0,
        label="actual",
    )

    flagged = frame[frame["is_anomaly"].fillna(False).astype(bool)]
    severity = _severity_by_step(flagged, mine)
    for level in (*SEVERITIES, "unmatched"):
        points = flagged[severity == level]
        if points.empty:
            continue
        color = SEVERITY_COLORS.get(level, UNMATCHED_COLOR)
        size = {"low": 18, "medium": 26, "high": 34, "critical": 44}.get(level, 18)
        ax.scatter(
            _naive_utc(points["timestamp"]),
            points["cost"],
            s=size,
            color=color,
            edgecolor="white",
            linewidth=0.5,
            zorder=5,
            label=f"anomaly: {level}",
        )
    if (
        "split" in frame.columns
        and (frame["split"] == "test").any()
        and (frame["split"] == "train").any()
    ):
        boundary = _naive_utc(frame.loc[frame["split"] == "test", "timestamp"].head(1))[0]
        for axis in (ax, ax_err):
            axis.axvline(boundary, color="#888888", lw=0.8, ls=":")
        ax.annotate(
            "training | scoring",
            xy=(boundary, 0.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontsize=8,
            color="#666666",
        )
    currency = (
        str(frame["currency"].dropna().iloc[0])
        if "currency" in frame.columns and frame["currency"].notna().any()
        else "USD"
    )
    ax.set_ylabel(f"cost per step ({_plain(currency)})")
    fig.suptitle(
        _plain(title if title is not None else f"{customer}: cost against expectation"),
        x=0.01,
        ha="left",
        fontsize=12,
    )
    handles, labels = ax.get_legend_handles_labels()
    if len(mine):
        from matplotlib.patches import Patch

        handles.append(Patch(color="#999999", alpha=0.3, lw=0))
        labels.append("incident (shaded by severity)")
    # Legends sit above the panels: inside, they would hide exactly the peaks a reader looks for.
    ax.legend(
        handles,
        labels,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        fontsize=8,
        ncols=7,
        frameon=False,
    )
    ax.grid(alpha=0.25, lw=0.5)
    ax.margins(x=0.01)
    _error_panel(ax_err, frame, x, dense)
    _date_axis(ax_err)
    return _save(fig, path)


CustomerPlot = tuple[pd.DataFrame, pd.DataFrame, Path, str | None]


def plot_customers(plots: list[CustomerPlot], workers: int = 1) -> list[Path]:
    """``plot_customer(scores, incidents, path, title)`` for each item, in order. Plots of 200
    customers take as long as their training, so from ``PARALLEL_FROM`` plots on they are drawn
    in ``workers`` processes (``usable_cores()``: 1.8x faster on 2 cores; ``spawned_pool``)."""
    if workers < 2 or len(plots) < PARALLEL_FROM:
        return [plot_customer(*item) for item in plots]
    with spawned_pool(workers) as pool:
        return list(pool.map(_plot_item, plots, chunksize=-(-len(plots) // (4 * workers))))


def _plot_item(item: CustomerPlot) -> Path:
    return plot_customer(*item)


def _severity_by_step(flagged: pd.DataFrame, incidents: pd.DataFrame) -> pd.Series:
    """Each anomalous step takes the severity of the incident that contains it."""
    out = pd.Series("unmatched", index=flagged.index, dtype=object)
    for _, inc in incidents.iterrows():
        inside = (flagged["timestamp"] >= pd.Timestamp(inc["start"])) & (
            flagged["timestamp"] <= pd.Timestamp(inc["end"])
        )
        out[inside] = str(inc["severity"])
    return out


def _error_panel(ax: Any, frame: pd.DataFrame, x: np.ndarray, dense: bool) -> None:
    error = (
        frame["lstm_error"].to_numpy()
        if "lstm_error" in frame.columns
        else np.full(len(frame), np.nan)
    )
    ax.set_ylabel("reconstruction\nerror", fontsize=9)
    ax.grid(alpha=0.25, lw=0.5)
    if not np.isfinite(error).any():
        reason = str(frame["reasons"].iloc[0]) if "reasons" in frame.columns and len(frame) else ""
        ax.text(
            0.5,
            0.5,
            _plain(f"no reconstruction error: {reason}" if reason else "no reconstruction error"),
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            color="#666666",
        )
        ax.set_yticks([])
        return
    ax.plot(x, error, color="#555555", lw=0.5 if dense else 0.9, label="LSTM reconstruction error")
    thresholds = (
        frame["lstm_threshold"].to_numpy()
        if "lstm_threshold" in frame.columns
        else np.array([np.nan])
    )
    threshold = float(np.nanmax(thresholds)) if np.isfinite(thresholds).any() else np.nan
    if np.isfinite(threshold):
        # Brown, not a severity colour: above-threshold error is a signal, not an incident.
        ax.axhline(
            threshold, color=THRESHOLD_COLOR, lw=0.9, ls="--", label=f"threshold {threshold:,.3g}"
        )
        above = np.isfinite(error) & (error > threshold)
        ax.scatter(x[above], error[above], s=8, color=THRESHOLD_COLOR, zorder=4)
    positive = error[np.isfinite(error) & (error > 0)]
    # Reconstruction errors are heavy-tailed: one big event would flatten the rest on a linear axis.
    if positive.size and np.nanmax(positive) / max(np.nanmedian(positive), 1e-12) > 30:
        ax.set_yscale("log")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=8, ncols=2, frameon=False)


def plot_portfolio(
    scores: pd.DataFrame, incidents: pd.DataFrame, path: Path, top_n: int = 20
) -> Path:
    """Customers x days heat map of the hybrid score (daily maximum) for the ``top_n`` customers
    by total |impact| of their incidents (then by peak score), so the biggest money moves are on
    top and a portfolio-wide event shows up as a vertical stripe."""
    from matplotlib.colors import TwoSlopeNorm

    frame = scores[["customer_id", "timestamp", "hybrid_score"]].copy().reset_index(drop=True)
    frame["customer_id"] = frame["customer_id"].astype(str)
    frame["day"] = pd.to_datetime(frame["timestamp"], utc=True).dt.floor("D").dt.tz_convert(None)
    frame["hybrid_score"] = pd.to_numeric(frame["hybrid_score"], errors="coerce")
    if "status" in scores.columns:
        # Warm-up and unscored steps carry no real score; show them as "no score", not as calm.
        no_score = scores["status"].astype(str).isin(["warmup", "unscored"]).to_numpy()
        frame.loc[no_score, "hybrid_score"] = np.nan
    chosen = portfolio_customers(frame, incidents, top_n)
    days = (
        pd.date_range(frame["day"].min(), frame["day"].max(), freq="D")
        if len(frame)
        else pd.DatetimeIndex([])
    )
    grid = (
        frame[frame["customer_id"].isin(chosen)]
        .groupby(["customer_id", "day"])["hybrid_score"]
        .max()
        .unstack("day")
        .reindex(index=chosen, columns=days)
    )
    height = max(2.8, 0.32 * len(chosen) + 1.6)
    fig, ax = _canvas(12, height)
    cmap = _score_colormap()
    values = np.ma.masked_invalid(grid.to_numpy(dtype=float))
    if len(chosen) and len(days):
        import matplotlib.dates as mdates

        left, right = mdates.date2num(days[0]), mdates.date2num(days[-1] + pd.Timedelta(days=1))
        image = ax.imshow(
            values,
            aspect="auto",
            interpolation="nearest",
            cmap=cmap,
            norm=TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=3.0),
            extent=(left, right, len(chosen) - 0.5, -0.5),
        )
        ax.xaxis_date()
        _date_axis(ax)
        bar = fig.colorbar(image, ax=ax, pad=0.01, fraction=0.03, extend="max")
        bar.set_label("hybrid score (1 = anomaly)", fontsize=9)
        bar.ax.axhline(1.0, color="black", lw=1)
    else:
        ax.text(0.5, 0.5, "no scored customers", transform=ax.transAxes, ha="center", va="center")
    impact = _impact_by_customer(incidents)
    labels = [_plain(_label(c, impact.get(c), incidents)) for c in chosen]
    ax.set_yticks(range(len(chosen)), labels, fontsize=8)
    ax.set_title(
        f"Hybrid anomaly score per day: top {len(chosen)} customers by impact (total |impact| of incidents)",
        loc="left",
        fontsize=11,
    )
    ax.set_title(
        "pale blue: no score (warm-up, missing or too short)",
        loc="right",
        fontsize=8,
        color="#555555",
    )
    return _save(fig, path)


def _score_colormap() -> Any:
    """Pale greys below the decision threshold, warm colours above it: a reader should see
    where the detector fired, not a sea of "almost" orange."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    calm = colormaps["Greys"](np.linspace(0.0, 0.35, 128))
    alarm = colormaps["YlOrRd"](np.linspace(0.3, 1.0, 128))
    # Missing steps get their own colour: distinct from "scored, nothing unusual".
    return ListedColormap(np.vstack([calm, alarm]), name="hybrid_score").with_extremes(
        bad="#d9e6f2"
    )


def _impact_by_customer(incidents: pd.DataFrame) -> dict[str, float]:
    if incidents is None or incidents.empty:
        return {}
    frame = incidents.assign(customer_id=incidents["customer_id"].astype(str))
    return frame.groupby("customer_id")["impact"].agg(lambda v: float(np.abs(v).sum())).to_dict()


def portfolio_customers(
    scores: pd.DataFrame, incidents: pd.DataFrame, top_n: int = 20
) -> list[str]:
    """The customers the portfolio view shows, in order: largest total |impact| of incidents
    first, then highest peak hybrid score (so quiet portfolios still show their closest calls)."""
    impact = _impact_by_customer(incidents)
    frame = scores.assign(customer_id=scores["customer_id"].astype(str))
    peak = (
        pd.to_numeric(frame["hybrid_score"], errors="coerce")
        .groupby(frame["customer_id"])
        .max()
        .fillna(0.0)
    )
    ranked = sorted(peak.index, key=lambda c: (-impact.get(c, 0.0), -float(peak[c]), c))
    return ranked[: max(top_n, 0)]


def _label(customer: str, impact: float | None, incidents: pd.DataFrame) -> str:
    name = customer if len(customer) <= 28 else customer[:27] + "…"
    if not impact:
        return name
    rows = incidents[incidents["customer_id"].astype(str) == customer]
    currency = str(rows["currency"].iloc[0]) if "currency" in rows.columns and len(rows) else "USD"
    from anomaly_pipelines.core.explain.formatting import compact_money

    return f"{name}  {compact_money(impact, currency)}"
