"""Measure the detector against labelled data and baselines (``python -m
anomaly_pipelines.core.evaluation``); see ``runner.run_evaluation``."""

from anomaly_pipelines.core.evaluation.datasets import LabelledSeries, load_dataset
from anomaly_pipelines.core.evaluation.runner import evaluate, render_markdown, run_evaluation

__all__ = ["LabelledSeries", "evaluate", "load_dataset", "render_markdown", "run_evaluation"]
