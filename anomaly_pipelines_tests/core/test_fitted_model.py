"""The fitted model as a first-class object: it keeps the settings it was trained under, saves
itself to a directory and loads back scoring bit for bit like before, and refuses a
configuration that changes a defining setting, naming it.

Two customers, 120 days, one LSTM epoch, fitted once for the module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_pipelines.core.api import usage_series
from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.detector import (
    FittedDetectors,
    fit_detectors,
    score_latest,
    score_series,
)
from anomaly_pipelines.core.model_settings import LIVE, ModelSettings, SettingsMismatch
from anomaly_pipelines.core.series import CustomerSeries
from anomaly_pipelines.core.sources.synthetic import generate_usage


@dataclass
class Fitted:
    config: PipelineConfig
    series: list[CustomerSeries]
    model: FittedDetectors


@pytest.fixture(scope="module")
def fitted() -> Fitted:
    config = PipelineConfig().merged({"lstm": {"epochs": 1}, "hybrid": {"seasonal_cycles": 3}})
    series = usage_series(generate_usage(customers=2, days=120, seed=4).usage, config)
    return Fitted(config, series, fit_detectors(series, config))


def test_the_model_keeps_the_settings_it_was_trained_under(fitted: Fitted) -> None:
    settings = fitted.model.settings
    assert settings == ModelSettings.of(fitted.config)
    assert settings.flat()["hybrid.seasonal_cycles"] == 3
    assert settings.config().hybrid.seasonal_cycles == 3  # the defaults say 4
    assert "mlflow" not in settings.as_dict() and "explain" not in settings.as_dict()


@pytest.mark.parametrize("online", [True, False])
def test_saved_and_loaded_it_scores_bit_for_bit_like_the_fitted_model(
    fitted: Fitted, tmp_path: Path, online: bool
) -> None:
    loaded = FittedDetectors.load(fitted.model.save(tmp_path / "model"))
    assert loaded.settings == fitted.model.settings
    assert loaded.skipped == fitted.model.skipped
    for before, after in zip(fitted.model.autoencoders, loaded.autoencoders, strict=True):
        assert after.customer_ids == before.customer_ids and len(before.history) >= 1
        np.testing.assert_array_equal(np.array(after.history), np.array(before.history))
        np.testing.assert_array_equal(after.val_loss, before.val_loss)
        # Loaded without tracing the layer: the declared output shape is the traced one.
        assert after.model.output_shape == before.model.input_shape == after.model.input_shape
        weights = zip(before.model.get_weights(), after.model.get_weights(), strict=True)
        for saved, restored in weights:
            np.testing.assert_array_equal(restored, saved)
    pd.testing.assert_frame_equal(
        score_series(fitted.series, loaded, fitted.config, online=online),
        score_series(fitted.series, fitted.model, fitted.config, online=online),
        check_exact=True,
    )
    pd.testing.assert_frame_equal(
        score_latest(fitted.series, loaded, fitted.config, steps=3),
        score_latest(fitted.series, fitted.model, fitted.config, steps=3),
        check_exact=True,
    )
    manifest = json.loads((tmp_path / "model" / "model.json").read_text())
    assert manifest["customers"] == sorted(fitted.model.calibrations)
    assert manifest["settings"]["hybrid"]["seasonal_cycles"] == 3


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"hybrid": {"seasonal_cycles": 5}}, "hybrid.seasonal_cycles: trained with 3, configured 5"),
        ({"windows": {"representation": "scaled"}}, "windows.representation"),
        ({"hybrid": {"clean_history_z": 3.0}}, "hybrid.clean_history_z"),
        ({"hybrid": {"weights": {"lstm": 0.5}}}, "hybrid.weights.lstm"),
        ({"lstm": {"units": 8}}, "lstm.units"),
        ({"hybrid": {"component_quantile": 0.9}}, "hybrid.component_quantile"),
    ],
)
def test_a_model_saved_under_one_setting_and_scored_under_another_raises(
    fitted: Fitted, tmp_path: Path, override: dict[str, dict[str, object]], named: str
) -> None:
    loaded = FittedDetectors.load(fitted.model.save(tmp_path / "model"))
    with pytest.raises(SettingsMismatch, match=named.replace(".", r"\.")) as raised:
        score_series(fitted.series, loaded, fitted.config.merged(override))
    assert len(raised.value.differences) == 1
    with pytest.raises(SettingsMismatch):
        score_latest(fitted.series, loaded, fitted.config.merged(override))


def test_decision_time_and_training_effort_settings_may_differ(fitted: Fitted) -> None:
    assert {"hybrid.decision_threshold", "hybrid.quiet_period"} <= LIVE
    # Training effort is recorded but not compared: a new seed applies to the next training.
    reseeded = fitted.config.merged({"training": {"seed": 7}, "lstm": {"epochs": 9}})
    pd.testing.assert_frame_equal(
        score_series(fitted.series, fitted.model, reseeded),
        score_series(fitted.series, fitted.model, fitted.config),
        check_exact=True,
    )
    lenient = fitted.config.merged({"hybrid": {"decision_threshold": 0.2, "quiet_windows": 0}})
    scores = score_series(fitted.series, fitted.model, lenient)
    default = score_series(fitted.series, fitted.model, fitted.config)
    assert scores["is_anomaly"].sum() > default["is_anomaly"].sum()
    pd.testing.assert_series_equal(scores["hybrid_score"], default["hybrid_score"], check_exact=True)


def test_subset_and_combine_keep_each_customers_models(fitted: Fitted, tmp_path: Path) -> None:
    first, second = sorted(fitted.model.calibrations)
    parts = [fitted.model.subset([first]), FittedDetectors.load(fitted.model.save(tmp_path / "m")).subset([second])]
    assert sorted(parts[0].calibrations) == [first]
    combined = FittedDetectors.combine(parts, {"gone": "no champion model registered"})
    assert combined.skipped == {"gone": "no champion model registered"}
    pd.testing.assert_frame_equal(
        score_series(fitted.series, combined, fitted.config),
        score_series(fitted.series, fitted.model, fitted.config),
        check_exact=True,
    )
    other = FittedDetectors(settings=ModelSettings.of(fitted.config.merged({"hybrid": {"seasonal_cycles": 4}})))
    with pytest.raises(SettingsMismatch, match="seasonal_cycles"):
        FittedDetectors.combine([parts[0], other], {})


def test_an_incomplete_or_foreign_directory_is_refused_with_what_is_wrong(
    fitted: Fitted, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"model\.json is missing"):
        FittedDetectors.load(tmp_path)
    saved = fitted.model.save(tmp_path / "model")
    with pytest.raises(FileExistsError):
        fitted.model.save(saved)
    (saved / "isolation_forest.pkl").unlink()
    with pytest.raises(ValueError, match=r"isolation_forest\.pkl is missing"):
        FittedDetectors.load(saved)
    manifest = json.loads((saved / "model.json").read_text())
    (saved / "model.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        FittedDetectors.load(saved)
