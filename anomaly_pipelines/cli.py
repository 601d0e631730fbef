"""``anomaly-pipelines``: the demo, the evaluation, and nothing a Dagster command already does.

``demo`` runs the main flow (ingest, then every customer in one batch run, then the export and
the report) against the project's local Dagster instance (``.dagster_home``) and MLflow store
(``.mlflow``), so the runs, assets and models show up afterwards in ``dg dev`` and ``mlflow ui``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomaly_pipelines.core.files import atomic_write, atomic_write_text

DEFAULT_HOME = ".dagster_home"
INSTANCE_TEMPLATE = Path("configs") / "dagster.yaml"
# Used when the project's configs/ folder is not there (e.g. running from another directory).
FALLBACK_INSTANCE_YAML = "telemetry:\n  enabled: false\n"


@dataclass
class DemoSummary:
    """What the demo did and where everything is; printed at the end, asserted on in tests."""

    customers: list[str]
    scored_rows: int
    anomalies: int
    incidents: int
    export_paths: list[Path]
    report_paths: list[Path]
    plots_dir: Path
    dagster_home: Path
    mlflow_uri: str
    seconds: float
    run_ids: dict[str, str] = field(default_factory=dict)


def prepare_dagster_home(home: Path, template: Path = INSTANCE_TEMPLATE) -> Path:
    """Create ``home`` with the project's instance settings and point ``DAGSTER_HOME`` at it.

    An existing ``dagster.yaml`` is kept: the user may have edited it.
    """
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists():
        if template.is_file():
            atomic_write(target, lambda tmp: shutil.copyfile(template, tmp))
        else:
            atomic_write_text(target, FALLBACK_INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def demo_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line shortcuts as config overrides (applied on top of the config file)."""
    overrides: dict[str, Any] = {}
    synthetic = {
        k: v for k, v in (("customers", args.customers), ("days", args.days)) if v is not None
    }
    if synthetic:
        overrides["source"] = {"synthetic": synthetic}
    if args.epochs is not None:
        overrides["lstm"] = {"epochs": args.epochs}
    return overrides


def run_demo(
    config_file: str = "",
    overrides: dict[str, Any] | None = None,
    instance: Any = None,
    log_level: str = "INFO",
) -> DemoSummary:
    """Ingest, register customers, score every customer in ONE batch run, export and report.

    ``instance`` defaults to ``DagsterInstance.get()`` (``$DAGSTER_HOME``).
    """
    import dagster as dg
    import pandas as pd
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    from anomaly_pipelines.definitions import build_definitions
    from anomaly_pipelines.defs.assets.reporting import export_paths
    from anomaly_pipelines.defs.partitions import CUSTOMERS
    from anomaly_pipelines.defs.settings import default_config_path, read_config

    if instance is None:
        with dg.DagsterInstance.get() as local:
            return run_demo(config_file, overrides, local, log_level)
    started = time.perf_counter()
    config = read_config(config_file or default_config_path(), overrides)
    defs = build_definitions(config_path=config_file, overrides=overrides)
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    run_ids: dict[str, str] = {}

    ingest = defs.resolve_job_def("ingest_job").execute_in_process(
        instance=instance, run_config=run_config
    )
    run_ids["ingest_job"] = ingest.run_id
    validated = ingest.output_for_node("validated_usage", "validated_usage")
    # Only this load's customers: partitions registered by earlier loads stay in the instance,
    # but a batch over them would only produce empty results.
    keys = sorted({_key(c) for c in validated["customer_id"].astype(str).unique()})
    registered = instance.get_dynamic_partitions(CUSTOMERS)
    ordered = [k for k in registered if k in set(keys)]
    if not ordered:
        raise RuntimeError("the configured source has no valid usage rows; nothing to score")
    first, last = ordered[0], ordered[-1]
    batch = defs.resolve_job_def("batch_job").execute_in_process(
        instance=instance,
        run_config=run_config,
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
    )
    run_ids["batch_job"] = batch.run_id

    parquet_path, csv_path = export_paths(config)
    scores = pd.read_parquet(parquet_path)
    report_dir = Path(config.output.directory) / "report"
    explanations = batch.output_for_node("anomaly_explanations")
    return DemoSummary(
        customers=sorted(scores["customer_id"].astype(str).unique()),
        scored_rows=len(scores),
        anomalies=int(scores["is_anomaly"].astype(bool).sum()),
        incidents=len(explanations),
        export_paths=[parquet_path, csv_path],
        report_paths=sorted(report_dir.glob("*")),
        plots_dir=Path(config.output.directory) / "plots",
        dagster_home=Path(instance.root_directory) if instance.root_directory else Path(),
        mlflow_uri=config.mlflow.tracking_uri,
        seconds=time.perf_counter() - started,
        run_ids=run_ids,
    )


