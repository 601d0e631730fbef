"""Speed benchmark: writes docs/performance.md (generated; do not edit by hand).

    .venv/bin/python benchmarks/performance.py            # full run
    .venv/bin/python benchmarks/performance.py --quick    # small sizes, a few minutes

In one run, on the same synthetic data:
1. training: the plain notebook loop (one Keras model per customer, ``evaluation.baselines.
   notebook_lstm``) against the project's training + scoring, in customers per second, with
   peak memory and event-F1 on the injected incidents (speed must not be bought with accuracy);
2. daily scoring of the newest day with champion models loaded from MLflow, at 1,000 and 10,000
   customers;
3. the whole batch pipeline through Dagster, in process, per asset;
4. the batch on the celery executor (``cohort_batch_job``) with one and with two workers
   against the machine's PostgreSQL and Redis and an MLflow server, started the way the deploy
   tests start them (``anomaly_pipelines_tests/deploy/services.py``): customers per second per
   worker, and how the rate grows from one worker to two.

Each measured phase runs in a fresh child process, so its peak memory (max RSS) is its own and
TensorFlow start-up is counted where a real run pays it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SEED = 2024


def _child(target: Callable[..., Any], args: tuple[Any, ...], queue: mp.Queue) -> None:
    started = time.perf_counter()
    result = target(*args)
    result["seconds_total"] = time.perf_counter() - started
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def in_child(target: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Run ``target(*args)`` in a fresh spawned process and return its result dict."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(target, args, queue))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"{target.__name__} failed in its child process (exit {process.exitcode})")
    return result


def synthetic_series(customers: int, days: int) -> tuple[pd.DataFrame, list[Any]]:
    from anomaly_pipelines.core.evaluation.datasets import label_usage
    from anomaly_pipelines.core.sources.synthetic import generate_usage

    data = generate_usage(customers=customers, days=days, seed=SEED)
    daily = data.usage.groupby(["customer_id", "timestamp"], as_index=False)["cost"].sum()
    return daily, label_usage(data.usage, data.incidents)


def event_f1(labelled: list[Any], flags: dict[str, np.ndarray]) -> float:
    from anomaly_pipelines.core.evaluation.metrics import EventCounts, event_counts

    total = EventCounts()
    for item in labelled:
        total = total + event_counts(item.frame["label"].to_numpy(), flags[item.name])
    return total.f1


# --- 1. training -------------------------------------------------------------------------------


def plain_loop(customers: int, days: int, subset: int, epochs: int) -> dict[str, Any]:
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.evaluation.baselines import notebook_lstm

    config = PipelineConfig().merged({"lstm": {"epochs": epochs}})
    _, labelled = synthetic_series(customers, days)
    labelled = labelled[:subset]
    started = time.perf_counter()
    flags = {item.name: notebook_lstm(item.frame["value"].to_numpy(), config).flags for item in labelled}
    seconds = time.perf_counter() - started
    return {"customers": len(labelled), "seconds": seconds, "event_f1": event_f1(labelled, flags)}


def project_training(customers: int, days: int, subset: int, epochs: int) -> dict[str, Any]:
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_series
    from anomaly_pipelines.core.series import regularize

    config = PipelineConfig().merged({"lstm": {"epochs": epochs}})
    daily, labelled = synthetic_series(customers, days)
    labelled = labelled[:subset]
    names = {item.name for item in labelled}
    daily = daily[daily["customer_id"].isin(names)]
    started = time.perf_counter()
    series = regularize(daily, config.preprocess)
    fitted = fit_detectors(series, config)
    trained = time.perf_counter()
    scores = score_series(series, fitted, config)
    seconds = time.perf_counter() - started
    flags = {}
    for item in labelled:
        mine = scores[scores["customer_id"] == item.name].set_index("timestamp")["is_anomaly"]
        flags[item.name] = mine.reindex(item.frame["timestamp"]).fillna(False).to_numpy(dtype=bool)
    return {
        "customers": len(labelled),
        "seconds": seconds,
        "train_seconds": trained - started,
        "event_f1": event_f1(labelled, flags),
    }


# --- 2. daily scoring ---------------------------------------------------------------------------


def prepare_champions(customers: int, days: int, store: str) -> dict[str, Any]:
    """Train (one epoch: the speed of scoring does not depend on model quality) and register."""
    from anomaly_pipelines.core.detector import fit_detectors
    from anomaly_pipelines.core.registry import ModelRegistry
    from anomaly_pipelines.core.series import regularize
    from anomaly_pipelines.core.sources.synthetic import generate_usage

    config = _store_config(store, {"lstm": {"epochs": 1}})
    data = generate_usage(customers=customers, days=days, seed=SEED, with_incidents=False)
    daily = data.usage.groupby(["customer_id", "timestamp"], as_index=False)["cost"].sum()
    daily.to_parquet(Path(store) / "usage.parquet")
    started = time.perf_counter()
    fitted = fit_detectors(regularize(daily, config.preprocess), config)
    trained = time.perf_counter()
    ModelRegistry(config.mlflow).log_training(fitted, run_name=f"benchmark-{customers}")
    return {"train_seconds": trained - started, "register_seconds": time.perf_counter() - trained}


def daily_scoring(store: str) -> dict[str, Any]:
    from anomaly_pipelines.core.detector import score_latest
    from anomaly_pipelines.core.registry import ModelRegistry
    from anomaly_pipelines.core.series import regularize

    config = _store_config(store, {})
    started = time.perf_counter()
    daily = pd.read_parquet(Path(store) / "usage.parquet")
    series = regularize(daily, config.preprocess)
    loaded = time.perf_counter()
    fitted = ModelRegistry(config.mlflow).load_champions([s.customer_id for s in series], config)
    resolved = time.perf_counter()
    scores = score_latest(series, fitted, config)
    done = time.perf_counter()
    return {
        "customers": len(series),
        "scored_rows": len(scores),
        "read_seconds": loaded - started,
        "load_models_seconds": resolved - loaded,
        "score_seconds": done - resolved,
        "seconds": done - started,
    }


def _store_config(store: str, overrides: dict[str, Any]) -> Any:
    from anomaly_pipelines.core.config import PipelineConfig

    return PipelineConfig().merged(
        {
            "mlflow": {
                "tracking_uri": f"sqlite:///{store}/mlflow.db",
                "artifact_location": f"{store}/artifacts",
            },
            **overrides,
        }
    )


# --- 3. the Dagster batch pipeline ----------------------------------------------------------------


def dagster_pipeline(customers: int, days: int, workdir: str) -> dict[str, Any]:
    """Exactly what ``anomaly-pipelines demo`` runs (``anomaly_pipelines.defs.demo.run_demo``:
    ingest, one batch run over every customer, export and report) in a throw-away Dagster
    instance and MLflow store under ``workdir``; each step's duration is read back from the
    Dagster event log, so the numbers are Dagster's own."""
    import dagster as dg

    from anomaly_pipelines.defs.demo import run_demo, step_seconds
    from anomaly_pipelines.defs.settings import write_isolated_config

    overrides = {"source": {"kind": "synthetic", "synthetic": {"customers": customers, "days": days}}}
    config_path = write_isolated_config(Path(workdir), overrides)
    home = Path(workdir) / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        summary = run_demo(str(config_path), instance=instance, log_level="WARNING")
        assets: dict[str, float] = {}
        for run_id in summary.run_ids.values():
            assets.update(step_seconds(instance, run_id))
    return {
        "customers": len(summary.customers),
        "days": days,
        "seconds": summary.seconds,
        "anomalies": summary.anomalies,
        "incidents": summary.incidents,
        "assets": assets,
    }


