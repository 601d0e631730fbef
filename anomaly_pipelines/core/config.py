"""Typed pipeline settings.

Every number of the original notebook method is a default here, never a constant in code, so a
user can change it in ``configs/*.yaml`` or per run without touching Python. The same object feeds
``detect()`` and the Dagster resources, which is what keeps the two paths identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    # Unknown keys are errors: a typo in a YAML file must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid")


class SyntheticSourceConfig(_Section):
    """The built-in demo data ("mock data" mode)."""

    customers: int = 20
    days: int = 730
    start: str = "2024-01-01"
    seed: int = 7
    with_incidents: bool = True


class SourceConfig(_Section):
    """Where raw usage comes from; the readers live in ``core.sources``."""

    kind: Literal["synthetic", "notebook_csv", "focus", "table", "daily_folder"] = "synthetic"
    path: str | None = None
    customer_column: str = "customer_id"
    timestamp_column: str = "Date"
    cost_column: str = "TotalCost"
    # Extra options per reader (FOCUS key/cost columns, column mappings, ...).
    options: dict[str, Any] = Field(default_factory=dict)
    synthetic: SyntheticSourceConfig = Field(default_factory=SyntheticSourceConfig)


class PreprocessConfig(_Section):
    """How validated rows become one regular series per customer."""

    gap_policy: Literal["interpolate", "zero", "ffill"] = "interpolate"
    duplicates: Literal["sum", "last", "reject"] = "sum"
    # A series needs this many steps before it is modelled; shorter ones are returned unscored.
    min_history: int = 42
    # Fraction of rows allowed to fail validation before the run fails.
    max_failure_rate: float = 0.05
    frequency: str | None = None  # e.g. "1D", "5min"; None infers it per series


class WindowConfig(_Section):
    size: int = 7  # notebook: 7-day windows
    # Window for non-daily data; "auto" sizes it by frequency (one hour, one day, ...).
    size_by_frequency: bool = True
    # What the window models see: "residual" (standardised deviations from the seasonal
    # expectation) or "scaled" (the notebook's scaled raw values, scaled by ``scaler``).
    representation: Literal["residual", "scaled"] = "residual"
    scaler: Literal["robust", "minmax"] = "robust"


class TrainingConfig(_Section):
    train_fraction: float = 0.8  # notebook: first 80% of history
    seed: int = 42


class LSTMConfig(_Section):
    units: int = 32
    epochs: int = 50
    batch_size: int = 16
    patience: int = 5
    validation_fraction: float = 0.1
    learning_rate: float = 1e-3
    # Notebook threshold: mean + 1.5 sigma of training reconstruction errors.
    threshold_sigma: float = 1.5
    # Customers trained together in one stacked model (bounds memory; see models/lstm_autoencoder).
    customers_per_model: int = 512


class IsolationForestConfig(_Section):
    n_estimators: int = 100
    max_samples: int | Literal["auto"] = "auto"
    contamination: float | Literal["auto"] = "auto"


class LocalOutlierFactorConfig(_Section):
    n_neighbors: int = 20


class DecreaseRuleConfig(_Section):
    enabled: bool = True
    threshold: float = -0.30  # notebook: day-over-day drop below -30%


class HybridConfig(_Section):
    """How the component signals become one score; see ``core.scoring`` for the rule."""

    # Each component's score is divided by a threshold learned on training data, so 1.0 means
    # "at this series' own threshold"; these are the tail quantiles used for that.
    component_quantile: float = 0.995
    residual_min_z: float = 4.0
    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "residual": 1.0,
            "lstm": 1.0,
            "isolation_forest": 1.0,
            "local_outlier_factor": 1.0,
        }
    )
    decision_threshold: float = 1.0
    seasonal_cycles: int = 4


class MlflowConfig(_Section):
    tracking_uri: str = "sqlite:///.mlflow/mlflow.db"
    artifact_location: str = ".mlflow/artifacts"
    experiment: str = "anomaly_pipelines"
    model_prefix: str = "anomaly_pipelines"
    alias: str = "champion"


class ExplainConfig(_Section):
    explainer: Literal["offline", "gemini"] = "offline"
    max_headline_chars: int = 70
    top_root_causes: int = 3


class OutputConfig(_Section):
    directory: str = "data/outputs"


class PipelineConfig(_Section):
    source: SourceConfig = Field(default_factory=SourceConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    windows: WindowConfig = Field(default_factory=WindowConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    lstm: LSTMConfig = Field(default_factory=LSTMConfig)
    isolation_forest: IsolationForestConfig = Field(default_factory=IsolationForestConfig)
    local_outlier_factor: LocalOutlierFactorConfig = Field(default_factory=LocalOutlierFactorConfig)
    decrease_rule: DecreaseRuleConfig = Field(default_factory=DecreaseRuleConfig)
    hybrid: HybridConfig = Field(default_factory=HybridConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    def merged(self, overrides: dict[str, Any] | None) -> PipelineConfig:
        """Return a copy with a nested dict of overrides applied (deep merge)."""
        if not overrides:
            return self
        return PipelineConfig.model_validate(_deep_merge(self.model_dump(), overrides))


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Defaults, then the YAML file (if any), then ``overrides``: later wins, key by key."""
    config = PipelineConfig()
    if path is not None:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        config = config.merged(data)
    return config.merged(overrides)


def as_config(config: PipelineConfig | dict[str, Any] | str | Path | None) -> PipelineConfig:
    """Accept what notebook users naturally pass: nothing, a dict, a YAML path or a config."""
    if config is None:
        return PipelineConfig()
    if isinstance(config, PipelineConfig):
        return config
    if isinstance(config, dict):
        return PipelineConfig().merged(config)
    return load_config(config)
