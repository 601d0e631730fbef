"""``anomaly-pipelines feedback`` and ``alerts test|list`` against a real store and a loopback
webhook."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from anomaly_pipelines import cli
from anomaly_pipelines.core.alerts import OperationsStore, process_day
from anomaly_pipelines.core.alerts.store import dispose_engines
from anomaly_pipelines.core.explain import explain_incidents
from anomaly_pipelines.core.feedback import give_feedback
from anomaly_pipelines.defs.settings import read_config, write_isolated_config
from anomaly_pipelines_tests.loopback import webhook_server


@pytest.fixture(autouse=True)
def _engines():
    yield
    dispose_engines()


def _scores() -> pd.DataFrame:
    stamps = pd.date_range("2024-05-01", periods=10, freq="D", tz="UTC")
    cost = [100.0] * 10
    cost[8] = 400.0
    return pd.DataFrame(
        {
            "customer_id": "globex",
            "timestamp": stamps,
            "cost": cost,
            "expected_cost": 100.0,
            "hybrid_score": [3.0 if c > 100 else 0.1 for c in cost],
            "is_anomaly": [c > 100 for c in cost],
        }
    )


def test_alerts_test_list_and_feedback_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with webhook_server() as hook:
        monkeypatch.setenv("OPS_HOOK", hook.url)
        path = write_isolated_config(
            tmp_path,
            {
                "alerts": {
                    "subscriptions": [{"name": "ops", "channel": "slack", "url_env": "OPS_HOOK"}],
                    "backoff_seconds": 0.01,
                }
            },
        )
        args = ["--config-file", str(path)]
        assert cli.main(["alerts", "test", "--subscription", "ops", *args]) == 0
        assert hook.bodies[0]["text"].startswith("TEST ")
        assert cli.main(["alerts", "test", "--subscription", "nope", *args]) == 2
        assert "no alert subscription named 'nope'" in capsys.readouterr().err

        config = read_config(str(path))
        store = OperationsStore.for_config(config)
        scores = _scores()
        incidents = explain_incidents(scores, None, config.explain)
        process_day(config, store, "2024-05-09", incidents, {"globex": scores["timestamp"].max()})
        capsys.readouterr()
        assert cli.main(["alerts", "list", *args]) == 0
        listed = capsys.readouterr().out
        assert "globex-20240509T0000" in listed and listed.count("sent") == 2

        assert (
            cli.main(
                [
                    "feedback",
                    "globex-20240509T0000",
                    "planned",
                    "--note",
                    "load test",
                    "--author",
                    "bo",
                    *args,
                ]
            )
            == 0
        )
        assert (
            "recorded planned for globex-20240509T0000 (customer globex) by bo"
            in capsys.readouterr().out
        )
        assert cli.main(["feedback", "globex-20990101T0000", "accurate", *args]) == 1
        assert "unknown incident" in capsys.readouterr().err
        # The Python form writes to the same store.
        give_feedback("globex-20240509T0000", "accurate", config=str(path), author="cy")
        labels = OperationsStore.for_config(config).feedback()
        assert list(zip(labels["label"], labels["author"], labels["note"], strict=True)) == [
            ("planned", "bo", "load test"),
            ("accurate", "cy", ""),
        ]

    assert cli.main(["alerts", "stats", *args]) == 0
    stats = capsys.readouterr().out
    assert "incidents seen: 1" in stats
    assert "feedback (latest per incident): accurate 1" in stats
    assert ": 1/1 = 100%" in stats

    # With the receiver gone the test command reports the failure and exits 1.
    assert cli.main(["alerts", "test", "--subscription", "ops", *args]) == 1
    assert "could not deliver to ops" in capsys.readouterr().err
    assert cli.main(["alerts", "list", "--status", "failed", *args]) == 0
    assert "connection failed" in capsys.readouterr().out
