"""Labelled benchmark data in one form: ``LabelledSeries`` (timestamp, value, label per step).

Three sources, so the detector is judged on more than the data it was designed with:

* ``synthetic``: seeded daily cloud cost per customer from ``core.sources.synthetic`` (growth,
  weekly rhythm, month-start charges, missing days, credits) with its injected incidents;
* ``cloud-monitoring``: Microsoft's Cloud Monitoring Dataset (real service metrics, hourly and
  per-minute, labelled by experts), read from the shared data folder;
* ``nab``: the public Numenta Anomaly Benchmark, read from a checkout the user provides.

Every loader validates what it reads and names the file, row and column of bad input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from anomaly_pipelines.core.evaluation import metrics
from anomaly_pipelines.core.sources.synthetic import generate_usage

DATASETS = ("synthetic", "portfolio", "cloud-monitoring", "nab-dev", "nab")

# The synthetic benchmark is fixed so numbers are comparable between runs and commits.
SYNTHETIC_SEED = 2024
SYNTHETIC_FULL = {"customers": 24, "days": 730}
SYNTHETIC_QUICK = {"customers": 6, "days": 365}
SYNTHETIC_CREDIT_RATE = 0.4

# Quick mode: a few series per source, each cut to this many steps around its first event.
QUICK_SERIES_PER_GROUP = 1
QUICK_MAX_STEPS = 2000


@dataclass(frozen=True)
class LabelledSeries:
    """One labelled series.

    ``frame`` has ``timestamp`` (UTC, increasing, unique), ``value`` (finite float) and ``label``
    (bool); it may have ``kind`` (the incident type of labelled steps, "" elsewhere) and
    ``recurring`` (normal recurring charges, such as month-start invoices). ``windows``
    are NAB anomaly windows as (first, last) timestamps when the source defines them (NAB does);
    otherwise they are derived from the labels by NAB's rule.
    """

    name: str
    dataset: str
    frame: pd.DataFrame
    windows: tuple[tuple[pd.Timestamp, pd.Timestamp], ...] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        missing = [c for c in ("timestamp", "value", "label") if c not in self.frame.columns]
        if missing:
            raise ValueError(f"LabelledSeries {self.name!r}: frame is missing column(s) {missing}")

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def labels(self) -> np.ndarray:
        return self.frame["label"].to_numpy(dtype=bool)

    @property
    def values(self) -> np.ndarray:
        return self.frame["value"].to_numpy(dtype=float)

    @property
    def recurring(self) -> np.ndarray | None:
        """Steps of known-normal recurring charges (month-start invoices), where the source
        marks them."""
        return self.frame["recurring"].to_numpy(dtype=bool) if "recurring" in self.frame.columns else None

    @property
    def kinds(self) -> np.ndarray | None:
        return self.frame["kind"].to_numpy(dtype=object) if "kind" in self.frame.columns else None

    def nab_window_positions(self) -> list[metrics.Segment]:
        """NAB windows as positions: the source's own windows, or NAB's rule on the labels."""
        if self.windows is None:
            return metrics.nab_windows(self.labels)
        ts = pd.DatetimeIndex(self.frame["timestamp"])
        out = []
        for start, end in self.windows:
            first = int(ts.searchsorted(start, side="left"))
            last = int(ts.searchsorted(end, side="right")) - 1
            if last >= first:
                out.append((first, last))
        return metrics.merge_windows(out)


def project_root() -> Path:
    return Path(__file__).resolve().parents[3]


def shared_data_root() -> Path:
    """``<project root>/../shared/data``: public data shared by the developers' checkouts."""
    return project_root().parent / "shared" / "data"


# --- synthetic -----------------------------------------------------------------------------------


def synthetic_benchmark(quick: bool = False, seed: int = SYNTHETIC_SEED) -> list[LabelledSeries]:
    """Daily cost per customer (all services, usage and credits summed) with incident labels.

    A day is labelled when it lies within one of that customer's injected incidents; ``kind``
    says which, so recall can be reported per incident type.
    """
    size = SYNTHETIC_QUICK if quick else SYNTHETIC_FULL
    data = generate_usage(
        customers=size["customers"],
        days=size["days"],
        seed=seed,
        with_incidents=True,
        credit_rate=SYNTHETIC_CREDIT_RATE,
    )
    return label_usage(data.usage, data.incidents, dataset="synthetic", monthly_charges=data.monthly_charges)


PORTFOLIO_SEED = 11
PORTFOLIO_FULL = {"customers": 40, "days": 730}
PORTFOLIO_QUICK = {"customers": 10, "days": 400}


