"""Try decision settings on every evaluation data set in seconds, not an hour.

    .venv/bin/python benchmarks/decision_tuning.py fit                 # once: ~20 min on 2 cores
    .venv/bin/python benchmarks/decision_tuning.py try hybrid.tail_quantile=0.99 [more=...]
    .venv/bin/python benchmarks/decision_tuning.py try --relearn hybrid.threshold_reach=2.5

Fitting is the hour of ``python -m anomaly_pipelines.core.evaluation``; deciding is seconds. So
``fit`` trains the hybrid once per data set with the default configuration and keeps, per data
set, the regularised series, the calibrations and the raw signals of every step (point signals
and each window model's score of each window: ``detector._window_scored``) in
``~/.cache/anomaly_pipelines/tuning``. ``try`` then scores those signals online under the given
settings, exactly as ``score_series(..., online=True)`` does, and prints event P / R / F1, NAB
and false alarms of the hybrid per data set against the defaults, marking a data set WORSE when
its event-F1 or NAB score went down, or (without labelled events) its false alarms went up: the
rule for keeping a change is that no data set gets worse.

Only settings read when scoring can be tried this way (``hybrid.decision_threshold``,
``hybrid.*_alone``, ``hybrid.quiet_*``, ``decrease_rule.*`` ...). ``--relearn`` also re-learns each
series' thresholds from its cached training signals, for the threshold settings
(``hybrid.tail_quantile``, ``alarm_budget_per_month``, ``component_quantile``, ...). Settings
that change the expectation or the models (``clean_history_*``, ``lstm.*``, windows) need a new
``fit``. With the defaults, ``try`` reproduces the hybrid rows of ``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from anomaly_pipelines.core import detector, scoring
from anomaly_pipelines.core.api import input_rows, usage_series
from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.evaluation import runner
from anomaly_pipelines.core.evaluation.datasets import LabelledSeries, load_datasets

FIGURES = ("event_precision", "event_recall", "event_f1", "nab_score", "false_alarms")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "anomaly_pipelines" / "tuning"


def _path(name: str) -> Path:
    return cache_dir() / f"{name.replace('/', '__')}.pkl"


def fit(datasets: list[str]) -> None:
    """Fit the hybrid on each data set (default configuration) and cache what scoring needs.
    The pickles are this machine's own cache, written and read by this script only."""
    config = PipelineConfig()
    cache_dir().mkdir(parents=True, exist_ok=True)
    for name in datasets:
        for subset, series in load_datasets(name).items():
            started = time.perf_counter()
            frame = pd.concat(
                [
                    pd.DataFrame(
                        {
                            "customer_id": s.name,
                            "timestamp": s.frame["timestamp"],
                            "cost": s.frame["value"],
                        }
                    )
                    for s in series
                ],
                ignore_index=True,
            )
            regular = usage_series(frame, config)
            fitted = detector.fit_detectors(regular, config)
            known = [s for s in regular if s.customer_id in fitted.calibrations]
            raw = detector._window_scored(known, fitted, config)
            # The window models themselves are not needed any more: their scores are in ``raw``.
            light = detector.FittedDetectors(settings=fitted.settings)
            light.calibrations, light.skipped = fitted.calibrations, fitted.skipped
            state = {"series": series, "regular": regular, "fitted": light, "raw": raw}
            _path(subset).write_bytes(pickle.dumps(state))
            print(f"{subset}: fitted in {time.perf_counter() - started:.0f} s", flush=True)


def cached() -> list[str]:
    return sorted(p.stem.replace("__", "/") for p in cache_dir().glob("*.pkl"))


