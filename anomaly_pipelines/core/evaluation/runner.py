"""Run every detector on every labelled data set and report the figures.

Rows of the result, per data set:

* ``hybrid``: the project's method, ``anomaly_pipelines.detect`` with the given configuration,
  one call for all series of the data set (that is how the stacked LSTMs train fastest);
* ``hybrid/<signal>``: each component of that same run on its own; a component "fires" at a step
  when its name is in the step's ``reasons``, and its continuous score feeds AUC-PR;
* ``baseline/<name>``: the baselines of ``evaluation.baselines``, run series by series.

The same configuration is used for every data set: tuning per data set would measure the tuning,
not the method. Labels never reach a detector; they are only compared with its output.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from anomaly_pipelines.core import scoring
from anomaly_pipelines.core.api import coerce, input_rows, observations, on_input_times
from anomaly_pipelines.core.config import PipelineConfig, as_config
from anomaly_pipelines.core.detector import (
    FittedDetectors,
    fit_detectors,
    quiet_steps,
    score_series,
    window_detector_scores,
)
from anomaly_pipelines.core.evaluation import cache, metrics
from anomaly_pipelines.core.evaluation.baselines import BASELINES, BaselineResult
from anomaly_pipelines.core.evaluation.datasets import LabelledSeries, describe, load_datasets
from anomaly_pipelines.core.processes import spawned_pool, tensorflow_threads, usable_cores
from anomaly_pipelines.core.series import CustomerSeries, infer_frequency, regularize

DETECTORS = ("hybrid", *BASELINES)
# The hybrid scored in hindsight (window models may use windows reaching past a step): reported
# apart, never as the headline.
RETROSPECTIVE = "hybrid (retrospective)"
# PyOD window detectors compared with the hybrid's two (IsolationForest and LOF, whose rows are
# ``hybrid/<name>``): each alone, fitted and thresholded the way the hybrid's are.
OTHER_WINDOW_DETECTORS = ("ecod", "copod", "hbos", "knn")
# The notebook method (7-day windows, a -30% day-over-day rule) is a daily-cost method, and one
# Keras model per series costs more than all the rest on the 90 sub-daily series: it is measured
# on the daily-cost data sets only.
DAILY_ONLY = ("notebook_lstm",)
# Baselines that keep one core busy per series (a tiny Keras model each, overhead-bound): run
# on as many series at a time as there are cores. The notebook baseline was half of a full
# evaluation's time on 2 cores.
IN_PROCESSES = ("notebook_lstm",)
DAY = pd.Timedelta(days=1)
DEFAULT_DATASETS = ("synthetic", "portfolio", "cloud-monitoring", "nab-dev")
# An alert this many steps before or after an incident still points at it (e.g. the drop back
# to normal the day after a spike ends).
EVENT_TOLERANCE = 3

COLUMNS = [
    "dataset",
    "detector",
    "series",
    "steps",
    "events",
    "event_precision",
    "event_recall",
    "event_f1",
    "event_precision_tol",
    "event_recall_tol",
    "event_f1_tol",
    "false_alarms",
    "point_precision",
    "point_recall",
    "nab_score",
    "auc_pr",
    "flagged_share",
    "alert_load",
    "false_alarms_per_month",
    "seconds",
    "cpu_seconds",
    "note",
]


@dataclass
class Detection:
    """One detector's output on one data set: per-series flags and scores, by series name."""

    detector: str
    flags: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    seconds: float | None
    # CPU time of this process (all threads): unlike wall time, barely affected by other
    # programs competing for the same cores.
    cpu_seconds: float | None = None
    notes: list[str] = field(default_factory=list)


# --- detectors -----------------------------------------------------------------------------------


def _component_score(name: str, scores: pd.DataFrame, config: PipelineConfig) -> np.ndarray:
    """A continuous score per component, higher = more anomalous, comparable across series."""
    if name == "residual":
        return scores["residual_score"].to_numpy(dtype=float)
    if name == "lstm":
        threshold = scores["lstm_threshold"].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return scores["lstm_error"].to_numpy(dtype=float) / threshold
    if name in ("isolation_forest", "local_outlier_factor"):
        return scores[f"{name}_score"].to_numpy(dtype=float)
    if name == "decrease":
        return scores["decrease_rate"].to_numpy(dtype=float) / config.decrease_rule.threshold
    return np.full(len(scores), np.nan)


