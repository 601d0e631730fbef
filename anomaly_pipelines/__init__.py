"""anomaly_pipelines: explainable per-customer anomaly detection for cloud cost and usage.

Notebook use::

    from anomaly_pipelines import detect
    scores = detect(usage_frame)

The Dagster code location lives in ``anomaly_pipelines.definitions``.
"""

from anomaly_pipelines.core.api import detect
from anomaly_pipelines.core.config import PipelineConfig, load_config

__all__ = ["PipelineConfig", "detect", "load_config"]