def score(state: dict[str, Any], config: PipelineConfig, relearn: bool = False) -> dict[str, Any]:
    """The hybrid's evaluation row of one data set under ``config``, from the cached signals."""
    fitted = state["fitted"]
    raw: dict[str, dict[str, Any]] = state["raw"]
    if relearn:
        fitted = copy.deepcopy(fitted)
        by_id = {s.customer_id: s for s in state["regular"]}
        for cid, signals in raw.items():
            cal = fitted.calibrations[cid]
            cal.thresholds = detector._learn_thresholds(
                cal,
                detector._per_step(signals, True),
                by_id[cid],
                config,
                ("residual", *scoring.MODEL_SIGNALS),
            )
    known = [s for s in state["regular"] if s.customer_id in fitted.calibrations]
    items = [(s, 0, detector._per_step(raw[s.customer_id], True)) for s in known]
    daily = [(s, 0, sig) for s, _, sig in items if s.frequency >= pd.Timedelta(days=1)]
    if any("usual_z" not in sig for _, _, sig in daily):
        raise SystemExit("the cached signals predate the detector's usual_z signal: run `fit` again")
    moves = detector.PortfolioMoves.count([(s, 0, sig["usual_z"]) for s, _, sig in daily], fitted, config)
    columns = detector._score_columns(items, fitted, config, True, moves)
    frame = detector._frame(
        [columns.get(s.customer_id) or detector._unscored(s, fitted) for s in state["regular"]]
    )
    series: list[LabelledSeries] = state["series"]
    detection = runner.Detection("hybrid", {}, {}, None)
    by_series = runner._rows_by_series(series, input_rows(frame))
    for s in series:
        rows, found = by_series[s.name]
        detection.flags[s.name] = runner._place(
            rows["is_anomaly"].to_numpy(dtype=bool), found, False
        )
        detection.scores[s.name] = runner._place(
            rows["hybrid_score"].to_numpy(dtype=float), found, np.nan
        )
    return runner.score_detection(series, detection)


def _settings(pairs: list[str]) -> dict[str, Any]:
    """``section.key=value`` pairs as a nested override (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        section, _, name = key.partition(".")
        if not (equals and name):
            raise SystemExit(f"expected section.key=value, got {pair!r}")
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def _line(row: dict[str, Any]) -> str:
    return "P {:.3f}  R {:.3f}  F1 {:.3f}  NAB {:6.1f}  FA {:4d}".format(*(row[f] for f in FIGURES))


def try_settings(pairs: list[str], relearn: bool) -> int:
    names = cached()
    if not names:
        print(f"nothing cached in {cache_dir()}; run `fit` first", file=sys.stderr)
        return 1
    base, variant = PipelineConfig(), PipelineConfig().merged(_settings(pairs))
    worse = 0
    for name in names:
        state = pickle.loads(_path(name).read_bytes())
        before, after = score(state, base, relearn), score(state, variant, relearn)
        lower = any(
            after[f] < before[f] - 1e-9 for f in ("event_f1", "nab_score") if np.isfinite(before[f])
        )
        # Without any labelled event there is no F1 or NAB: every alarm is false.
        lower |= before["events"] == 0 and after["false_alarms"] > before["false_alarms"]
        higher = any(
            after[f] > before[f] + 1e-9 for f in ("event_f1", "nab_score") if np.isfinite(before[f])
        )
        worse += lower
        mark = "  WORSE" if lower else ("  better" if higher else "")
        print(f"{name:34s} {_line(before)}  ->  {_line(after)}{mark}")
    print(f"{worse} data set(s) worse")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit_parser = sub.add_parser("fit", help="fit every data set once and cache its signals")
    fit_parser.add_argument("--datasets", default=",".join(runner.DEFAULT_DATASETS))
    try_parser = sub.add_parser("try", help="score the cached signals under other settings")
    try_parser.add_argument("settings", nargs="*", help="section.key=value (YAML values)")
    try_parser.add_argument("--relearn", action="store_true", help="re-learn thresholds too")
    args = parser.parse_args(argv)
    if args.command == "fit":
        fit([d.strip() for d in args.datasets.split(",") if d.strip()])
        return 0
    return try_settings(args.settings, args.relearn)


if __name__ == "__main__":
    sys.exit(main())
