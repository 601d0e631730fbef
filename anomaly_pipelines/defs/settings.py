"""Where the pipeline configuration comes from, for the definitions and for each run.

Relative paths (the YAML file, ``data/``, ``.mlflow/``) resolve against the working directory,
which is the project root for ``dg dev``, ``dg launch`` and ``anomaly-pipelines demo``.
"""

from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path
from typing import Any

import yaml

from anomaly_pipelines.core.config import PipelineConfig, deep_merge, load_config
from anomaly_pipelines.core.files import atomic_write_text

CONFIG_ENV = "ANOMALY_PIPELINES_CONFIG"
DEFAULT_CONFIG_PATH = "configs/pipeline.yaml"


def default_config_path() -> str:
    """``$ANOMALY_PIPELINES_CONFIG`` if set, else ``configs/pipeline.yaml``."""
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def read_config(path: str | None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Defaults, then the YAML file, then overrides. A missing default file is not an error (the
    package works from any directory with built-in defaults); a missing explicit file is."""
    if path is None or path == "":
        return load_config(None, overrides)
    file = Path(path)
    if not file.is_file():
        if path == DEFAULT_CONFIG_PATH:
            return load_config(None, overrides)
        raise FileNotFoundError(
            f"pipeline config file {file.resolve()} does not exist (set by config_path or ${CONFIG_ENV})"
        )
    return load_config(file, overrides)


# -- the commented reference file (configs/pipeline.yaml) ------------------------------------------

REFERENCE_HEADER = """\
# Pipeline settings: every setting with its default value.
#
# Generated from anomaly_pipelines/core/config.py (the defaults and the comments there) by
#     .venv/bin/python -m anomaly_pipelines.defs.settings > configs/pipeline.yaml
# A test fails when this file and the code disagree, so regenerate it after changing a default.
#
# Who reads it: the code location, once, when it loads (another file with
# $ANOMALY_PIPELINES_CONFIG); every run gets that reading through the `pipeline_settings`
# resource, so edit this file, then reload the code location. `anomaly-pipelines demo` reads
# `--config-file`. Per-run overrides go in run config
# `resources.pipeline_settings.config.overrides` (nested like this file), e.g.
#     dg launch --job customer_job --partition customer-001 \\
#       --config-json '{"resources": {"pipeline_settings": {"config": {"overrides": {"lstm": {"epochs": 5}}}}}}'
# Overrides of the `orchestration` section have no effect per run: partitions, the schedule and
# the executor are part of the code location.
# Relative paths are relative to the working directory (the project root for dg / dagster dev).
"""


# Titles for sections whose class has no docstring.
SECTION_TITLES = {
    "windows": "Sliding windows: what the window models (LSTM, IsolationForest, LOF) see.",
    "training": "The chronological train/test split and the seed of every random source.",
    "lstm": "LSTM autoencoders: one per customer, trained in groups as stacked Keras models.",
    "isolation_forest": "IsolationForest over each customer's windows.",
    "local_outlier_factor": "LocalOutlierFactor (novelty mode) over each customer's windows.",
    "decrease_rule": "The notebook's day-over-day drop rule.",
    "mlflow": "MLflow store and registry; scoring loads models:/<model_prefix>.<customer>@<alias>.",
    "output": "Files: scores export, report and plots; stored asset values under <directory>/storage.",
}


def write_isolated_config(workdir: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A pipeline YAML under ``workdir`` that sends everything a run writes (stored assets,
    MLflow store, staging, explanation cache) there too, plus ``overrides``: for benchmarks and
    tests that must not touch the checkout's ``data/`` and ``.mlflow/``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "mlflow": {
            "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
            "artifact_location": str(workdir / "mlflow-artifacts"),
        },
        "output": {
            "directory": str(workdir / "outputs"),
            "staging_directory": str(workdir / "staging"),
        },
        "explain": {"cache_dir": str(workdir / "explain-cache")},
    }
    path = workdir / "pipeline.yaml"
    atomic_write_text(path, yaml.safe_dump(deep_merge(config, overrides or {})))
    return path


def reference_yaml() -> str:
    """The default configuration as commented YAML, comments taken from ``core/config.py``."""
    lines = [REFERENCE_HEADER.rstrip("\n"), ""]
    _emit(PipelineConfig(), 0, lines)
    return "\n".join(lines) + "\n"


def _emit(section: Any, indent: int, lines: list[str]) -> None:
    from pydantic import BaseModel

    pad = " " * indent
    comments = _field_comments(type(section))
    dumped = section.model_dump(mode="json")
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            if indent == 0:
                lines.append("")
            # Only the class's own docstring: an undocumented section must not inherit pydantic's.
            doc = inspect.cleandoc(
                type(value).__dict__.get("__doc__") or SECTION_TITLES.get(name, "")
            )
            for text in comments.get(name, []) or _wrap(" ".join(doc.split("\n\n")[0].split())):
                lines.append(f"{pad}# {text}".rstrip())
            lines.append(f"{pad}{name}:")
            _emit(value, indent + 2, lines)
            continue
        for text in comments.get(name, []):
            lines.append(f"{pad}# {text}".rstrip())
        text = yaml.safe_dump(
            {name: dumped[name]}, sort_keys=False, default_flow_style=False, width=100
        )
        lines.extend(pad + line for line in text.rstrip("\n").split("\n"))


def _wrap(text: str, width: int = 94) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) if text else []


def _field_comments(cls: type) -> dict[str, list[str]]:
    """Comment lines above each field and the comment at the end of its line, from the source."""
    import io
    import tokenize

    source = textwrap_dedent(inspect.getsource(cls))
    line_comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            line_comments[token.start[0]] = token.string.lstrip("#").strip()
    source_lines = source.splitlines()
    out: dict[str, list[str]] = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above = []
        line = node.lineno - 1
        while line >= 1 and source_lines[line - 1].strip().startswith("#"):
            above.insert(0, line_comments.get(line, ""))
            line -= 1
        trailing = line_comments.get(node.lineno)
        out[node.target.id] = above + ([trailing] if trailing else [])
    return out


def textwrap_dedent(text: str) -> str:
    import textwrap

    return textwrap.dedent(text)


if __name__ == "__main__":
    print(reference_yaml(), end="")
