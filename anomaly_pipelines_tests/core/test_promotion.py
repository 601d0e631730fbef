"""Champion/challenger and rollback against a real MLflow store with really fitted detectors.

The good model is the default training; the worse challenger is a real training under the same
settings on a near-constant copy of the history, so its thresholds are far too tight (a model
trained under other settings cannot be compared under the live ones: its champion is unusable,
see ``core.model_settings``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from anomaly_pipelines import cli
from anomaly_pipelines.core.api import coerce
from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.detector import fit_detectors, score_series
from anomaly_pipelines.core.promotion import (
    CHALLENGER_ALIAS,
    apply_decisions,
    decide,
    holdout_cost,
    rollback,
)
from anomaly_pipelines.core.registry import ModelRegistry, clear_cache
from anomaly_pipelines.core.series import CustomerSeries, regularize
from anomaly_pipelines.core.sources.synthetic import generate_usage

CUSTOMER = "customer-001"


def _quiet_copy(series: CustomerSeries, seed: int) -> CustomerSeries:
    """The series as a near-constant line: a model trained on it finds every real day
    surprising, the "worse" challenger (trained under the same settings, so the two compete)."""
    rng = np.random.default_rng(seed)
    level = float(np.median(series.values))
    return dataclasses.replace(series, values=level * (1 + 0.001 * rng.standard_normal(len(series))))


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    config = PipelineConfig().merged({"lstm": {"epochs": 2}})
    usage = generate_usage(customers=2, days=120, seed=5).usage
    series = regularize(coerce(usage), config.preprocess)
    good = fit_detectors(series, config)
    bad = fit_detectors([_quiet_copy(s, i) for i, s in enumerate(series)], config)
    return {"config": config, "series": series, "good": good, "bad": bad}


def _registry(tmp_path: Path, config: PipelineConfig) -> tuple[ModelRegistry, PipelineConfig]:
    config = config.merged(
        {
            # Every flag counts (no repeats): the worse challenger flags most days in a row.
            # A decision-time setting, so models trained under the default still score.
            "hybrid": {"quiet_windows": 0, "quiet_period": "0D"},
            "mlflow": {
                "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "artifact_location": str(tmp_path / "artifacts"),
            }
        }
    )
    clear_cache()
    return ModelRegistry(config.mlflow), config


def _gate(
    registry: ModelRegistry, config: PipelineConfig, models: dict[str, Any], fitted: Any, name: str
) -> list[Any]:
    """What the training asset does: champions before, log, compare, apply."""
    series = models["series"]
    ids = [s.customer_id for s in series]
    before = registry.champion_versions(ids)
    old = registry.load_champions(sorted(before), config) if before else None
    record = registry.log_training(fitted, run_name=name)
    old_scores = score_series(series, old, config) if old is not None else pd.DataFrame()
    decisions = decide(
        score_series(series, fitted, config),
        old_scores,
        record.model_versions,
        before,
        holdout_days=config.drift.holdout_days,
    )
    apply_decisions(registry, decisions)
    return decisions


def test_worse_challenger_is_not_promoted_an_equal_one_is_and_rollback_moves_back(
    tmp_path: Path, models: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    registry, config = _registry(tmp_path, models["config"])
    first = _gate(registry, config, models, models["good"], "first")
    assert all(d.promoted and d.reason == "no usable champion to compare with" for d in first)
    assert registry.champion_version(CUSTOMER) == "1"

    worse = _gate(registry, config, models, models["bad"], "worse")
    decision = next(d for d in worse if d.customer_id == CUSTOMER)
    assert not decision.promoted
    assert decision.challenger_cost > decision.champion_cost
    assert registry.champion_version(CUSTOMER) == "1"  # the champion stays
    client = MlflowClient(registry.tracking_uri, registry.tracking_uri)
    name = registry.registered_name(CUSTOMER)
    v2 = client.get_model_version(name, "2")
    assert v2.tags["challenger_decision"] == "kept_champion"
    assert "worse than champion v1" in v2.tags["challenger_reason"]
    assert str(client.get_model_version_by_alias(name, CHALLENGER_ALIAS).version) == "2"

    same = _gate(registry, config, models, models["good"], "same")
    decision = next(d for d in same if d.customer_id == CUSTOMER)
    assert decision.promoted and decision.challenger_cost == decision.champion_cost
    assert registry.champion_version(CUSTOMER) == "3"
    v3 = client.get_model_version(name, "3")
    assert v3.tags["challenger_decision"] == "promoted"
    assert v3.tags["previous_champion"] == "1"

    # Rollback from the CLI goes to the previous champion (v1), not to the rejected v2.
    config_file = tmp_path / "pipeline.yaml"
    import yaml

    config_file.write_text(yaml.safe_dump({"mlflow": config.mlflow.model_dump()}))
    assert cli.main(["models", "rollback", CUSTOMER, "--config-file", str(config_file)]) == 0
    assert "champion moved from v3 to v1" in capsys.readouterr().out
    assert registry.champion_version(CUSTOMER) == "1"
    assert cli.main(["models", "rollback", CUSTOMER, "--config-file", str(config_file)]) == 1
    assert "oldest version" in capsys.readouterr().err
    with pytest.raises(ValueError, match="has no version 9"):
        rollback(registry, CUSTOMER, "9")

    # A deleted champion: the alias goes with it; rollback takes the newest remaining version.
    client.delete_model_version(name, "1")
    assert registry.champion_version(CUSTOMER) is None
    assert rollback(registry, CUSTOMER) == (None, "3")
    assert registry.champion_version(CUSTOMER) == "3"


def test_holdout_cost_counts_unconfirmed_flags_and_missed_confirmed_days() -> None:
    stamps = pd.date_range("2024-01-01", periods=6, freq="D", tz="UTC")
    scores = pd.DataFrame(
        {
            "customer_id": "a",
            "timestamp": stamps,
            "is_anomaly": [True, False, True, False, True, False],
            "status": "scored",
        }
    )
    assert holdout_cost(scores, 4) == {"a": (2.0, 4)}  # days 3 and 5 flagged, none confirmed
    confirmed = {"a": [stamps[2], stamps[3]]}  # day 3 was real (flagged), day 4 too (missed)
    assert holdout_cost(scores, 4, confirmed) == {"a": (1.0 + 2.0, 4)}