# --- 4. the batch on celery workers -------------------------------------------------------------


def celery_batch(
    customers: int, days: int, workers: int, cohort_size: int, workdir: str, pinned: bool
) -> dict[str, Any]:
    """``cohort_batch_job`` over ``customers`` in cohorts of ``cohort_size`` on the celery
    executor with ``workers`` workers of one pool process each (``pinned``: each on a core of
    its own): Dagster's instance on
    PostgreSQL, the broker and results on Redis, models registered through an MLflow server on
    PostgreSQL (configs/deploy/, as the deploy tests start them). Ingest runs in process first;
    the seconds are the run's own, from Dagster's run stats (the workers are started and have
    answered before the run is launched, so it is the batch, not the start-up, being timed)."""
    import contextlib

    import pytest

    from anomaly_pipelines.defs.demo import step_seconds
    from anomaly_pipelines.defs.settings import write_isolated_config
    from anomaly_pipelines_tests.deploy import services

    try:
        user = services.postgres_user()
        services.redis_available()
    except pytest.skip.Exception as exc:  # no PostgreSQL or Redis on this machine
        return {"skipped": str(exc)}
    root = Path(workdir)
    with contextlib.ExitStack() as stack:
        config = root / "deploy" / "pipeline.yaml"
        deploy = stack.enter_context(services.deployment(user, root, config))
        names = services.start_workers(deploy, workers, root, pinned)
        server = stack.enter_context(services.mlflow_server(user, root))
        write_isolated_config(
            config.parent,
            {
                "source": {"kind": "synthetic", "synthetic": {"customers": customers, "days": days, "seed": SEED}},
                "orchestration": {"executor": "celery", "celery_config": str(deploy.celery_config)},
                "mlflow": {"tracking_uri": server.uri, "artifact_location": ""},
            },
        )
        services.wait_for_workers(deploy, names)
        instance = stack.enter_context(deploy.instance())
        from anomaly_pipelines.definitions import build_definitions

        ingest = build_definitions(str(config)).resolve_job_def("ingest_job").execute_in_process(instance=instance)
        if not ingest.success:
            raise RuntimeError("ingest_job failed")
        log = root / "batch.log"
        run_config = {"ops": {"plan_cohorts": {"config": {"cohort_size": cohort_size}}}}
        code = services.launch(deploy, "cohort_batch_job", run_config, log).wait()
        if code != 0:
            raise RuntimeError(f"cohort_batch_job failed ({code}):\n{log.read_text()[-3000:]}")
        run = next(r for r in instance.get_runs() if r.job_name == "cohort_batch_job")
        stats = instance.get_run_stats(run.run_id)
        cohort_steps = [v for k, v in step_seconds(instance, run.run_id).items() if k.startswith("train_cohort")]
        return {
            "customers": customers,
            "workers": workers,
            "steps": len(cohort_steps),
            "seconds": stats.end_time - stats.start_time,
            "step_seconds": sum(cohort_steps),
        }


