"""The pyfunc flavour: a customer's champion served by a real ``mlflow models serve`` on
127.0.0.1 scores posted history exactly like the model in this process.

One customer, 120 days, one LSTM epoch: a per-customer training, whose model may be posted rows
without ``customer_id``. Starting the server (MLflow, TensorFlow) takes most of the time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from anomaly_pipelines.core.api import input_rows, usage_series
from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.detector import FittedDetectors, fit_detectors, score_series
from anomaly_pipelines.core.registry import ModelRegistry
from anomaly_pipelines.core.sources.synthetic import generate_usage
from anomaly_pipelines_tests.loopback import free_port

CUSTOMER = "customer-001"
FLOATS = ["cost", "expected_cost", "hybrid_score", "residual_score", "lstm_error"]


@dataclass
class Served:
    config: PipelineConfig
    usage: pd.DataFrame  # the customer's history, as posted
    fitted: FittedDetectors
    uri: str  # models:/<name>@champion


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = tmp_path_factory.mktemp("serving")
    config = PipelineConfig().merged(
        {
            "lstm": {"epochs": 1},
            "mlflow": {
                "tracking_uri": f"sqlite:///{root}/mlflow.db",
                "artifact_location": str(root / "artifacts"),
            },
        }
    )
    usage = generate_usage(customers=1, days=120, seed=3).usage
    usage = usage.groupby(["customer_id", "timestamp"], as_index=False)["cost"].sum()  # one row a day
    fitted = fit_detectors(usage_series(usage, config), config)
    registry = ModelRegistry(config.mlflow)
    registry.log_training(fitted, run_name="served")
    uri = f"models:/{registry.registered_name(CUSTOMER)}@{config.mlflow.alias}"
    return Served(config, usage[["timestamp", "cost"]], fitted, uri)


def _expected(served: Served, online: bool) -> pd.DataFrame:
    rows = served.usage.assign(customer_id=CUSTOMER)
    series = usage_series(rows, served.config)
    return input_rows(score_series(series, served.fitted, served.config, online=online))


def _assert_same(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert len(actual) == len(expected)
    # Another process's TensorFlow may sum a matmul in another order: float32 rounding, no more.
    for column in FLOATS:
        np.testing.assert_allclose(
            pd.to_numeric(actual[column]).to_numpy(float), expected[column].to_numpy(float), rtol=1e-6, err_msg=column
        )
    for column in ("is_anomaly", "is_repeat", "reasons", "status", "customer_id"):
        assert list(actual[column]) == list(expected[column]), column
    assert list(pd.to_datetime(actual["timestamp"], utc=True)) == list(expected["timestamp"])


def test_the_logged_pyfunc_scores_like_the_fitted_model(served: Served) -> None:
    model = mlflow.pyfunc.load_model(served.uri)
    for online in (True, False):
        _assert_same(model.predict(served.usage, params={"online": online}), _expected(served, online))
    with pytest.raises(MlflowException, match="timestamp"):
        model.predict(served.usage.assign(timestamp="not a date"))


@contextlib.contextmanager
def _model_server(served: Served) -> Iterator[str]:
    """``mlflow models serve`` of the champion on a free loopback port; yields its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": served.config.mlflow.tracking_uri,
        # MLflow starts ``uvicorn`` by name: the one installed next to this Python.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", served.uri,
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its workers are stopped with it
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                raise AssertionError(f"mlflow models serve exited: {server.stderr.read().decode()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not start in 300 s"
            time.sleep(1)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def _post(base: str, payload: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{base}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_champion_served_over_rest_scores_like_the_fitted_model(served: Served) -> None:
    # Python's JSON writes floats exactly (pandas' to_json rounds to 10 digits).
    split = {
        "columns": ["timestamp", "cost"],
        "data": [[str(t), float(c)] for t, c in zip(served.usage["timestamp"], served.usage["cost"], strict=True)],
    }
    with _model_server(served) as base:
        status, body = _post(base, {"dataframe_split": split})
        assert status == 200, body
        _assert_same(pd.DataFrame(body["predictions"]), _expected(served, online=True))

        status, body = _post(base, {"dataframe_split": split, "params": {"online": False}})
        assert status == 200, body
        _assert_same(pd.DataFrame(body["predictions"]), _expected(served, online=False))

        # An infinite cost comes back unscored with the reason, as from detect().
        odd = {"dataframe_records": [{"timestamp": "2024-01-01", "cost": float("inf")}]}
        status, body = _post(base, json.loads(json.dumps(odd).replace("Infinity", "1e999")))
        assert status == 200, body
        (row,) = body["predictions"]
        assert row["status"] == "invalid" and not row["is_anomaly"], row
        # A row that cannot be read is the client's mistake: 400 with the reason, not a 500.
        bad = {"dataframe_records": [{"timestamp": "not a date", "cost": 1.0}]}
        status, body = _post(base, bad)
        assert status == 400, body