def portfolio_benchmark(quick: bool = False, seed: int = PORTFOLIO_SEED) -> list[LabelledSeries]:
    """Daily cost from the second, independent generator (``cost_portfolio``): other
    seasonality, heavy-tailed noise, holidays, price changes, accounts that start late or go
    quiet for weeks. The detector was not designed on it, so it checks the synthetic figures."""
    from anomaly_pipelines.core.evaluation.cost_portfolio import generate_portfolio

    size = PORTFOLIO_QUICK if quick else PORTFOLIO_FULL
    data = generate_portfolio(customers=size["customers"], days=size["days"], seed=seed)
    return label_usage(data.usage, data.incidents, dataset="portfolio", monthly_charges=data.monthly_charges)


def label_usage(
    usage: pd.DataFrame,
    incidents: pd.DataFrame,
    dataset: str = "synthetic",
    monthly_charges: tuple[str, ...] = (),
) -> list[LabelledSeries]:
    """Aggregate long usage rows per customer and day and label them from incident intervals.

    The first of each month of the ``monthly_charges`` customers is marked ``recurring``: a
    normal charge, where every alert is a false alarm worth counting on its own.
    """
    daily = usage.groupby(["customer_id", "timestamp"], as_index=False)["cost"].sum()
    out = []
    for customer_id, group in daily.groupby("customer_id", sort=True):
        group = group.sort_values("timestamp").reset_index(drop=True)
        ts = pd.DatetimeIndex(pd.to_datetime(group["timestamp"], utc=True))
        label = np.zeros(len(group), dtype=bool)
        kind = np.full(len(group), "", dtype=object)
        for incident in incidents[incidents["customer_id"] == customer_id].itertuples(index=False):
            inside = (ts >= pd.Timestamp(incident.start)) & (ts <= pd.Timestamp(incident.end))
            label |= inside
            kind[inside] = str(incident.kind)
        frame = pd.DataFrame(
            {"timestamp": ts, "value": group["cost"].to_numpy(dtype=float), "label": label, "kind": kind}
        )
        frame["recurring"] = np.asarray(ts.day == 1) & (customer_id in monthly_charges)
        out.append(LabelledSeries(str(customer_id), dataset, frame, source="core.sources.synthetic"))
    return out


# --- CSV reading ---------------------------------------------------------------------------------


def _bad(path: Path, row: int, column: str, problem: str) -> ValueError:
    # Row numbers are 1-based file lines (the header is line 1), as an editor shows them.
    return ValueError(f"{path}: line {row}, column {column!r}: {problem}")