# --- report -------------------------------------------------------------------------------------


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {memory:.1f} GiB RAM, {platform.processor() or platform.machine()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--customers", type=int, default=200, help="customers for the project's training")
    parser.add_argument("--plain-customers", type=int, default=12, help="customers for the plain loop")
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--scoring-sizes", default="1000,10000")
    parser.add_argument("--pipeline-customers", type=int, default=200)
    parser.add_argument("--celery-customers", type=int, default=200, help="customers of the celery batch")
    parser.add_argument("--celery-cohort", type=int, default=50, help="customers per cohort step on celery")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: training,scoring,pipeline,celery")
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.customers, args.plain_customers, args.days = 20, 4, 365
        args.scoring_sizes, args.pipeline_customers = "200", 20
        args.celery_customers, args.celery_cohort = 12, 3
    skip = set(filter(None, args.skip.split(",")))
    epochs = 50
    lines = [
        "# Performance",
        "",
        "Generated by `.venv/bin/python benchmarks/performance.py"
        + (" --quick" if args.quick else "")
        + "`; do not edit by hand.",
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}.",
        "",
    ]

    if "training" not in skip:
        print(f"[training] plain loop on {args.plain_customers} customers ...", flush=True)
        plain = in_child(plain_loop, args.customers, args.days, args.plain_customers, epochs)
        print(f"  {plain}", flush=True)
        print(f"[training] project on the same {args.plain_customers} customers ...", flush=True)
        same = in_child(project_training, args.customers, args.days, args.plain_customers, epochs)
        print(f"  {same}", flush=True)
        print(f"[training] project on {args.customers} customers ...", flush=True)
        full = in_child(project_training, args.customers, args.days, args.customers, epochs)
        print(f"  {full}", flush=True)
        rate = {k: r["customers"] / r["seconds"] for k, r in (("plain", plain), ("same", same), ("full", full))}
        lines += [
            f"## 1. Training and scoring: plain per-customer loop vs project ({args.days} days per customer)",
            "",
            "Both train up to 50 epochs with early stopping (patience 5), batch 16, and score every day.",
            "With more than one group of 25 customers (`lstm.customers_per_step`) the project trains the",
            "groups in one worker process per core (`lstm.training_processes`); peak RSS is the calling",
            "process', without the workers' (each holds TensorFlow and its groups: about 1 GB).",
            "",
            "| run | customers | seconds | customers/s | speed-up | peak RSS (MiB) | event-F1 |",
            "|---|---:|---:|---:|---:|---:|---:|",
            _row("plain notebook loop", plain, rate["plain"], 1.0),
            _row("project, same customers", same, rate["same"], rate["same"] / rate["plain"]),
            _row(f"project, {args.customers} customers", full, rate["full"], rate["full"] / rate["plain"]),
            "",
            f"Event-F1 of the plain loop and the project on the same {args.plain_customers} customers: "
            f"{plain['event_f1']:.2f} vs {same['event_f1']:.2f}.",
            "",
        ]

    if "scoring" not in skip:
        lines += [
            "## 2. Daily scoring: newest day of every customer, champion models from MLflow",
            "",
            "| customers | train (1 epoch) s | register s | read usage s | load champions s | score s | total s | peak RSS (MiB) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for size in (int(x) for x in args.scoring_sizes.split(",")):
            with tempfile.TemporaryDirectory() as store:
                print(f"[scoring] preparing {size} champions ...", flush=True)
                prep = in_child(prepare_champions, size, args.days, store)
                print(f"  {prep}", flush=True)
                result = in_child(daily_scoring, store)
                print(f"  {result}", flush=True)
            lines.append(
                f"| {size} | {prep['train_seconds']:.1f} | {prep['register_seconds']:.1f} | "
                f"{result['read_seconds']:.1f} | {result['load_models_seconds']:.1f} | "
                f"{result['score_seconds']:.1f} | {result['seconds']:.1f} | {result['peak_rss_mib']:.0f} |"
            )
        lines.append("")

    if "pipeline" not in skip:
        with tempfile.TemporaryDirectory() as workdir:
            print(f"[pipeline] Dagster batch run, {args.pipeline_customers} customers ...", flush=True)
            result = in_child(dagster_pipeline, args.pipeline_customers, args.days, workdir)
        print(f"  {result}", flush=True)
        lines += [
            f"## 3. Batch pipeline through Dagster: {args.pipeline_customers} customers x {args.days} days, in process",
            "",
            f"End to end: {result['seconds']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB.",
            "",
            "| asset | seconds |",
            "|---|---:|",
            *[f"| {name} | {seconds:.1f} |" for name, seconds in result["assets"].items()],
            "",
        ]

    if "celery" not in skip:
        lines += [
            f"## 4. Batch on the celery executor: {args.celery_customers} customers x {args.days} days, "
            f"cohorts of {args.celery_cohort}",
            "",
            "`cohort_batch_job` on workers of one pool process each (`dagster-celery worker start`), Dagster on "
            "PostgreSQL, Redis as broker and result backend, models registered through `mlflow server` on "
            "PostgreSQL; all on this machine, so the workers share its cores with the services. Seconds are "
            "the run's own (Dagster's run start to end). A worker free to use every core trains a cohort "
            "step's LSTM groups side by side in one process per core (`lstm.training_processes`), so on "
            "this 2-core machine one such worker already keeps both cores busy; the growth from 1 to 2 "
            "workers is measured with each worker pinned to a core of its own, as one-core worker pods "
            "would run.",
            "",
        ]
        rates: dict[str, dict[str, Any]] = {}
        for label, workers, pinned in (("1, every core", 1, False), ("1, one core", 1, True), ("2, one core each", 2, True)):
            with tempfile.TemporaryDirectory() as workdir:
                print(f"[celery] {args.celery_customers} customers on {label} ...", flush=True)
                rates[label] = in_child(
                    celery_batch, args.celery_customers, args.days, workers, args.celery_cohort, workdir, pinned
                )
            print(f"  {rates[label]}", flush=True)
            if "skipped" in rates[label]:
                lines += [f"Not measured: {rates[label]['skipped']}", ""]
                break
        else:
            lines += [
                "| workers | cohort steps | run s | steps s (sum) | customers/s | customers/s per worker |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for label, result in rates.items():
                rate = result["customers"] / result["seconds"]
                lines.append(
                    f"| {label} | {result['steps']} | {result['seconds']:.1f} | {result['step_seconds']:.1f} | "
                    f"{rate:.2f} | {rate / result['workers']:.2f} |"
                )
            growth = rates["1, one core"]["seconds"] / rates["2, one core each"]["seconds"]
            lines += [
                "",
                f"From 1 to 2 one-core workers the batch runs {growth:.2f}x as fast (2.00x would be linear).",
                "",
            ]

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


def _row(name: str, result: dict[str, Any], rate: float, speedup: float) -> str:
    return (
        f"| {name} | {result['customers']} | {result['seconds']:.1f} | {rate:.2f} | {speedup:.1f}x | "
        f"{result['peak_rss_mib']:.0f} | {result['event_f1']:.2f} |"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