def run_hybrid(series: list[LabelledSeries], config: PipelineConfig) -> list[Detection]:
    """The detector fitted once on all series (that is how the stacked LSTMs train fastest),
    then scored online (the headline: what the daily run reports) and retrospectively; each
    component's online decision is reported too."""
    frame = pd.concat(
        [
            pd.DataFrame({"customer_id": s.name, "timestamp": s.frame["timestamp"], "cost": s.frame["value"]})
            for s in series
        ],
        ignore_index=True,
    )
    # CPU includes the LSTM training workers' (core/models/lstm_workers), once waited for.
    started, cpu = time.perf_counter(), time.process_time() + _children_cpu()
    # detect()'s own steps. Scores map back onto the usable rows only: a row left out (an
    # unusable value) has no score of its own and counts as not flagged.
    observed = observations(coerce(frame))[0]
    regular = regularize(observed, config.preprocess)
    fitted = fit_detectors(regular, config)
    online = input_rows(on_input_times(score_series(regular, fitted, config, online=True), observed, regular))
    seconds, cpu = time.perf_counter() - started, time.process_time() + _children_cpu() - cpu
    retro = input_rows(on_input_times(score_series(regular, fitted, config, online=False), observed, regular))
    others = window_detector_scores(regular, fitted, config, OTHER_WINDOW_DETECTORS)
    components = list(scoring.SIGNALS)
    hybrid = Detection("hybrid", {}, {}, seconds, cpu)
    hindsight = Detection(RETROSPECTIVE, {}, {}, None)
    parts = {name: Detection(f"hybrid/{name}", {}, {}, None) for name in components}
    online_rows, retro_rows = _rows_by_series(series, online), _rows_by_series(series, retro)
    regular_by_name = {r.customer_id: r for r in regular}
    for s in series:
        rows, found = online_rows[s.name]
        hybrid.flags[s.name] = _place(rows["is_anomaly"].to_numpy(dtype=bool), found, False)
        hybrid.scores[s.name] = _place(rows["hybrid_score"].to_numpy(dtype=float), found, np.nan)
        fired = [set(str(r).split(",")) for r in rows["reasons"]]
        scored = rows["status"].to_numpy() == "scored"
        quiet = _quiet(fitted, regular_by_name.get(s.name), config)
        for name in components:
            # the hybrid's own repeat suppression applies to each component alone too
            alone = np.array([name in f for f in fired], dtype=bool) & scored
            parts[name].flags[s.name] = _place(alone & ~scoring.repeats(alone, quiet), found, False)
            parts[name].scores[s.name] = _place(_component_score(name, rows, config), found, np.nan)
        rows, found = retro_rows[s.name]
        hindsight.flags[s.name] = _place(rows["is_anomaly"].to_numpy(dtype=bool), found, False)
        hindsight.scores[s.name] = _place(rows["hybrid_score"].to_numpy(dtype=float), found, np.nan)
    compared = []
    for name, by_series in others.items():
        detection = Detection(f"window/{name}", {}, {}, None)
        for s in series:
            score = _on_input_steps(regular_by_name.get(s.name), s, by_series.get(s.name))
            alone = score >= 1.0
            quiet = _quiet(fitted, regular_by_name.get(s.name), config)
            detection.flags[s.name], detection.scores[s.name] = alone & ~scoring.repeats(alone, quiet), score
        compared.append(detection)
    unmatched = sum(int((~found).sum()) for _, found in online_rows.values())
    if unmatched:
        hybrid.notes.append(f"{unmatched} step(s) missing from detect() output, counted as not flagged")
    return [hybrid, *parts.values(), *compared, hindsight]


def _quiet(fitted: FittedDetectors, regular: CustomerSeries | None, config: PipelineConfig) -> int:
    cal = fitted.calibrations.get(regular.customer_id) if regular is not None else None
    return quiet_steps(regular.frequency, cal.window, config) if cal is not None and regular is not None else 0


