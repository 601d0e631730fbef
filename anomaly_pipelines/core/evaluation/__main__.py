"""``python -m anomaly_pipelines.core.evaluation [--quick] [--datasets a,b] [--out path]``.

Writes the generated report (``docs/evaluation.md`` by default) and prints it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anomaly_pipelines.core.config import load_config
from anomaly_pipelines.core.evaluation.cache import default_cache_dir
from anomaly_pipelines.core.evaluation.datasets import DATASETS, project_root
from anomaly_pipelines.core.evaluation.runner import (
    DEFAULT_DATASETS,
    DETECTORS,
    EVENT_TOLERANCE,
    run_evaluation,
)


def _names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown or text!r}; choose from {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m anomaly_pipelines.core.evaluation",
        description="Run the detector and the baselines on labelled data and write the report.",
    )
    parser.add_argument("--quick", action="store_true", help="subsample the data (development runs)")
    parser.add_argument(
        "--datasets",
        type=lambda t: _names(t, DATASETS, "data set(s)"),
        default=list(DEFAULT_DATASETS),
        help=f"comma-separated, from {', '.join(DATASETS)} (default: {','.join(DEFAULT_DATASETS)})",
    )
    parser.add_argument(
        "--detectors",
        type=lambda t: _names(t, DETECTORS, "detector(s)"),
        default=None,
        help=f"comma-separated, from {', '.join(DETECTORS)} (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=project_root() / "docs" / "evaluation.md",
        help="where to write the Markdown report (default: docs/evaluation.md)",
    )
    parser.add_argument("--config", type=Path, default=None, help="pipeline YAML (default: built-in defaults)")
    parser.add_argument("--nab-root", type=Path, default=None, help="a NAB checkout, for --datasets nab")
    parser.add_argument("--data-root", type=Path, default=None, help="shared data folder (default: ../shared/data)")
    parser.add_argument("--tolerance", type=int, default=EVENT_TOLERANCE, help="event tolerance in steps")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="reuse detector outputs while data, config and code are unchanged (default: %(default)s)",
    )
    parser.add_argument("--no-cache", action="store_true", help="run every detector afresh")
    args = parser.parse_args(argv)
    run_evaluation(
        args.datasets,
        args.quick,
        load_config(args.config) if args.config else None,
        args.detectors,
        tolerance=args.tolerance,
        data_root=args.data_root,
        nab_root=args.nab_root,
        out=args.out,
        cache_dir=None if args.no_cache else args.cache_dir,
    )
    print(f"report written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
