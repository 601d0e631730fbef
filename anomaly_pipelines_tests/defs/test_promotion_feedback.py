"""The champion/challenger gate judges a confirmed incident as it happened.

Training replaces the days of an incident marked ``accurate`` by the customer's usual level, so
the models do not learn it as normal. The gate charges a missed confirmed day double: scored on
those replaced days, every model would "miss" the incident and the cost could not tell a model
that catches it from one that does not. Real ``trained_models`` runs, a real MLflow store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from anomaly_pipelines.core.alerts import OperationsStore
from anomaly_pipelines.core.alerts.store import dispose_engines
from anomaly_pipelines.core.feedback import record_feedback
from anomaly_pipelines.core.registry import ModelRegistry
from anomaly_pipelines.core.series import CustomerSeries, series_to_frame
from anomaly_pipelines.defs.assets.training import trained_models
from anomaly_pipelines.defs.partitions import CUSTOMERS, customer_partitions
from anomaly_pipelines.defs.resources import MlflowRegistryResource, PipelineSettings
from anomaly_pipelines_tests.defs.conftest import write_config

KEY = "customer-a"
DAYS = pd.date_range("2024-01-01", periods=84, freq="D", tz="UTC")
INCIDENT = slice(74, 78)  # four days at five times the usual cost, in the holdout days


def _series() -> CustomerSeries:
    rng = np.random.default_rng(7)
    values = 100.0 * np.where(DAYS.weekday < 5, 1.25, 1.0) * (1 + 0.03 * rng.standard_normal(84))
    values[INCIDENT] *= 5
    return CustomerSeries(KEY, DAYS, values, np.zeros(len(DAYS), bool), pd.Timedelta(days=1))


@dg.asset(partitions_def=customer_partitions, name="customer_series")
def series_stub() -> pd.DataFrame:
    return series_to_frame([_series()])


def _confirm_incident(store: OperationsStore) -> None:
    """The incident as a daily run stores it, marked ``accurate`` by a person."""
    start, end = DAYS[INCIDENT][0], DAYS[INCIDENT][-1]
    store.upsert_incident(
        {
            "incident_id": "customer-a-20240315T0000",
            "customer_id": KEY,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "steps": 4,
            "direction": "increase",
            "impact": 2_000.0,
            "impact_pct": 400.0,
            "severity": "critical",
            "currency": "USD",
            "status": "ended",
            "first_seen": "2024-03-15",
            "last_seen": "2024-03-20",
        }
    )
    record_feedback(store, "customer-a-20240315T0000", "accurate", author="test")


def test_the_gate_scores_a_confirmed_incident_as_it_happened(tmp_path: Path) -> None:
    settings = PipelineSettings.from_file(str(write_config(tmp_path, {"lstm": {"epochs": 1}})))
    config = settings.config
    _confirm_incident(OperationsStore.for_config(config))
    resources: dict[str, Any] = {
        "pipeline_settings": settings,
        "mlflow_registry": MlflowRegistryResource(),
    }
    try:
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(CUSTOMERS, [KEY])
            for _ in range(2):  # the champion, then a challenger facing the gate
                dg.materialize(
                    [series_stub, trained_models], partition_key=KEY, instance=instance,
                    resources=resources,
                )
    finally:
        dispose_engines()
    registry = ModelRegistry(config.mlflow)
    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)
    tags = client.get_model_version(registry.registered_name(KEY), "2").tags
    assert tags["holdout_days"] == "28" and tags["compared_with_version"] == "1"
    # Both models flag the confirmed days they see: not charged double for all four (8).
    missed_all = 2 * len(DAYS[INCIDENT])
    assert float(tags["champion_cost"]) < missed_all, tags["challenger_reason"]
    assert float(tags["challenger_cost"]) < missed_all, tags["challenger_reason"]
