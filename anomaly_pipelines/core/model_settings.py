"""The settings a trained model is defined by, frozen with the model.

Thresholds, spreads and window models are learned under one training's settings (window,
representation, seasonal cycles, history cleaning, the detectors' own settings...). Scoring them
under other values of those settings would mix two methods without a word, which is what an
edited YAML file or an alias moved back to an older model used to do. So a model carries a copy
of its settings, and the live configuration contributes only what a decision is made with
(``LIVE``): the decision threshold, what counts as a repeat, which rows are accepted. Settings
of training effort (``TRAINING_EFFORT``: seed, epochs, sample sizes) are recorded but apply to
the next training only. Every other setting of the model sections defines the model (a new one
too, until it is listed here): the window, representation, seasonal cycles, history cleaning,
how thresholds are learned, the detectors' own settings, how signals combine. A difference in
one is an error that names it, so the choice (retrain, or put the setting back) is the
person's, not the code's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from anomaly_pipelines.core.config import PipelineConfig

# The config sections a model is trained and scored under; logged as MLflow params too.
MODEL_SECTIONS = (
    "preprocess",
    "windows",
    "training",
    "lstm",
    "isolation_forest",
    "local_outlier_factor",
    "decrease_rule",
    "hybrid",
)
# Settings of those sections read from the live configuration at every scoring: how a score is
# turned into a decision and a repeat, and which rows are taken in. Changing them needs no
# retraining.
LIVE = frozenset(
    {
        "hybrid.decision_threshold",
        "decrease_rule.confirm_z",
        "decrease_rule.alone_residual",
        "hybrid.lstm_alone",
        "hybrid.residual_alone_support",
        "hybrid.quiet_windows",
        "hybrid.quiet_period",
        "hybrid.peak_ratio",
        "hybrid.peak_window",
        "hybrid.escalation",
        "hybrid.stuck_run",
        "hybrid.portfolio_move_share",
        "hybrid.portfolio_move_z",
        "hybrid.portfolio_move_min_series",
        "preprocess.duplicates",
        "preprocess.max_failure_rate",
    }
)
# Settings of how hard training tries (seed, epochs, sample sizes, who has enough history): the
# model records them, but scoring never reads them and they do not change what a score means,
# so a new value simply applies from the next training (a per-run override of the seed, say).
TRAINING_EFFORT = frozenset(
    {
        "preprocess.min_history",
        "training.seed",
        "training.train_fraction",
        "lstm.epochs",
        "lstm.batch_size",
        "lstm.patience",
        "lstm.validation_fraction",
        "lstm.learning_rate",
        "lstm.customers_per_model",
        "lstm.customers_per_step",
        "lstm.max_training_windows",
        "lstm.compile_min_work",
        "isolation_forest.max_training_windows",
        "local_outlier_factor.max_training_windows",
    }
)
_UNSET = "(unset)"


class SettingsMismatch(ValueError):
    """A model was asked to score under settings other than those it was trained under."""

    def __init__(self, differences: list[str], what: str = "the model") -> None:
        self.differences = differences
        super().__init__(
            f"{what} was trained under other settings than the configuration's: "
            + "; ".join(differences)
            + ". Retrain under the new settings, or put them back to the ones it was trained "
            "under (these settings are not read from the configuration at scoring time)"
        )


@dataclass(frozen=True)
class ModelSettings:
    """An immutable copy of the model sections of a ``PipelineConfig``, as canonical JSON (so it
    compares, hashes and pickles as plain text, and reads back the same in any process)."""

    text: str

    @classmethod
    def of(cls, config: PipelineConfig) -> ModelSettings:
        sections = {name: getattr(config, name).model_dump(mode="json") for name in MODEL_SECTIONS}
        return cls(json.dumps(sections, sort_keys=True))

    @classmethod
    def from_dict(cls, sections: dict[str, Any]) -> ModelSettings:
        """From ``as_dict()``'s output (a saved model); checked by building a config with it."""
        settings = cls(json.dumps(sections, sort_keys=True))
        settings.config()  # raises pydantic's ValidationError on anything malformed
        return settings

    def as_dict(self) -> dict[str, Any]:
        return json.loads(self.text)

    def flat(self) -> dict[str, Any]:
        """``{"hybrid.seasonal_cycles": 4, "hybrid.weights.lstm": 1.0, ...}``."""
        return dict(_flatten("", self.as_dict()))

    def config(self, base: PipelineConfig | None = None) -> PipelineConfig:
        """``base`` (default: the defaults) with every model section as trained, the live
        settings included: what the model scores under when nobody gives a configuration (a
        served model)."""
        return (base or PipelineConfig()).merged(self.as_dict())

    def differences(self, config: PipelineConfig) -> list[str]:
        """The defining settings whose value in ``config`` differs from the model's, each as
        ``"name: trained with X, configured Y"``."""
        trained, live = self.flat(), ModelSettings.of(config).flat()
        out = []
        for name in sorted(set(trained) | set(live)):
            if name in LIVE or name in TRAINING_EFFORT:
                continue
            was, now = trained.get(name, _UNSET), live.get(name, _UNSET)
            if was != now:
                out.append(f"{name}: trained with {was!r}, configured {now!r}")
        return out

    def check(self, config: PipelineConfig, what: str = "the model") -> None:
        """Raise ``SettingsMismatch`` naming every defining setting ``config`` changes."""
        differences = self.differences(config)
        if differences:
            raise SettingsMismatch(differences, what)


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if not isinstance(value, dict):
        return [(prefix, value)]
    out: list[tuple[str, Any]] = []
    for key, item in value.items():
        out.extend(_flatten(f"{prefix}.{key}" if prefix else str(key), item))
    return out
