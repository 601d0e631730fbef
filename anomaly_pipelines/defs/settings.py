"""Where the pipeline configuration comes from, for the definitions and for each run.

Relative paths (the YAML file, ``data/``, ``.mlflow/``) resolve against the working directory,
which is the project root for ``dg dev``, ``dg launch`` and ``anomaly-pipelines demo``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from anomaly_pipelines.core.config import PipelineConfig, load_config

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


def definition_config() -> PipelineConfig:
    """The configuration as the code location sees it when it loads: only its ``orchestration``
    section is used at that time (partitions, schedule, executor)."""
    return read_config(default_config_path())