def _on_input_steps(regular: CustomerSeries | None, s: LabelledSeries, values: np.ndarray | None) -> np.ndarray:
    """A per-step array of the regularised series at the labelled series' own steps: the grid step
    each was put on (``api.on_input_times``), 0 without scores."""
    if values is None or regular is None:
        return np.zeros(len(s))
    method = "nearest" if regular.jittered else "pad"
    position = pd.DatetimeIndex(regular.timestamps).get_indexer(pd.DatetimeIndex(s.frame["timestamp"]), method=method)
    return np.where(position >= 0, values[np.maximum(position, 0)], 0.0)


def _rows_by_series(
    series: list[LabelledSeries], scored: pd.DataFrame
) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """Each series' score rows in the order of its steps, and which steps have one."""
    by_customer = dict(tuple(scored.groupby("customer_id", sort=False)))
    out = {}
    for s in series:
        rows = by_customer.get(s.name, scored.iloc[0:0])
        position = pd.DatetimeIndex(rows["timestamp"]).get_indexer(pd.DatetimeIndex(s.frame["timestamp"]))
        found = position >= 0
        out[s.name] = (rows.iloc[position[found]], found)
    return out


def _place(values: np.ndarray, found: np.ndarray, fill: float | bool) -> np.ndarray:
    full = np.full(len(found), fill, dtype=np.asarray(values).dtype)
    full[found] = values
    return full


