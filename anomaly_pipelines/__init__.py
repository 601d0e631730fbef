"""anomaly_pipelines: explainable per-customer anomaly detection for cloud cost and usage.

Notebook use::

    from anomaly_pipelines import detect
    scores = detect(usage_frame)

The Dagster code location lives in ``anomaly_pipelines.definitions``.
"""

from typing import TYPE_CHECKING, Any

from anomaly_pipelines.core.config import PipelineConfig, load_config

if TYPE_CHECKING:
    from anomaly_pipelines.core.api import detect

__all__ = ["PipelineConfig", "detect", "load_config"]


def __getattr__(name: str) -> Any:
    # detect() pulls in scikit-learn; importing it on first use keeps loading the Dagster
    # definitions (which import this package) fast.
    if name == "detect":
        from anomaly_pipelines.core.api import detect

        return detect
    raise AttributeError(f"module 'anomaly_pipelines' has no attribute {name!r}")
