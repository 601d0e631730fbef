"""Where a run's configuration comes from, and the committed reference file."""

from pathlib import Path

import pytest

from anomaly_pipelines.core.config import PipelineConfig, load_config
from anomaly_pipelines.defs.resources import PipelineSettings
from anomaly_pipelines.defs.settings import CONFIG_ENV, read_config, reference_yaml

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "configs" / "pipeline.yaml"


def test_committed_reference_matches_the_code() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == reference_yaml(), (
        "configs/pipeline.yaml is stale: run "
        "`.venv/bin/python -m anomaly_pipelines.defs.settings > configs/pipeline.yaml`"
    )
    assert load_config(REFERENCE) == PipelineConfig()


def test_every_setting_is_in_the_reference() -> None:
    import yaml

    def keys(data: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in data.items():
            out.add(prefix + key)
            if isinstance(value, dict) and key not in {
                "charge_categories",
                "weights",
                "options",
                "exchange_rates",
                "columns",
            }:
                out |= keys(value, prefix + key + ".")
        return out

    written = keys(yaml.safe_load(REFERENCE.read_text(encoding="utf-8")))
    assert written == keys(PipelineConfig().model_dump(mode="json"))


def test_missing_default_file_means_defaults_but_a_missing_explicit_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/pipeline.yaml here
    assert read_config("configs/pipeline.yaml") == PipelineConfig()
    with pytest.raises(FileNotFoundError, match=r"elsewhere\.yaml"):
        read_config(str(tmp_path / "elsewhere.yaml"))


def test_settings_resource_layers_file_env_and_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("lstm:\n  epochs: 7\n  units: 8\n", encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    from_env = PipelineSettings.from_file()
    assert (from_env.config.lstm.epochs, from_env.config.lstm.units) == (7, 8)
    # A run's overrides go on top of what the code location resolved, key by key.
    per_run = PipelineSettings(resolved=from_env.resolved, overrides={"lstm": {"epochs": 2}})
    assert (per_run.config.lstm.epochs, per_run.config.lstm.units) == (2, 8)
    assert per_run.config is per_run.config  # validated once, not on every access
    with pytest.raises(ValueError, match="epochz"):
        _ = PipelineSettings(resolved=PipelineConfig(), overrides={"lstm": {"epochz": 2}}).config
    with pytest.raises(ValueError, match="epochz"):
        PipelineSettings.from_file(overrides={"lstm": {"epochz": 2}})
