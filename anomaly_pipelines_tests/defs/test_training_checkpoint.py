"""A registration that fails after training must not throw the training away.

The real ``trained_models`` asset runs in a real Dagster instance against a real MLflow store
in which the customer's registered-model name already belongs to someone else, so the
registration fails after the training finished. Once the conflict is gone, the retry
registers the saved training instead of training again, and the saved copy is deleted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from anomaly_pipelines.core.api import coerce
from anomaly_pipelines.core.registry import ModelRegistry
from anomaly_pipelines.core.series import regularize, series_to_frame
from anomaly_pipelines.defs.assets.training import trained_models, training_checkpoint_dir
from anomaly_pipelines.defs.partitions import CUSTOMERS, customer_partitions
from anomaly_pipelines.defs.resources import MlflowRegistryResource, PipelineSettings
from anomaly_pipelines_tests.defs.conftest import write_config

KEY = "customer-a"


def _series() -> Any:
    rng = np.random.default_rng(4)
    days = pd.date_range("2024-01-01", periods=80, freq="D", tz="UTC")
    usage = pd.DataFrame({"customer_id": KEY, "timestamp": days, "cost": 100 + rng.normal(0, 3, 80)})
    (series,) = regularize(coerce(usage))
    return series


@dg.asset(partitions_def=customer_partitions, name="customer_series")
def series_stub() -> pd.DataFrame:
    return series_to_frame([_series()])


def test_failed_registration_keeps_the_training_for_the_retry(tmp_path: Path) -> None:
    settings = PipelineSettings.from_file(str(write_config(tmp_path, {"lstm": {"epochs": 1}})))
    config = settings.config
    registry = ModelRegistry(config.mlflow)
    registry.experiment_id()
    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)
    name = registry.registered_name(KEY)
    client.create_registered_model(name, tags={"customer_id": "somebody-else"})
    resources = {"pipeline_settings": settings, "mlflow_registry": MlflowRegistryResource()}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(CUSTOMERS, [KEY])
        first = dg.materialize(
            [series_stub, trained_models], partition_key=KEY, instance=instance,
            resources=resources, raise_on_error=False,
        )
        assert not first.success
        saved = list(training_checkpoint_dir(config).glob("training-*.pkl"))
        assert len(saved) == 1  # the finished training survived the failed registration

        client.delete_registered_model(name)  # the conflict is resolved
        second = dg.materialize(
            [series_stub, trained_models], partition_key=KEY, instance=instance,
            resources=resources,
            selection=[dg.AssetKey("lstm_autoencoder"), dg.AssetKey("isolation_forest"),
                       dg.AssetKey("local_outlier_factor")],
        )
        assert second.success
        messages = [
            event.user_message for event in instance.all_logs(second.run_id) if event.user_message
        ]
        assert any("not training again" in m for m in messages), messages
    assert registry.versions(KEY) == ["1"]
    assert registry.champion_version(KEY) == "1"
    assert not list(training_checkpoint_dir(config).glob("*.pkl"))  # deleted once registered