def _key(customer_id: str) -> str:
    from anomaly_pipelines.core.ids import customer_key

    return customer_key(customer_id)


def format_summary(summary: DemoSummary) -> str:
    lines = [
        "",
        f"Done in {summary.seconds:.0f} s: {len(summary.customers)} customers, "
        f"{summary.scored_rows} scored days, {summary.anomalies} anomalous days in "
        f"{summary.incidents} incidents.",
        "",
        "Outputs:",
        *(f"  scores   {p}" for p in summary.export_paths),
        *(f"  report   {p}" for p in summary.report_paths),
        f"  plots    {summary.plots_dir}/",
        "",
        "Dagster UI (runs, assets, metadata, schedule):",
        f"  export DAGSTER_HOME={summary.dagster_home}",
        "  dg dev        # or: dagster dev -w workspace.yaml; then open http://localhost:3000",
        "",
        "MLflow UI (experiment, runs, registered models and their champion alias):",
        f"  mlflow ui --backend-store-uri {summary.mlflow_uri}   # then open http://localhost:5000",
        "",
    ]
    return "\n".join(lines)


def run_benchmark(argv: list[str], root: Path | None = None) -> int:
    """``benchmarks/performance.py`` lives in the repository, not in the installed package, so it
    is imported from the project root (its measuring children re-import it by that name)."""
    root = (root or Path.cwd()).resolve()
    if not (root / "benchmarks" / "performance.py").is_file():
        print(
            f"anomaly-pipelines benchmark: no benchmarks/performance.py under {root}; run it from "
            "the project root",
            file=sys.stderr,
        )
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.performance import main as benchmark_main

    return int(benchmark_main(argv) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomaly-pipelines", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="run the whole pipeline on the configured data (demo data by default)"
    )
    demo.add_argument(
        "--config-file", default="", help="pipeline YAML (default: configs/pipeline.yaml)"
    )
    demo.add_argument(
        "--dagster-home", type=Path, default=Path(DEFAULT_HOME), help="Dagster instance directory"
    )
    demo.add_argument("--customers", type=int, default=None, help="demo data: number of customers")
    demo.add_argument("--days", type=int, default=None, help="demo data: days of history")
    demo.add_argument("--epochs", type=int, default=None, help="LSTM training epochs")
    demo.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    evaluate = sub.add_parser(
        "evaluate", help="score the detector and baselines on labelled data", add_help=False
    )
    evaluate.add_argument("args", nargs=argparse.REMAINDER)
    benchmark = sub.add_parser(
        "benchmark",
        help="speed benchmark, writes docs/performance.md (project root)",
        add_help=False,
    )
    benchmark.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["evaluate"]:
        from anomaly_pipelines.core.evaluation.__main__ import main as evaluate_main

        return int(evaluate_main(argv[1:]) or 0)
    if argv[:1] == ["benchmark"]:
        return run_benchmark(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "demo":
        home = prepare_dagster_home(args.dagster_home)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        summary = run_demo(args.config_file, demo_overrides(args), log_level=args.log_level)
        summary.dagster_home = home
        print(format_summary(summary))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
