"""anomaly_pipelines: explainable per-customer anomaly detection for cloud cost and usage.

Notebook use::

    from anomaly_pipelines import detect
    scores = detect(usage_frame)

The whole pipeline through Dagster, from Python (what ``anomaly-pipelines demo`` runs)::

    from anomaly_pipelines import run_demo
    summary = run_demo("configs/pipeline.yaml", instance=dagster_instance)

The Dagster code location lives in ``anomaly_pipelines.definitions``.
"""

from typing import TYPE_CHECKING, Any

from anomaly_pipelines.core.config import PipelineConfig, load_config

if TYPE_CHECKING:
    from anomaly_pipelines.core.api import detect
    from anomaly_pipelines.defs.demo import run_demo

__all__ = ["PipelineConfig", "detect", "load_config", "run_demo"]


def __getattr__(name: str) -> Any:
    # detect() pulls in scikit-learn and run_demo() Dagster; importing them on first use keeps loading the Dagster
    # definitions (which import this package) fast.
    if name == "detect":
        from anomaly_pipelines.core.api import detect

        return detect
    if name == "run_demo":
        from anomaly_pipelines.defs.demo import run_demo

        return run_demo
    raise AttributeError(f"module 'anomaly_pipelines' has no attribute {name!r}")
