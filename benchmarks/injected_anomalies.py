"""Shapes no labelled data set has: one anomaly injected into clean generated series, online.

    .venv/bin/python benchmarks/injected_anomalies.py            # ~5 min on 2 cores
    .venv/bin/python benchmarks/injected_anomalies.py --seeds 3  # quicker, coarser

The labelled sets say how the detector does on the shapes they hold; the project is also
judged on series it has never seen. So this generates clean sub-daily metrics (a daily wave,
noise from 3% to 15%, with or without quieter weekends), injects one anomaly of each kind into
the test part of each (a spike, a level shift up or down, a metric stuck at one value, a
dropout to zero, a burst of variance, a day without its cycle), and scores them all with
``detect(..., online=True)``, as the daily run would. It prints, per frequency and kind, how
many injected anomalies are found (a reported alarm within a day of the start) and how many
false alarms the same series raise elsewhere, and the false alarms of the clean series alone.
Nothing here is tuned on: it is a check for blind spots, not a score to maximise.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from anomaly_pipelines import detect

KINDS = ("clean", "spike", "shift_up", "shift_down", "stuck", "zero", "variance", "no_cycle")
# (step, days of history): two weeks of 5-minute steps, as NAB's series; six weeks of hours.
FREQUENCIES = (("5min", 14), ("1h", 42))


def _steps_per_day(step: str) -> int:
    return int(pd.Timedelta(days=1) / pd.Timedelta(step))


def _series(kind: str, seed: int, step: str, days: int, weekend: float) -> tuple[pd.DataFrame, int]:
    """One generated series (``weekend``: the weekend's level relative to weekdays) and the
    position its anomaly starts at (-1 for clean series)."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2024-03-04", periods=int(pd.Timedelta(days=days) / pd.Timedelta(step)), freq=step)
    hour = (t.hour + t.minute / 60).to_numpy()
    level = 100 * (1 + 0.5 * np.sin((hour - 9) / 24 * 2 * np.pi))
    level = level * np.where(t.day_of_week.to_numpy() >= 5, weekend, 1.0)
    noise = 0.03 + 0.04 * (seed % 4)
    v = level * rng.normal(1, noise, len(t))
    per_day = _steps_per_day(step)
    # In the test part (the last fifth), on a weekday morning.
    start = int(len(t) * 0.85) // per_day * per_day + per_day * 5 // 12 + seed
    while t[start].day_of_week >= 5:
        start += per_day
    hours = max(per_day // 24, 1)
    if kind == "clean":
        start = -1
    elif kind == "spike":
        v[start] *= 3.0
    elif kind == "shift_up":
        v[start:] *= 1.4
    elif kind == "shift_down":
        v[start:] *= 0.6
    elif kind == "stuck":
        v[start : start + 6 * hours] = v[start - 1]
    elif kind == "zero":
        v[start : start + 2 * hours] = 0.0
    elif kind == "variance":
        v[start : start + 6 * hours] = level[start : start + 6 * hours] * rng.normal(1, 4 * noise, 6 * hours)
    elif kind == "no_cycle":
        v[start : start + per_day] = np.mean(level) * rng.normal(1, noise, per_day)
    return pd.DataFrame({"timestamp": t, "cost": v}), start


def run(seeds: int) -> pd.DataFrame:
    frames, starts = [], {}
    for step, days in FREQUENCIES:
        for weekend in (1.0, 0.5):
            for kind in KINDS:
                for seed in range(seeds):
                    frame, start = _series(kind, seed, step, days, weekend)
                    cid = f"{step}|{weekend}|{kind}|{seed}"
                    frames.append(frame.assign(customer_id=cid))
                    starts[cid] = start
    scores = detect(pd.concat(frames, ignore_index=True), online=True)
    rows = []
    for cid, part in scores.groupby("customer_id", sort=False):
        step, weekend, kind, _ = cid.split("|")
        flags = part["is_anomaly"].to_numpy(dtype=bool)
        alarms = np.flatnonzero(flags & ~np.r_[False, flags[:-1]])
        start = starts[cid]
        per_day = _steps_per_day(step)
        near = (alarms >= start) & (alarms <= start + per_day) if start >= 0 else np.zeros(len(alarms), bool)
        rows.append(
            {
                "step": step,
                "weekends": "half" if float(weekend) < 1 else "as weekdays",
                "kind": kind,
                "found": bool(near.any()),
                "false_alarms": int((~near).sum()),
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="series per frequency, weekend and kind")
    args = parser.parse_args()
    started = time.perf_counter()
    result = run(args.seeds)
    table = result.groupby(["step", "weekends", "kind"], sort=False).agg(
        series=("found", "size"), found=("found", "sum"), false_alarms=("false_alarms", "sum")
    )
    table.loc[table.index.get_level_values("kind") == "clean", "found"] = np.nan
    print(table.to_string())
    print(f"\n{len(result)} series scored online in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
