"""The ``anomaly-pipelines`` command's plumbing (the demo itself runs in test_pipeline)."""

import argparse
import os
import sys
from pathlib import Path

import pytest

from anomaly_pipelines import cli
from anomaly_pipelines.defs.demo import prepare_dagster_home

ROOT = Path(__file__).resolve().parents[2]


def test_prepare_dagster_home_copies_the_instance_settings_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", "/nowhere")
    home = prepare_dagster_home(tmp_path / "home", ROOT / "configs" / "dagster.yaml")
    assert os.environ["DAGSTER_HOME"] == str(home) and home.is_absolute()
    assert (home / "dagster.yaml").read_text() == (ROOT / "configs" / "dagster.yaml").read_text()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n# edited\n")
    prepare_dagster_home(tmp_path / "home", ROOT / "configs" / "dagster.yaml")
    assert (home / "dagster.yaml").read_text().endswith("# edited\n")  # the user's edit is kept


def test_prepare_dagster_home_without_the_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", "/nowhere")
    home = prepare_dagster_home(tmp_path / "home", tmp_path / "missing.yaml")
    assert "enabled: false" in (home / "dagster.yaml").read_text()


def test_instance_settings_are_valid_for_dagster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    monkeypatch.setenv("DAGSTER_HOME", "/nowhere")
    home = prepare_dagster_home(tmp_path / "home", ROOT / "configs" / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_coordinator is not None
        settings = instance.get_concurrency_config()
        assert settings.run_queue_config.max_concurrent_runs == 2
        assert not instance.telemetry_enabled


def test_demo_shortcuts_become_overrides() -> None:
    args = argparse.Namespace(customers=3, days=90, epochs=None)
    assert cli.demo_overrides(args) == {"source": {"synthetic": {"customers": 3, "days": 90}}}
    args = argparse.Namespace(customers=None, days=None, epochs=4)
    assert cli.demo_overrides(args) == {"lstm": {"epochs": 4}}


def test_evaluate_delegates_to_the_evaluation_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--datasets", "no-such-dataset"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "anomaly_pipelines.core.evaluation" in err and "no-such-dataset" in err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train-everything"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_benchmark_runs_the_repository_script(capfd: pytest.CaptureFixture[str]) -> None:
    """Run as a script, not imported: the package must not put the checkout on sys.path."""
    assert cli.run_benchmark(["--help"], root=ROOT) == 0
    assert "docs/performance.md" in capfd.readouterr().out
    assert "benchmarks.performance" not in sys.modules


def test_benchmark_outside_the_project_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.run_benchmark([], root=tmp_path) == 2
    assert "run it from the project root" in capsys.readouterr().err
