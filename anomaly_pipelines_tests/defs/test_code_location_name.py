"""One code location name for ``dg dev``, ``dagster dev -w workspace.yaml`` and
``dagster job launch -w workspace.yaml``.

A run launched from the command line is queued under the location name of the workspace file;
the daemon of ``dg dev`` dequeues it by name in ``dg dev``'s own workspace, which dg names after
the checkout's folder unless ``[tool.dg.project] code_location_name`` says otherwise. With two
names the run dies with ``DagsterCodeLocationNotFoundError`` before it starts. Tested with the
real commands against a real instance in a temporary ``DAGSTER_HOME``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import yaml
from dagster_dg_cli.cli.utils import create_temp_workspace_file
from dagster_dg_core.context import DgContext

from anomaly_pipelines_tests.daemon import dagster_daemon
from anomaly_pipelines_tests.defs.conftest import write_config

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _workspace_names(path: Path) -> list[str]:
    entries = yaml.safe_load(path.read_text(encoding="utf-8"))["load_from"]
    return [next(iter(entry.values()))["location_name"] for entry in entries]


def _dg_name(root: Path) -> str:
    return DgContext.for_project_environment(root, {}).code_location_name


def test_dg_names_the_location_as_the_workspace_file_does_in_any_folder(tmp_path: Path) -> None:
    """A clone in a folder of any name: dg must not fall back to the folder's name."""
    checkout = tmp_path / "my-clone-of-the-project"
    checkout.mkdir()
    shutil.copy(ROOT / "pyproject.toml", checkout / "pyproject.toml")
    assert _workspace_names(ROOT / "workspace.yaml") == [_dg_name(checkout)]
    assert _dg_name(checkout) == _dg_name(ROOT) == "anomaly_pipelines"


def test_a_run_queued_through_the_workspace_file_starts_under_dg_dev(tmp_path: Path) -> None:
    """``dagster job launch -w workspace.yaml`` queues a run; the daemon, given the workspace
    that ``dg dev`` builds, dequeues and starts it."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "configs" / "dagster.yaml", home / "dagster.yaml")
    config = write_config(
        tmp_path / "work", {"orchestration": {"schedule_running_by_default": False}}
    )
    env = {**os.environ, "DAGSTER_HOME": str(home), "ANOMALY_PIPELINES_CONFIG": str(config)}
    launched = subprocess.run(
        [str(BIN / "dagster"), "job", "launch", "-w", "workspace.yaml", "-j", "report_job"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stdout + launched.stderr
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.QUEUED
        assert run.remote_job_origin is not None
        assert run.remote_job_origin.location_name == "anomaly_pipelines"

        with create_temp_workspace_file(DgContext.for_project_environment(ROOT, {})) as workspace:
            assert _workspace_names(Path(workspace)) == ["anomaly_pipelines"]
            with dagster_daemon(workspace, ROOT, env):
                deadline = time.monotonic() + 480
                while time.monotonic() < deadline:
                    current = instance.get_run_by_id(run.run_id)
                    assert current is not None
                    if current.is_finished:
                        break
                    time.sleep(2)
        messages = " ".join(
            str(e.message) + str(e.user_message) for e in instance.all_logs(run.run_id)
        )
        assert "CodeLocationNotFound" not in messages
        # The run was dequeued and its worker started it in dg dev's location (it then fails
        # for its own reason: nothing has been scored in this empty instance).
        assert instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_START), messages
        final = instance.get_run_by_id(run.run_id)
        assert final is not None and final.is_finished
