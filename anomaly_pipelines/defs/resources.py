"""Resources: the pipeline configuration, the MLflow model registry and the explainer.

Heavy libraries (MLflow, google-genai) are imported inside methods so that loading the code
location stays fast; only a run that needs them pays for the import.
"""

import os
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field, PrivateAttr

from anomaly_pipelines.core.config import ExplainConfig, PipelineConfig
from anomaly_pipelines.defs.settings import default_config_path, read_config

if TYPE_CHECKING:
    from anomaly_pipelines.core.explain import Explainer
    from anomaly_pipelines.core.registry import ModelRegistry

GEMINI_KEY_ENV = "GEMINI_API_KEY"
MLFLOW_TRACKING_URI_ENV = "ANOMALY_PIPELINES_MLFLOW_TRACKING_URI"


class PipelineSettings(dg.ConfigurableResource):
    """The pipeline configuration, resolved once when the code location is built and handed to
    every asset, check and sensor of a run.

    ``build_definitions`` reads the YAML file once and hands the result in (``resolved``), so
    the partitions, the schedule and the runs all see the same settings, and no asset re-reads
    a file that may have changed since the code location loaded. ``overrides`` can be set per run
    (run config ``resources.pipeline_settings.config.overrides``), so one launch can try other
    thresholds or another source without editing the committed YAML.

    ``resolved`` is a resource dependency holding a plain ``PipelineConfig``, not a config field:
    Dagster replaces a resource's whole config with a run's, so as a config field it would fall
    back to its default whenever a run sets only ``overrides``.
    """

    resolved: dg.ResourceDependency[PipelineConfig]
    overrides: dict[str, Any] = Field(
        default={},
        description="Nested settings applied on top for one run, e.g. {lstm: {epochs: 5}}.",
    )
    _config: PipelineConfig | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, config: PipelineConfig) -> "PipelineSettings":
        """The resource for an already resolved configuration."""
        return cls(resolved=config)

    @classmethod
    def from_file(
        cls, config_path: str = "", overrides: dict[str, Any] | None = None
    ) -> "PipelineSettings":
        """The resource for a YAML file (empty: ``$ANOMALY_PIPELINES_CONFIG`` or
        ``configs/pipeline.yaml``) plus overrides, read now."""
        return cls.of(read_config(config_path or default_config_path(), overrides))

    @classmethod
    def in_definitions(cls, defs: dg.Definitions) -> "PipelineSettings":
        """The settings a code location was built with."""
        settings = defs.resources["pipeline_settings"]
        if not isinstance(settings, cls):
            raise TypeError(f"pipeline_settings is a {type(settings).__name__}, not {cls.__name__}")
        return settings

    @property
    def config(self) -> PipelineConfig:
        """The run's configuration, validated once per resource instance."""
        if self._config is None:
            self._config = self.resolved.merged(self.overrides)
        return self._config


class MlflowRegistryResource(dg.ConfigurableResource):
    """The MLflow tracking store and model registry of a run.

    The run's ``mlflow`` settings name the store; the two fields here, when set, take precedence,
    so a deployment can point every run at a shared tracking server (e.g. from an ``EnvVar``)
    without editing the YAML. Resources take the run's configuration as an argument rather than
    holding the settings resource: a nested resource would not see per-run overrides.
    """

    tracking_uri: str = Field(default="", description="Overrides mlflow.tracking_uri when set.")
    artifact_location: str = Field(
        default="", description="Overrides mlflow.artifact_location when set."
    )

    def registry(self, config: PipelineConfig) -> "ModelRegistry":
        from anomaly_pipelines.core.registry import ModelRegistry

        updates = {"tracking_uri": self.tracking_uri, "artifact_location": self.artifact_location}
        return ModelRegistry(
            config.mlflow.model_copy(update={k: v for k, v in updates.items() if v})
        )


def mlflow_registry_resource() -> MlflowRegistryResource:
    """The registry resource, bound to ``$ANOMALY_PIPELINES_MLFLOW_TRACKING_URI`` when that is
    set (a deployment's tracking server). Through ``EnvVar`` the address, which may carry a
    password, is read in each run and never shown in the run's config in the UI."""
    if os.environ.get(MLFLOW_TRACKING_URI_ENV):
        return MlflowRegistryResource(tracking_uri=dg.EnvVar(MLFLOW_TRACKING_URI_ENV))
    return MlflowRegistryResource()


class GeminiResource(dg.ConfigurableResource):
    """Gemini connection settings. Unset fields fall back to the ``explain`` section of the YAML.

    The key is only ever read from the environment (``GEMINI_API_KEY``) and is never logged or
    written to metadata.
    """

    api_key: str | None = Field(default=None, description="Set from the GEMINI_API_KEY env var.")
    model: str | None = None
    base_url: str | None = None
    timeout_seconds: float | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None


def gemini_resource() -> GeminiResource:
    """Bind the key to ``EnvVar`` only when it is set: an unset ``EnvVar`` fails every run that
    initialises the resource, including offline runs that never call Gemini."""
    if os.environ.get(GEMINI_KEY_ENV):
        return GeminiResource(api_key=dg.EnvVar(GEMINI_KEY_ENV))
    return GeminiResource()


class ExplainerResource(dg.ConfigurableResource):
    """The explainer named by ``explain.explainer``: the offline rules, or Gemini rephrasing the
    same facts. Gemini without a key falls back to offline (``core.explain.make_explainer``),
    so the demo runs anywhere and each explanation records why."""

    gemini: GeminiResource

    def explain_config(self, config: PipelineConfig) -> ExplainConfig:
        updates = {
            "gemini_model": self.gemini.model,
            "gemini_base_url": self.gemini.base_url,
            "timeout_seconds": self.gemini.timeout_seconds,
            "max_output_tokens": self.gemini.max_output_tokens,
            "temperature": self.gemini.temperature,
        }
        return config.explain.model_copy(update={k: v for k, v in updates.items() if v is not None})

    def explainer(self, config: PipelineConfig) -> "Explainer":
        from anomaly_pipelines.core.explain import make_explainer

        return make_explainer(self.explain_config(config), api_key=self.gemini.api_key)
