"""``anomaly-pipelines``: the demo, the evaluation, and nothing a Dagster command already does.

``demo`` runs the main flow (ingest, then every customer in one batch run, then the export and
the report) against the project's local Dagster instance (``.dagster_home``) and MLflow store
(``.mlflow``), so the runs, assets and models show up afterwards in ``dg dev`` and ``mlflow ui``.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anomaly_pipelines.defs.demo import DemoSummary

DEFAULT_HOME = ".dagster_home"


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
    """``benchmarks/performance.py`` lives in the repository, not in the installed package: it is
    run as the script it is (in this interpreter), never imported, so the package does not depend
    on the repository around it."""
    root = (root or Path.cwd()).resolve()
    script = root / "benchmarks" / "performance.py"
    if not script.is_file():
        print(
            f"anomaly-pipelines benchmark: no benchmarks/performance.py under {root}; run it from "
            "the project root",
            file=sys.stderr,
        )
        return 2
    return subprocess.run([sys.executable, str(script), *argv], cwd=root, check=False).returncode


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
        from anomaly_pipelines.defs.demo import prepare_dagster_home, run_demo

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
