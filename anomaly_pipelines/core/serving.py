"""The fitted model as an MLflow pyfunc model: what the registry stores, and what
``mlflow models serve`` serves.

A training's model directory (``core.model_files``) is logged once as the artifact of a
``python_function`` model whose ``predict`` scores posted rows of usage history, so any
customer's champion can be served over REST without this project's pipeline::

    mlflow models serve -m "models:/anomaly_pipelines.<customer key>@champion" --env-manager local

and scored with ``POST /invocations`` of ``{"dataframe_split": {"columns": ["timestamp",
"cost"], "data": [...]}}``. Rows are the input of ``detect()`` (``customer_id``, ``timestamp``,
``cost``); ``customer_id`` may be left out when the model holds one customer (a per-customer
training), and is needed otherwise, since one training's model serves all its customers. The
answer is one row per posted timestamp with the columns of ``detect()``, scored under the
settings the model was trained under (its decision threshold included); the request parameter
``online`` (default true) chooses online or hindsight scoring.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

from anomaly_pipelines.core.api import coerce, observations, with_left_out_rows
from anomaly_pipelines.core.detector import FittedDetectors, score_series
from anomaly_pipelines.core.series import regularize

# The name of the model directory among the pyfunc model's artifacts.
ARTIFACT = "detectors"
SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("string", "customer_id", required=False),
            # Any: MLflow's datetime type takes naive times only, and zoned ones are valid input
            # (a calendar day in that zone); JSON clients post strings, parsed like detect()'s.
            ColSpec(AnyType(), "timestamp"),
            ColSpec("double", "cost"),
        ]
    ),
    params=ParamSchema([ParamSpec("online", "boolean", True)]),
)
_REQUIREMENTS = (
    "mlflow",
    "pandas",
    "numpy",
    "pyarrow",
    "scikit-learn",
    "pyod",
    "keras",
    "tensorflow-cpu",
    "tensorflow",
    "pydantic",
    "anomaly_pipelines",
)


class DetectorsModel(mlflow.pyfunc.PythonModel):
    """``predict`` = ``detect()`` without the fitting: the logged model scores rows posted to
    it under the settings it was trained under."""

    def load_context(self, context: Any) -> None:
        self.fitted = FittedDetectors.load(Path(context.artifacts[ARTIFACT]))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if self.fitted.settings is None:  # a model of no customer: nothing can be scored
            raise MlflowException("this model holds no trained customer", INVALID_PARAMETER_VALUE)
        rows = pd.DataFrame(model_input).copy()
        if "customer_id" not in rows.columns or rows["customer_id"].isna().all():
            customers = sorted(self.fitted.calibrations)
            if len(customers) != 1:
                raise MlflowException(
                    f"this model holds {len(customers)} customers: give each row's customer_id",
                    INVALID_PARAMETER_VALUE,
                )
            rows["customer_id"] = customers[0]
        config = self.fitted.settings.config()
        try:
            observed, left_out = observations(coerce(rows))
        except ValueError as exc:  # a bad request, not a server error
            raise MlflowException(str(exc), INVALID_PARAMETER_VALUE) from exc
        series = regularize(observed, config.preprocess)
        online = bool((params or {}).get("online", True))
        # As ``detect()``: a missing, infinite or negative cost comes back with the reason.
        return with_left_out_rows(score_series(series, self.fitted, config, online=online), left_out)


def log_model(fitted: FittedDetectors, name: str) -> ModelInfo:
    """Log ``fitted`` into the active run as a pyfunc model holding its saved directory."""
    with tempfile.TemporaryDirectory(prefix="anomaly-pipelines-model-") as tmp, warnings.catch_warnings():
        # No input example: MLflow would load the model and score the example while logging,
        # which costs a TensorFlow start per training; the signature describes the input.
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        directory = fitted.save(Path(tmp) / ARTIFACT)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={ARTIFACT: str(directory)},
            signature=SIGNATURE,
            # Pinned from the installed packages: MLflow's own inference would import and run
            # the model in a subprocess.
            pip_requirements=_requirements(),
        )


def load_downloaded(model_dir: Path) -> FittedDetectors:
    """The fitted model inside a downloaded pyfunc model directory (read without building the
    pyfunc wrapper: scoring in the pipeline needs the model, not the REST interface)."""
    flavor = Model.load(str(model_dir)).flavors.get("python_function", {})
    artifacts = flavor.get("artifacts") or {}
    if ARTIFACT not in artifacts:
        raise ValueError(
            f"{model_dir.name} holds no saved model directory ({ARTIFACT!r}): logged by another "
            "project, or registered before models carried their settings; retrain the customer"
        )
    return FittedDetectors.load(model_dir / artifacts[ARTIFACT]["path"])


def _requirements() -> list[str]:
    out = []
    for package in _REQUIREMENTS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out.append(f"{package}=={metadata.version(package)}")
    return out
