"""A folder of daily billing files: the sensor requests each new day once, and the daily
partition stages that day's file, validates it and registers new customers."""

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from anomaly_pipelines.definitions import build_definitions
from anomaly_pipelines.defs.resources import PipelineSettings
from anomaly_pipelines_tests.defs.conftest import write_config


def _day_file(folder: Path, day: str, rows: list[tuple[str, float]]) -> Path:
    path = folder / f"usage_{day}.csv"
    frame = pd.DataFrame(
        {"customer_id": [c for c, _ in rows], "Date": day, "TotalCost": [v for _, v in rows]}
    )
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def folder_setup(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "billing"
    folder.mkdir()
    _day_file(folder, "2024-03-01", [("acme", 10.0), ("beta", 5.0)])
    _day_file(folder, "2024-03-02", [("acme", 11.0), ("beta", 5.5), ("Gamma Ltd", 2.0)])
    config = write_config(
        tmp_path,
        {
            "source": {
                "kind": "daily_folder",
                "path": str(folder),
                "daily": {"format": "notebook_csv"},
            }
        },
    )
    return folder, config


def _tick(
    defs: dg.Definitions, config: Path, instance: dg.DagsterInstance, cursor: str | None = None
) -> Any:
    """One evaluation of ``daily_files_sensor`` with the settings resource of ``config``."""
    sensor = defs.resolve_sensor_def("daily_files_sensor")
    resources = {"pipeline_settings": PipelineSettings.from_file(str(config))}
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=resources,
        repository_def=defs.get_repository_def(),
    ) as context:
        return sensor.evaluate_tick(context)


def test_sensor_requests_each_new_day_once(folder_setup: tuple[Path, Path]) -> None:
    folder, config = folder_setup
    defs = build_definitions(config_path=str(config))
    with dg.instance_for_test() as instance:
        first = _tick(defs, config, instance)
        assert [r.partition_key for r in first.run_requests] == ["2024-03-01", "2024-03-02"]
        assert first.cursor == "2024-03-02"
        again = _tick(defs, config, instance, first.cursor)
        assert not again.run_requests and again.skip_message == "no new daily files"
        _day_file(folder, "2024-03-03", [("acme", 12.0)])
        third = _tick(defs, config, instance, first.cursor)
        assert [r.partition_key for r in third.run_requests] == ["2024-03-03"]
        assert third.run_requests[0].job_name in (None, "daily_scoring_job")


def test_sensor_skips_other_sources(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with dg.instance_for_test() as instance:
        result = _tick(build_definitions(config_path=str(config)), config, instance)
    assert not result.run_requests and "not 'daily_folder'" in result.skip_message


def test_daily_partition_stages_and_validates_its_file(
    folder_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    _, config = folder_setup
    defs = build_definitions(config_path=str(config))
    job = defs.resolve_job_def("daily_scoring_job")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance,
            partition_key="2024-03-02",
            asset_selection=[dg.AssetKey("daily_usage")],
        )
        usage = result.output_for_node("daily_usage")
        assert sorted(usage["customer_id"]) == ["Gamma Ltd", "acme", "beta"]
        assert (usage["timestamp"] == pd.Timestamp("2024-03-02", tz="UTC")).all()
        assert usage.set_index("customer_id")["cost"].to_dict() == {
            "acme": 11.0,
            "beta": 5.5,
            "Gamma Ltd": 2.0,
        }
        staged = tmp_path / "staging" / "2024-03-02.csv"
        assert staged.is_file()
        # New customers became partitions, with file-safe keys.
        assert set(instance.get_dynamic_partitions("customers")) == {
            "acme",
            "beta",
            "gamma-ltd-h" + _hash("Gamma Ltd"),
        }

        empty = job.execute_in_process(
            instance=instance,
            partition_key="2024-03-05",
            asset_selection=[dg.AssetKey("daily_usage")],
        )
        assert empty.output_for_node(
            "daily_usage"
        ).empty  # no file that day: a warning, not a failure


def _hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:10]


def test_an_empty_redelivery_keeps_the_day_and_is_reported_in_the_run(
    folder_setup: tuple[Path, Path],
) -> None:
    """A newer header-only file for 2024-03-02 must not wipe the day: the daily run stages the
    earlier delivery and says why, in its log and its metadata."""
    import os

    folder, config = folder_setup
    redo = folder / "usage_2024-03-02_redo.csv"
    redo.write_text("customer_id,Date,TotalCost\n", encoding="utf-8")
    later = (folder / "usage_2024-03-02.csv").stat().st_mtime + 60
    os.utime(redo, (later, later))
    job = build_definitions(config_path=str(config)).resolve_job_def("daily_scoring_job")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance,
            partition_key="2024-03-02",
            asset_selection=[dg.AssetKey("daily_usage")],
        )
        assert len(result.output_for_node("daily_usage")) == 3
        (materialization,) = result.asset_materializations_for_node("daily_usage")
        notices = materialization.metadata["file_notices"].value
        assert "usage\\_2024-03-02\\_redo.csv" in notices and "kept" in notices  # Markdown-escaped
        logged = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
        assert any("usage_2024-03-02_redo.csv" in m and "no data rows" in m for m in logged)
