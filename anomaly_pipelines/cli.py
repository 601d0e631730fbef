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
    feedback = sub.add_parser(
        "feedback", help="say whether an incident was real: accurate, not-anomaly or planned"
    )
    feedback.add_argument("incident_id", help="the id printed in the alert and the report")
    feedback.add_argument("label", choices=["accurate", "not-anomaly", "planned"])
    feedback.add_argument("--note", default="", help="free text kept with the judgement")
    feedback.add_argument("--author", default=None, help="who says so (default: $ANOMALY_PIPELINES_USER, else the login name)")
    feedback.add_argument("--config-file", default="", help=CONFIG_HELP)
    alerts = sub.add_parser("alerts", help="alert subscriptions: send a test, list what went out")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True)
    test = alerts_sub.add_parser("test", help="send a sample message to one subscription now")
    test.add_argument("--subscription", required=True, help="name in alerts.subscriptions")
    test.add_argument("--config-file", default="", help=CONFIG_HELP)
    listing = alerts_sub.add_parser("list", help="alerts recorded: sent, failed, suppressed...")
    listing.add_argument("--status", default=None, help="only this status (sent, failed, ...)")
    listing.add_argument("--subscription", default=None)
    listing.add_argument("--limit", type=int, default=50, help="newest N rows (0: all)")
    listing.add_argument("--config-file", default="", help=CONFIG_HELP)
    stats = alerts_sub.add_parser(
        "stats", help="totals: incidents, alerts by kind and status, feedback, precision by week"
    )
    stats.add_argument("--config-file", default="", help=CONFIG_HELP)
    models = sub.add_parser("models", help="the MLflow champion alias of a customer")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    rollback = models_sub.add_parser(
        "rollback", help="move the champion alias back to the previous champion (or --to-version)"
    )
    rollback.add_argument("customer", help="customer id as in the data")
    rollback.add_argument("--to-version", default=None, help="this version instead")
    rollback.add_argument("--config-file", default="", help=CONFIG_HELP)
    return parser


CONFIG_HELP = "pipeline YAML (default: $ANOMALY_PIPELINES_CONFIG or configs/pipeline.yaml)"


def _load_config(config_file: str) -> Any:
    from anomaly_pipelines.defs.settings import default_config_path, read_config

    return read_config(config_file or default_config_path())


def run_feedback(args: argparse.Namespace) -> int:
    from anomaly_pipelines.core.alerts import OperationsStore
    from anomaly_pipelines.core.feedback import record_feedback

    store = OperationsStore.for_config(_load_config(args.config_file))
    try:
        row = record_feedback(store, args.incident_id, args.label, args.note, author=args.author)
    except KeyError as exc:
        print(f"anomaly-pipelines feedback: {exc.args[0]}", file=sys.stderr)
        return 1
    print(
        f"recorded {row['label']} for {row['incident_id']} (customer {row['customer_id']}) "
        f"by {row['author']} at {row['created_at']}"
    )
    return 0


def run_alerts(args: argparse.Namespace) -> int:
    from anomaly_pipelines.core.alerts import OperationsStore, send_test

    config = _load_config(args.config_file)
    store = OperationsStore.for_config(config)
    if args.alerts_command == "test":
        try:
            result = send_test(config, args.subscription, store)
        except KeyError as exc:
            print(f"anomaly-pipelines alerts test: {exc.args[0]}", file=sys.stderr)
            return 2
        if result.ok:
            print(f"sent a test message to {args.subscription} ({result.attempts} attempt(s))")
            return 0
        print(
            f"could not deliver to {args.subscription} after {result.attempts} attempt(s): "
            f"{result.error}",
            file=sys.stderr,
        )
        return 1
    if args.alerts_command == "stats":
        print(format_alert_stats(store))
        return 0
    rows = store.deliveries(
        subscription=args.subscription, statuses=(args.status,) if args.status else None
    )
    if args.limit:
        rows = rows.tail(args.limit)
    if rows.empty:
        print("no alerts recorded")
        return 0
    for _, row in rows.iterrows():
        error = f"  [{row['last_error']}]" if row["last_error"] else ""
        print(
            f"{row['as_of']}  {row['status']:<10} {row['subscription']:<16} {row['kind']:<12} "
            f"{row['incident_id'] or row['customer_id'] or '-'}  {row['subject']}{error}"
        )
    return 0


def format_alert_stats(store: Any) -> str:
    """What the loop did so far, from the operations store."""
    from anomaly_pipelines.core.feedback import latest_labels, precision_over_time

    incidents = store.incidents()
    deliveries = store.deliveries()
    feedback = latest_labels(store.feedback())
    lines = [f"incidents seen: {len(incidents)}"]
    if len(deliveries):
        table = deliveries.groupby(["kind", "status"]).size().unstack(fill_value=0)
        lines += ["notices by kind and status:", table.to_string()]
    else:
        lines.append("no notices recorded")
    if len(feedback):
        lines.append(
            "feedback (latest per incident): "
            + ", ".join(f"{k} {v}" for k, v in feedback["label"].value_counts().sort_index().items())
        )
        precision = precision_over_time(store)
        lines += ["precision from feedback (accurate / marked) by week of incident start:"]
        lines += [
            f"  {r.period}: {r.accurate}/{r.marked} = {r.precision:.0%}"
            for r in precision.itertuples()
        ]
    else:
        lines.append("no feedback yet")
    return "\n".join(lines)


def run_models(args: argparse.Namespace) -> int:
    from anomaly_pipelines.core.promotion import rollback
    from anomaly_pipelines.core.registry import ModelRegistry

    registry = ModelRegistry(_load_config(args.config_file).mlflow)
    try:
        old, new = rollback(registry, args.customer, args.to_version)
    except ValueError as exc:
        print(f"anomaly-pipelines models rollback: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.customer}: {registry.config.alias} moved from "
        f"{'v' + old if old else '(no champion)'} to v{new}"
    )
    return 0


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
    if args.command == "feedback":
        return run_feedback(args)
    if args.command == "alerts":
        return run_alerts(args)
    if args.command == "models":
        return run_models(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