def read_series_csv(
    path: Path,
    timestamp_column: str,
    value_column: str,
    label_column: str | None,
    duplicates: Literal["reject", "merge"] = "reject",
    empty_values: Literal["reject", "drop"] = "reject",
) -> pd.DataFrame:
    """Read one series file into ``timestamp``, ``value``, ``label``, rejecting bad rows.

    Timestamps may carry a zone ("...Z") or not (read as UTC); rows are sorted by time. A
    repeated timestamp is an error by default (two values at one instant are ambiguous); with
    ``duplicates="merge"`` the rows become one with the mean value, labelled if any row is. The
    public benchmarks need that: the Cloud Monitoring files repeat some hours (exports glued
    together, a daylight-saving hour), sometimes with one copy labelled and one not. An empty
    value is an error too, unless ``empty_values="drop"`` (a missed sample: the row becomes a gap,
    which the detector fills; a few Cloud Monitoring crash-rate rows are empty). Anything else that
    is not a finite number is always an error.
    """
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV file ({exc})") from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    wanted = [timestamp_column, value_column] + ([label_column] if label_column else [])
    missing = [c for c in wanted if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the header has {list(raw.columns)}")
    if raw.empty:
        raise ValueError(f"{path}: no data rows")
    line = np.arange(len(raw)) + 2

    text_ts = raw[timestamp_column].str.strip()
    ts = pd.to_datetime(text_ts, errors="coerce", utc=True, format="mixed")
    bad = ts.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _bad(path, int(line[i]), timestamp_column, f"cannot read {text_ts.iloc[i]!r} as a timestamp")

    text_values = raw[value_column].str.strip()
    values = pd.to_numeric(text_values, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if empty_values == "drop":
        bad &= (text_values != "").to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _bad(path, int(line[i]), value_column, f"{raw[value_column].iloc[i]!r} is not a finite number")

    frame = pd.DataFrame({"timestamp": ts.to_numpy(), "value": values, "line": line})
    if label_column:
        text = raw[label_column].str.strip()
        ok = text.isin(["0", "1", "0.0", "1.0"]).to_numpy()
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise _bad(path, int(line[i]), label_column, f"{text.iloc[i]!r} is not a 0/1 label")
        frame["label"] = text.astype(float).to_numpy() > 0.5
    else:
        frame["label"] = False
    frame = frame[np.isfinite(values)]
    if frame.empty:
        raise ValueError(f"{path}: no row has a value in column {value_column!r}")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    duplicated = frame["timestamp"].duplicated().to_numpy()
    if duplicated.any() and duplicates == "reject":
        i = int(np.flatnonzero(duplicated)[0])
        raise _bad(path, int(frame["line"].iloc[i]), timestamp_column, f"duplicate timestamp {frame['timestamp'].iloc[i]}")
    if duplicated.any():
        frame = frame.groupby("timestamp", as_index=False, sort=True).agg(
            value=("value", "mean"), label=("label", "max")
        )
        return frame[["timestamp", "value", "label"]]
    return frame.drop(columns="line")


def _cut_quick(frame: pd.DataFrame, max_steps: int) -> pd.DataFrame:
    """At most ``max_steps`` consecutive steps, placed so the first labelled event falls in the
    last part (where it is scored after a clean stretch to learn from)."""
    n = len(frame)
    if n <= max_steps:
        return frame
    labelled = np.flatnonzero(frame["label"].to_numpy(dtype=bool))
    end = n if labelled.size == 0 else min(n, max(max_steps, int(labelled[0]) + max_steps // 4))
    return frame.iloc[end - max_steps : end].reset_index(drop=True)


# --- Cloud Monitoring Dataset --------------------------------------------------------------------


def cloud_monitoring(root: Path | None = None, quick: bool = False) -> list[LabelledSeries]:
    """Every ``<group>/<file>.csv`` (columns TimeStamp, Value, Label) under ``root``.

    Series are named ``<group>/<file stem>``; consecutive labelled points form one event; repeated
    timestamps are merged and empty values dropped (see ``read_series_csv``). Quick
    mode keeps the first file of each group, cut to ``QUICK_MAX_STEPS`` steps.
    """
    root = Path(root) if root is not None else shared_data_root() / "cloud-monitoring"
    if not root.is_dir():
        raise FileNotFoundError(
            f"Cloud Monitoring Dataset not found at {root}: put the 60 CSV files (TimeStamp, Value, "
            "Label) there, one folder per service group"
        )
    files = sorted(root.glob("*/*.csv"))
    if not files:
        raise FileNotFoundError(f"no <group>/<name>.csv files under {root}")
    if quick:
        files = _first_per_group(files, QUICK_SERIES_PER_GROUP)
    out = []
    for path in files:
        frame = read_series_csv(path, "TimeStamp", "Value", "Label", duplicates="merge", empty_values="drop")
        if quick:
            frame = _cut_quick(frame, QUICK_MAX_STEPS)
        name = f"{path.parent.name}/{path.stem}"
        out.append(LabelledSeries(name, "cloud-monitoring", frame, source=str(path)))
    return out


def _first_per_group(files: Iterable[Path], per_group: int) -> list[Path]:
    taken: dict[Path, int] = {}
    out = []
    for path in files:
        if taken.get(path.parent, 0) < per_group:
            taken[path.parent] = taken.get(path.parent, 0) + 1
            out.append(path)
    return out


# --- NAB -----------------------------------------------------------------------------------------


def nab_corpus(root: Path, quick: bool = False, dataset: str = "nab") -> list[LabelledSeries]:
    """The NAB corpus as checked out from github.com/numenta/NAB, or a part of it in NAB's
    layout (the shared ``nab-dev`` folder).

    Reads ``data/<subset>/<name>.csv`` (``timestamp,value``) and the anomaly windows of
    ``labels/combined_windows.json`` (``{"<subset>/<name>.csv": [[start, end], ...]}``). A step is
    labelled when it lies in a window; NAB scoring uses the windows as given. Files missing from
    the JSON are skipped (NAB scores only labelled files); a window naming no file is an error.
    """
    root = Path(root)
    windows_path = root / "labels" / "combined_windows.json"
    data_dir = root / "data"
    if not windows_path.is_file() or not data_dir.is_dir():
        raise FileNotFoundError(
            f"{root} is not a NAB checkout (or a part of one in NAB's layout): expected "
            f"{data_dir}/<subset>/<name>.csv and {windows_path}"
        )
    try:
        labelled = json.loads(windows_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{windows_path}: not valid JSON ({exc})") from exc
    if not isinstance(labelled, dict):
        raise ValueError(f"{windows_path}: expected an object mapping file names to windows")
    files = sorted(data_dir.glob("*/*.csv"))
    known = {p.relative_to(data_dir).as_posix() for p in files}
    unknown = sorted(set(labelled) - known)
    if unknown:
        raise ValueError(f"{windows_path}: window(s) for file(s) not under {data_dir}: {unknown[:5]}")
    files = [p for p in files if p.relative_to(data_dir).as_posix() in labelled]
    if quick:
        files = _first_per_group(files, QUICK_SERIES_PER_GROUP)
    out = []
    for path in files:
        key = path.relative_to(data_dir).as_posix()
        windows = _parse_windows(windows_path, key, labelled[key])
        frame = read_series_csv(path, "timestamp", "value", None, duplicates="merge")
        ts = frame["timestamp"]
        label = np.zeros(len(frame), dtype=bool)
        for start, end in windows:
            label |= ((ts >= start) & (ts <= end)).to_numpy()
        frame["label"] = label
        if quick:
            frame = _cut_quick(frame, QUICK_MAX_STEPS)
        name = key.removesuffix(".csv")
        out.append(LabelledSeries(name, dataset, frame, windows=tuple(windows), source=str(path)))
    return out


def _parse_windows(path: Path, key: str, raw: object) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    if not isinstance(raw, list):
        raise ValueError(f"{path}: {key!r}: expected a list of [start, end] pairs")
    out = []
    for i, pair in enumerate(raw):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError(f"{path}: {key!r}, window {i}: expected [start, end], got {pair!r}")
        try:
            start, end = (pd.Timestamp(t) for t in pair)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: {key!r}, window {i}: cannot read {pair!r} as timestamps") from exc
        start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
        end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
        if end < start:
            raise ValueError(f"{path}: {key!r}, window {i}: ends before it starts: {pair!r}")
        out.append((start, end))
    return out


# --- registry ------------------------------------------------------------------------------------


def load_dataset(
    name: str, quick: bool = False, *, data_root: Path | None = None, nab_root: Path | None = None
) -> list[LabelledSeries]:
    """Load a data set by name (see ``DATASETS``)."""
    if name == "synthetic":
        return synthetic_benchmark(quick=quick)
    if name == "portfolio":
        return portfolio_benchmark(quick=quick)
    if name == "cloud-monitoring":
        root = (Path(data_root) if data_root else shared_data_root()) / "cloud-monitoring"
        return cloud_monitoring(root, quick=quick)
    if name == "nab-dev":
        root = (Path(data_root) if data_root else shared_data_root()) / "nab-dev"
        return nab_corpus(root, quick=quick, dataset="nab-dev")
    if name == "nab":
        if nab_root is None:
            raise ValueError("the nab data set needs the path of a NAB checkout (nab_root / --nab-root)")
        return nab_corpus(Path(nab_root), quick=quick)
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


def load_datasets(
    name: str, quick: bool = False, *, data_root: Path | None = None, nab_root: Path | None = None
) -> dict[str, list[LabelledSeries]]:
    """A data set by name, NAB corpora split by subset (``nab-dev/realTweets``, ...): NAB's
    subsets differ in kind (real tweets, ad prices, artificial series without any anomaly), so
    one pooled figure would hide the subset where the detector fails."""
    series = load_dataset(name, quick, data_root=data_root, nab_root=nab_root)
    if name not in ("nab", "nab-dev"):
        return {name: series}
    out: dict[str, list[LabelledSeries]] = {}
    for s in series:
        out.setdefault(f"{name}/{s.name.split('/')[0]}", []).append(s)
    return out


def describe(series: list[LabelledSeries]) -> dict[str, object]:
    """Size of a data set, for the report: series, steps, labelled steps and events, frequencies."""
    steps = sum(len(s) for s in series)
    labelled = sum(int(s.labels.sum()) for s in series)
    events = sum(len(metrics.segments(s.labels)) for s in series)
    freqs: dict[str, int] = {}
    for s in series:
        ts = pd.DatetimeIndex(s.frame["timestamp"])
        step = pd.Series(ts[1:] - ts[:-1]).mode()
        key = _human(step.iloc[0]) if len(step) else "n/a"
        freqs[key] = freqs.get(key, 0) + 1
    return {
        "series": len(series),
        "steps": steps,
        "labelled_steps": labelled,
        "labelled_share": labelled / steps if steps else math.nan,
        "events": events,
        "series_without_events": sum(1 for s in series if not s.labels.any()),
        "frequencies": freqs,
    }


def _human(step: pd.Timedelta) -> str:
    seconds = int(step.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0 and seconds >= size:
            count = seconds // size
            return f"{count} {unit}" + ("s" if count > 1 else "")
    return f"{seconds} s"
