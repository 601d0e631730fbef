"""MLflow 3 opens an experiment it cannot classify in its GenAI view (traces, tokens); the
project's experiment must say it is model training, whether the registry creates it or finds
one created by an earlier version (or by hand) without the tag."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from anomaly_pipelines.core.config import MlflowConfig
from anomaly_pipelines.core.registry import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, ModelRegistry


def _config(tmp_path: Path) -> MlflowConfig:
    return MlflowConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "artifacts"),
    )


def test_a_new_experiment_opens_on_model_training(tmp_path: Path) -> None:
    registry = ModelRegistry(_config(tmp_path))
    experiment_id = registry.experiment_id()
    tags = MlflowClient(registry.tracking_uri).get_experiment(experiment_id).tags
    assert EXPERIMENT_KIND == "custom_model_development"
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_an_existing_untagged_experiment_is_tagged(tmp_path: Path) -> None:
    config = _config(tmp_path)
    client = MlflowClient(config.tracking_uri)  # as MLflow itself or an older version would
    created = client.create_experiment(
        config.experiment, artifact_location=str(tmp_path / "artifacts")
    )
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(created).tags
    assert ModelRegistry(config).experiment_id() == created
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
