"""A fitted model as a directory: what ``FittedDetectors.save`` writes and ``load`` reads.

The directory is the model's one persistent form: MLflow stores it as it is (inside the
logged pyfunc model, see ``core.serving``), a person can read what it learned without Python,
and loading it back scores exactly like the model that was saved. Layout:

* ``model.json``: format and version, the settings it was trained under, its customers, the
  customers skipped and why, and which stacked autoencoder holds which customers (with the
  losses training measured);
* ``lstm_autoencoder_<i>.keras``: each stacked Keras model (Keras' own format);
* ``isolation_forest.pkl``, ``local_outlier_factor.pkl``: the per-customer scikit-learn
  bundles (pickle keeps a cohort's shared estimator stored once);
* ``calibrations.pkl`` (what scoring needs) and ``calibrations.json`` (the same, for people).

Pickles are loaded from directories this project wrote (an output folder, its own MLflow
store): never load a model directory from someone you do not trust.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_pipelines.core.detector import Calibration, FittedDetectors
from anomaly_pipelines.core.model_settings import ModelSettings
from anomaly_pipelines.core.models import lstm_autoencoder as lstm
from anomaly_pipelines.core.models.outlier import CustomerOutlierModels

FORMAT = "anomaly_pipelines.fitted_detectors"
VERSION = 1
MODEL_JSON = "model.json"
CALIBRATIONS_PICKLE = "calibrations.pkl"
CALIBRATIONS_JSON = "calibrations.json"
OUTLIER_FILES = {
    "isolation_forest": "isolation_forest.pkl",
    "local_outlier_factor": "local_outlier_factor.pkl",
}


def save(fitted: FittedDetectors, directory: Path) -> Path:
    """Write ``fitted`` into ``directory`` (created; it must not hold a model already)."""
    if fitted.calibrations and fitted.settings is None:
        raise ValueError("save(): the fitted model does not record the settings it was trained under")
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / MODEL_JSON).exists():
        raise FileExistsError(f"save(): {directory} already holds a model")
    autoencoders = []
    for index, fit in enumerate(fitted.autoencoders):
        name = f"lstm_autoencoder_{index}.keras"
        fit.model.save(directory / name)
        autoencoders.append(
            {
                "file": name,
                "customer_ids": list(fit.customer_ids),
                "train_loss": _floats(fit.train_loss),
                "val_loss": _floats(fit.val_loss),
                "epochs": [int(e) for e in np.asarray(fit.epochs)],
                "history": [_floats(epoch) for epoch in fit.history],
            }
        )
    for kind, file in OUTLIER_FILES.items():
        _pickle(getattr(fitted, kind), directory / file)
    _pickle(fitted.calibrations, directory / CALIBRATIONS_PICKLE)
    (directory / CALIBRATIONS_JSON).write_text(
        json.dumps(_jsonable(fitted.calibrations), indent=1, sort_keys=True), encoding="utf-8"
    )
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "settings": fitted.settings.as_dict() if fitted.settings else None,
        "customers": sorted(fitted.calibrations),
        "skipped": fitted.skipped,
        "autoencoders": autoencoders,
    }
    # Written last: a directory without it is an interrupted save, which load() refuses.
    (directory / MODEL_JSON).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return directory


def load(directory: Path) -> FittedDetectors:
    """The model saved in ``directory``; a ``ValueError`` when it is not one or is incomplete."""
    manifest_path = directory / MODEL_JSON
    if not manifest_path.is_file():
        raise ValueError(f"{directory} holds no saved model ({MODEL_JSON} is missing)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(
            f"{directory}: model format {manifest.get('format')!r} version "
            f"{manifest.get('version')!r}; this code reads {FORMAT!r} version {VERSION}"
        )
    settings = manifest["settings"]
    keras = lstm.keras_module() if manifest["autoencoders"] else None
    autoencoders = [
        lstm.AutoencoderFit(
            keras.saving.load_model(directory / entry["file"], compile=False),
            list(entry["customer_ids"]),
            np.array(entry["train_loss"], dtype=float),
            np.array(entry["val_loss"], dtype=float),
            np.array(entry["epochs"], dtype=int),
            [tuple(np.array(epoch, dtype=float).tolist()) for epoch in entry.get("history", [])],
        )
        for entry in manifest["autoencoders"]
    ]
    fitted = FittedDetectors(
        calibrations=_unpickle(directory / CALIBRATIONS_PICKLE, dict),
        autoencoders=autoencoders,
        isolation_forest=_unpickle(directory / OUTLIER_FILES["isolation_forest"], CustomerOutlierModels),
        local_outlier_factor=_unpickle(
            directory / OUTLIER_FILES["local_outlier_factor"], CustomerOutlierModels
        ),
        skipped=dict(manifest["skipped"]),
        settings=ModelSettings.from_dict(settings) if settings is not None else None,
    )
    _check_complete(fitted, manifest["customers"], directory)
    return fitted


def _check_complete(fitted: FittedDetectors, customers: list[str], directory: Path) -> None:
    """Every listed customer has all its parts (a hand-edited or half-copied directory must
    fail here, naming what is missing, not deep inside scoring)."""
    # The slots of the stacked model that serves each customer, read once per model (a lookup
    # per customer would cost thousands of customers times the models).
    serving = fitted.autoencoders_by_customer()
    models = {id(m): m for m in serving.values()}
    slots = {key: set(m.get_layer(lstm.LAYER_NAME).customer_ids) for key, m in models.items()}
    for cid in customers:
        parts = {
            "a stacked autoencoder": cid in serving and cid in slots[id(serving[cid])],
            "calibrations": isinstance(fitted.calibrations.get(cid), Calibration),
            "isolation forests": cid in fitted.isolation_forest.models,
            "local outlier factors": cid in fitted.local_outlier_factor.models,
        }
        absent = [name for name, present in parts.items() if not present]
        if absent:
            raise ValueError(f"{directory}: customer {cid!r} is missing from {', '.join(absent)}")


def _pickle(value: Any, path: Path) -> None:
    with open(path, "wb") as handle:
        pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)


def _unpickle(path: Path, kind: type) -> Any:
    if not path.is_file():
        raise ValueError(f"{path.parent}: {path.name} is missing")
    with open(path, "rb") as handle:
        value = pickle.load(handle)  # a directory this project wrote (see the module docstring)
    if not isinstance(value, kind):
        raise ValueError(f"{path}: expected {kind.__name__}, found {type(value).__name__}")
    return value


def _floats(values: Any) -> list[float | None]:
    """JSON has no NaN: a loss training did not measure is null."""
    return [float(v) if math.isfinite(float(v)) else None for v in np.asarray(values, dtype=float)]


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, int | str | bool) or value is None:
        return value
    return str(value)