def run_baseline(
    name: str,
    series: list[LabelledSeries],
    config: PipelineConfig,
    progress: Callable[[str], None] | None = None,
    workers: int = 1,
) -> Detection:
    """A baseline on each series. Those in ``IN_PROCESSES`` run in ``workers`` spawned
    processes, as many series at a time (CPU seconds then include the workers')."""
    method = BASELINES[name]
    detection = Detection(f"baseline/{name}", {}, {}, None)
    started, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
    parallel = name in IN_PROCESSES and workers > 1 and len(series) > 1
    # Leaving the block waits for the workers, after which their CPU time is counted.
    with spawned_pool(workers, _one_thread_each, (max(1, usable_cores() // workers),)) if parallel else nullcontext() as pool:
        results: Iterable[BaselineResult] = (
            pool.map(method, [s.values for s in series], [config] * len(series))
            if pool is not None
            else (method(s.values, config) for s in series)
        )
        for i, (s, result) in enumerate(zip(series, results, strict=True), start=1):
            detection.flags[s.name] = result.flags
            detection.scores[s.name] = result.scores
            if result.note:
                detection.notes.append(f"{s.name}: {result.note}")
            if progress and i % 10 == 0 and i < len(series):
                progress(f"  {name}: {i}/{len(series)} series, {time.perf_counter() - started:.0f} s")
    detection.seconds = time.perf_counter() - started
    detection.cpu_seconds = time.process_time() - cpu + _children_cpu() - children
    return detection


def _one_thread_each(threads: int) -> None:
    """Worker start: share the cores among the workers' TensorFlow threads."""
    os.environ.update(tensorflow_threads(threads))


def _children_cpu() -> float:
    """CPU seconds of this process' waited-for children (0 where the system does not tell)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- metrics -------------------------------------------------------------------------------------


def score_detection(
    series: list[LabelledSeries], detection: Detection, tolerance: int = EVENT_TOLERANCE
) -> dict[str, Any]:
    """All figures of one detector on one data set, from counts summed over its series."""
    exact, tolerant = metrics.EventCounts(), metrics.EventCounts()
    points, nab = metrics.PointCounts(), metrics.NabScore()
    kinds: dict[str, metrics.EventCounts] = {}
    recurring = recurring_flagged = 0
    for s in series:
        labels, flags = s.labels, detection.flags[s.name]
        exact += metrics.event_counts(labels, flags, 0)
        tolerant += metrics.event_counts(labels, flags, tolerance)
        points += metrics.point_counts(labels, flags)
        nab += metrics.nab_score(flags, s.nab_window_positions())
        if s.recurring is not None:
            normal = s.recurring & ~labels
            recurring += int(normal.sum())
            recurring_flagged += int((normal & flags).sum())
        if s.kinds is not None:
            for kind in sorted({k for k in s.kinds[labels] if k}):
                counts = metrics.event_counts(labels & (s.kinds == kind), flags, 0)
                kinds[kind] = kinds.get(kind, metrics.EventCounts()) + counts
    quiet = [s for s in series if not s.labels.any()]
    quiet_steps = sum(len(s) for s in quiet)
    quiet_flagged = sum(int(detection.flags[s.name].sum()) for s in quiet)
    months = sum(_months(s) for s in series)
    all_labels = np.concatenate([s.labels for s in series]) if series else np.zeros(0, dtype=bool)
    all_scores = np.concatenate([detection.scores[s.name] for s in series]) if series else np.zeros(0)
    all_flags = np.concatenate([detection.flags[s.name] for s in series]) if series else np.zeros(0)
    row: dict[str, Any] = {
        "detector": detection.detector,
        "series": len(series),
        "steps": len(all_labels),
        "events": exact.events,
        "event_precision": exact.precision,
        "event_recall": exact.recall,
        "event_f1": exact.f1,
        "event_precision_tol": tolerant.precision,
        "event_recall_tol": tolerant.recall,
        "event_f1_tol": tolerant.f1,
        "false_alarms": exact.false_alarms,
        "point_precision": points.precision,
        "point_recall": points.recall,
        "nab_score": nab.normalised,
        "auc_pr": metrics.auc_pr(all_labels, all_scores) if len(all_labels) else math.nan,
        "flagged_share": float(all_flags.mean()) if len(all_flags) else math.nan,
        "alert_load": quiet_flagged / quiet_steps if quiet_steps else math.nan,
        "false_alarms_per_month": exact.false_alarms / months if months else math.nan,
        "seconds": detection.seconds if detection.seconds is not None else math.nan,
        "cpu_seconds": detection.cpu_seconds if detection.cpu_seconds is not None else math.nan,
        "note": "; ".join(detection.notes[:3]) + (" ..." if len(detection.notes) > 3 else ""),
    }
    for kind, counts in kinds.items():
        row[f"recall[{kind}]"] = counts.recall
    if recurring:
        row["recurring_steps"] = recurring
        row["recurring_flagged"] = recurring_flagged / recurring
    return row


def _months(s: LabelledSeries) -> float:
    """Length of a series in months (30.44 days), the unit alert budgets are stated in."""
    ts = pd.DatetimeIndex(s.frame["timestamp"])
    return (ts[-1] - ts[0]) / pd.Timedelta(days=30.44) if len(ts) > 1 else 0.0


# --- running -------------------------------------------------------------------------------------


def _run_detector(
    detector: str,
    series: list[LabelledSeries],
    config: PipelineConfig,
    cache_dir: Path | None,
    say: Callable[[str], None],
) -> list[Detection]:
    """Run one detector (the hybrid yields itself and its components), or reuse a cached run."""
    key = cache.cache_key(detector, series, config) if cache_dir is not None else ""
    if cache_dir is not None:
        hit = cache.load(cache_dir, key)
        if hit is not None:
            detections = [Detection(**entry) for entry in hit]
            detections[0].notes.append(f"cached result ({cache_dir / key}); times are from the run that made it")
            return detections
    if detector == "hybrid":
        produced = run_hybrid(series, config)
    else:
        produced = [run_baseline(detector, series, config, say, usable_cores())]
    if cache_dir is not None:
        cache.save(cache_dir, key, [s.name for s in series], [asdict(d) for d in produced])
    return produced


def evaluate(
    datasets: dict[str, list[LabelledSeries]],
    config: PipelineConfig | None = None,
    detectors: list[str] | None = None,
    tolerance: int = EVENT_TOLERANCE,
    progress: Callable[[str], None] | None = None,
    cache_dir: Path | None = None,
) -> pd.DataFrame:
    """Every requested detector on every given data set; one row per (data set, detector).

    With ``cache_dir``, each detector's output on each data set is stored there and reused
    while the data, the configuration and the detector's code are unchanged (see ``cache``).
    """
    cfg = as_config(config)
    wanted = list(detectors) if detectors is not None else list(DETECTORS)
    unknown = [d for d in wanted if d not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; known: {', '.join(DETECTORS)}")
    say = progress or (lambda _message: None)
    rows: list[dict[str, Any]] = []
    described: dict[str, dict[str, Any]] = {}
    for name, series in datasets.items():
        described[name] = describe(series)
        detections: list[Detection] = []
        daily = all((infer_frequency(s.frame["timestamp"]) or DAY) >= DAY for s in series)
        for detector in wanted:
            if detector in DAILY_ONLY and not daily:
                say(f"[{name}] {detector} skipped: a daily-cost method, and the data set is sub-daily")
                continue
            say(f"[{name}] {detector} on {len(series)} series ...")
            produced = _run_detector(detector, series, cfg, cache_dir, say)
            detections.extend(produced)
            say(f"[{name}] {detector} done in {produced[0].seconds or 0.0:.1f} s")
        for detection in detections:
            rows.append({"dataset": name, **score_detection(series, detection, tolerance)})
    result = pd.DataFrame(rows)
    extra = sorted(c for c in result.columns if c not in COLUMNS)
    result = result.reindex(columns=[*COLUMNS, *extra])
    result.attrs["datasets"] = described
    result.attrs["tolerance"] = tolerance
    result.attrs["config_changes"] = _config_changes(cfg)
    return result


def run_evaluation(
    datasets: list[str],
    quick: bool,
    config: PipelineConfig | None = None,
    detectors: list[str] | None = None,
    *,
    tolerance: int = EVENT_TOLERANCE,
    data_root: Path | None = None,
    nab_root: Path | None = None,
    out: Path | None = None,
    echo: bool = True,
    cache_dir: Path | Literal["default"] | None = "default",
) -> pd.DataFrame:
    """Load the named data sets, run the detectors, print the report; return the figures.

    A data set whose files are absent (the shared Cloud Monitoring folder, say) is skipped with
    the reason in the report rather than failing the whole run. ``out`` also writes the report
    as Markdown (the generated ``docs/evaluation.md``). Detector outputs are cached in
    ``cache_dir`` (by default ``cache.default_cache_dir()``; ``None`` turns the cache off), so
    after a change to the detector only the hybrid runs again, and an interrupted run resumes.
    """
    if cache_dir == "default":
        cache_dir = cache.default_cache_dir()
    say = (lambda message: print(message, flush=True)) if echo else (lambda _message: None)
    started = time.perf_counter()
    loaded: dict[str, list[LabelledSeries]] = {}
    skipped: dict[str, str] = {}
    for name in datasets:
        try:
            loaded.update(load_datasets(name, quick, data_root=data_root, nab_root=nab_root))
        except FileNotFoundError as exc:
            skipped[name] = str(exc)
            say(f"[{name}] skipped: {exc}")
    result = evaluate(loaded, config, detectors, tolerance, progress=say, cache_dir=cache_dir)
    result.attrs["skipped"] = skipped
    result.attrs["quick"] = quick
    result.attrs["total_seconds"] = time.perf_counter() - started
    report = render_markdown(result)
    if echo:
        print(report)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(report, encoding="utf-8")
    return result


def _config_changes(config: PipelineConfig) -> dict[str, Any]:
    """Settings that differ from the defaults (flattened keys), so a report says what it ran."""

    def flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict) and value and key != "weights":
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    current, default = flat(config.model_dump()), flat(PipelineConfig().model_dump())
    return {k: v for k, v in current.items() if default.get(k) != v}


# --- report --------------------------------------------------------------------------------------

_TABLE = [
    ("Detector", "detector", "{}"),
    ("Event P", "event_precision", "{:.2f}"),
    ("Event R", "event_recall", "{:.2f}"),
    ("Event F1", "event_f1", "{:.2f}"),
    ("F1 (±tol)", "event_f1_tol", "{:.2f}"),
    ("False alarms", "false_alarms", "{:d}"),
    ("Point P", "point_precision", "{:.2f}"),
    ("Point R", "point_recall", "{:.2f}"),
    ("NAB", "nab_score", "{:.1f}"),
    ("AUC-PR", "auc_pr", "{:.3f}"),
    ("Flagged", "flagged_share", "{:.1%}"),
    ("Alert load", "alert_load", "{:.2%}"),
    ("FA / series-month", "false_alarms_per_month", "{:.2f}"),
    ("Time (s)", "seconds", "{:.0f}"),
    ("CPU (s)", "cpu_seconds", "{:.0f}"),
]


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if fmt == "{:d}":
        return str(int(value))
    return fmt.format(value)


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _summary(result: pd.DataFrame) -> list[str]:
    """One line per data set: the hybrid online against the best causal baseline."""
    header = ["Data set", "Hybrid event P / R / F1", "NAB", "Alert load", "FA / series-month",
              "Best baseline (event F1)", "Best component (event F1)"]
    rows = []
    for name, group in result.groupby("dataset", sort=False):
        hybrid = group[group["detector"] == "hybrid"]
        if hybrid.empty:
            continue
        h = hybrid.iloc[0]
        best = {}
        for prefix in ("baseline/", "hybrid/"):
            part = group[group["detector"].str.startswith(prefix)].dropna(subset=["event_f1"])
            best[prefix] = (
                f"{part.loc[part['event_f1'].idxmax(), 'detector'].removeprefix(prefix)} "
                f"({part['event_f1'].max():.2f})" if not part.empty else "n/a"
            )
        rows.append([
            name,
            " / ".join(_cell(h[c], "{:.2f}") for c in ("event_precision", "event_recall", "event_f1")),
            _cell(h["nab_score"], "{:.1f}"),
            _cell(h["alert_load"], "{:.2%}"),
            _cell(h["false_alarms_per_month"], "{:.2f}"),
            best["baseline/"],
            best["hybrid/"],
        ])
    if not rows:
        return []
    return ["## Summary (online)", "", *_markdown_table(header, rows), ""]


def render_markdown(result: pd.DataFrame) -> str:
    """The report: what was run, then a table per data set (and recall per incident kind where
    the data set names kinds)."""
    tol = result.attrs.get("tolerance", EVENT_TOLERANCE)
    quick = result.attrs.get("quick", False)
    lines = [
        "<!-- Generated by `python -m anomaly_pipelines.core.evaluation`; do not edit by hand. -->",
        "",
        "# Evaluation",
        "",
        "Every detector on every labelled data set, with the same configuration everywhere"
        + (" (**quick mode**: subsampled data, for development only)." if quick else "."),
        f"Regenerate with `python -m anomaly_pipelines.core.evaluation{' --quick' if quick else ''}`.",
        "",
        "**Every figure is online** unless a table says otherwise: each step is scored with data",
        "up to and including it only (models fitted on the first 80% of each series), exactly what",
        "the daily schedule reports that day (`detect(..., online=True)`). Baselines are causal too.",
        f"The `{RETROSPECTIVE}` row of each data set's second table scores in hindsight (window",
        "models may use windows reaching a few steps past a step); it flatters the detector and is",
        "shown only for comparison.",
        "",
        "- **Event P/R/F1**: consecutive labelled steps form an event, consecutive flagged steps a",
        "  detection; an event is found when any detection overlaps it, a detection overlapping no",
        "  event is a false alarm. Precision = found / (found + false alarms). "
        f"**F1 (±tol)** widens events by {tol} steps on each side.",
        "- **Point P/R**: step by step.",
        "- **NAB**: the NAB score, standard profile (A_TP=1, A_FP=0.11, A_FN=1, 15% probation,",
        "  scaled sigmoid), normalised so the null detector scores 0 and the perfect one 100.",
        "  Windows are NAB's (10% of the series split over its events, centred on each event).",
        "- **AUC-PR**: average precision of the detector's continuous score over all steps.",
        "- **Flagged**: share of steps flagged. **Alert load**: share of steps flagged on the series",
        "  without any labelled event. **FA / series-month**: false alarms per series and month.",
        "- **Rows**: `hybrid` is the project's detector; `hybrid/<signal>` each of its signals alone",
        "  (firing at its own threshold, with the same one-alarm-per-incident rule);",
        "  `window/<name>` another PyOD window detector alone, fitted and thresholded the way the",
        "  hybrid's IsolationForest and LOF are; `baseline/<name>` the causal baselines. The",
        "  notebook baseline (one Keras model per series) runs on the daily-cost data sets only.",
        "- **Time**: wall-clock seconds for the whole data set;",
        "  **CPU**: CPU seconds of the run (all threads), less sensitive to other programs on the",
        "  machine. The hybrid's components share the hybrid's run.",
        "",
    ]
    changes = result.attrs.get("config_changes", {})
    if changes:
        lines += ["Configuration changes from the defaults: "
                  + ", ".join(f"`{k}={v}`" for k, v in sorted(changes.items())), ""]
    else:
        lines += ["Configuration: the defaults of `PipelineConfig`.", ""]
    total = result.attrs.get("total_seconds")
    if total is not None:
        lines += [
            f"Total run time: {total / 60:.1f} min on {os.cpu_count()} CPU core(s) "
            f"({platform.machine()}, Python {platform.python_version()}).",
            "",
        ]
    lines += _summary(result)
    described = result.attrs.get("datasets", {})
    for name, everything in result.groupby("dataset", sort=False):
        group = everything[everything["detector"] != RETROSPECTIVE]
        hindsight = everything[everything["detector"].isin([RETROSPECTIVE, "hybrid"])]
        info = described.get(name, {})
        lines += [f"## {name}", ""]
        if info:
            freqs = ", ".join(f"{count} × {freq}" for freq, count in info["frequencies"].items())
            lines += [
                f"{info['series']} series ({freqs}), {info['steps']:,} steps, {info['events']} labelled "
                f"events covering {info['labelled_share']:.1%} of the steps; "
                f"{info['series_without_events']} series without any event.",
                "",
            ]
        rows = [[_cell(r[col], fmt) for _, col, fmt in _TABLE] for _, r in group.iterrows()]
        lines += _markdown_table([h.replace("tol", str(tol)) for h, _, _ in _TABLE], rows)
        if (hindsight["detector"] == RETROSPECTIVE).any():
            lines += ["", f"Online against retrospective ({name}; the retrospective row is not what users get):", ""]
            rows = [[_cell(r[col], fmt) for _, col, fmt in _TABLE] for _, r in hindsight.iterrows()]
            lines += _markdown_table([h.replace("tol", str(tol)) for h, _, _ in _TABLE], rows)
        notes = [f"- `{r['detector']}`: {r['note']}" for _, r in group.iterrows() if r["note"]]
        if notes:
            lines += ["", "Notes:", *notes]
        kind_cols = [c for c in group.columns if c.startswith("recall[") and group[c].notna().any()]
        if kind_cols:
            lines += ["", f"Event recall by incident kind ({name}):", ""]
            header = ["Detector", *[c[len("recall[") : -1] for c in kind_cols]]
            kind_rows = [[r["detector"], *[_cell(r[c], "{:.2f}") for c in kind_cols]] for _, r in group.iterrows()]
            lines += _markdown_table(header, kind_rows)
        if "recurring_flagged" in group.columns and group["recurring_flagged"].notna().any():
            steps = int(group["recurring_steps"].max())
            lines += [
                "",
                f"Normal recurring charges flagged ({name}): share of the {steps:,} unlabelled "
                "month-start days of customers billed a first-of-month charge that each detector flagged.",
                "",
            ]
            lines += _markdown_table(
                ["Detector", "Flagged"],
                [[r["detector"], _cell(r["recurring_flagged"], "{:.1%}")] for _, r in group.iterrows()],
            )
        lines.append("")
    for name, reason in result.attrs.get("skipped", {}).items():
        lines += [f"## {name}", "", f"Skipped: {reason}", ""]
    return "\n".join(lines).rstrip() + "\n"
