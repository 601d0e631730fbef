"""The package stands alone and keeps its layers: read from the source, so a violation anywhere
fails here even if no other test happens to import the offending module.

- ``core`` never imports Dagster (it is the library ``detect()`` and notebooks use);
- neither ``core`` nor ``defs`` imports the command line or the repository's ``benchmarks/``
  (the command line and the benchmark call into the package, never the other way round);
- nothing imports Dagster's private modules (``dagster._...``), which change without notice;
- the package never edits ``sys.path``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "anomaly_pipelines"


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py"))


def _offenders(files: list[Path], bad: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in _imports(path)
        if any(name == b or name.startswith(b + ".") for b in bad)
    ]


def test_core_never_imports_dagster() -> None:
    assert _offenders(_files(PACKAGE / "core"), ("dagster", "dagster_dg_core")) == []


@pytest.mark.parametrize("layer", ["core", "defs"])
def test_core_and_defs_never_import_the_cli_or_the_benchmarks(layer: str) -> None:
    bad = ("anomaly_pipelines.cli", "benchmarks")
    assert _offenders(_files(PACKAGE / layer), bad) == []


def test_no_private_dagster_imports_anywhere() -> None:
    files = _files(PACKAGE, ROOT / "anomaly_pipelines_tests", ROOT / "benchmarks")
    private = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in _imports(path)
        if name.startswith("dagster._") or ".dagster._" in name
    ]
    assert private == []


def test_the_package_never_edits_sys_path() -> None:
    assert [str(p.relative_to(ROOT)) for p in _files(PACKAGE) if "sys.path" in p.read_text()] == []
