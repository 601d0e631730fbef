"""A finished training kept on disk until MLflow has registered it.

Training is the expensive step (minutes to hours for thousands of customers); registering is a
few writes to a store that can be locked, full, migrating or misconfigured. Without a copy, a
registration that fails throws the training away and the retry starts from scratch. The
training asset therefore saves what it fitted before logging it and deletes the copy once the
registration succeeded; a retry of the same customers, data and settings (same fingerprint)
registers the saved training instead of fitting again.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.files import atomic_write
from anomaly_pipelines.core.series import CustomerSeries


def training_fingerprint(series: list[CustomerSeries], config: PipelineConfig) -> str:
    """A hash of everything a training depends on: every setting and every series' values."""
    digest = hashlib.sha256()
    digest.update(json.dumps(config.model_dump(mode="json"), sort_keys=True, default=str).encode())
    for s in sorted(series, key=lambda item: item.customer_id):
        digest.update(s.customer_id.encode("utf-8", "surrogatepass") + b"\0")
        digest.update(s.timestamps.as_unit("ns").asi8.tobytes())
        digest.update(s.values.astype("float64").tobytes())
        digest.update(s.filled.astype(bool).tobytes())
    return digest.hexdigest()


class TrainingCheckpoint:
    """The saved training (fitted detectors and how long they took) of one fingerprint."""

    def __init__(self, directory: Path, series: list[CustomerSeries], config: PipelineConfig) -> None:
        self.fingerprint = training_fingerprint(series, config)
        self.path = Path(directory) / f"training-{self.fingerprint[:32]}.pkl"

    def load(self) -> tuple[Any, float] | None:
        """The saved ``(fitted, training_seconds)``, or None when there is none (or it is
        unreadable, e.g. written by another version of the libraries: then training reruns)."""
        if not self.path.is_file():
            return None
        try:
            with self.path.open("rb") as handle:
                saved = pickle.load(handle)  # our own output folder, written by save() below
        except Exception:
            return None
        if not isinstance(saved, dict) or saved.get("fingerprint") != self.fingerprint:
            return None
        return saved["fitted"], float(saved["training_seconds"])

    def save(self, fitted: Any, training_seconds: float) -> None:
        """Write atomically (temporary name, then rename): a crash mid-write leaves no half file
        that a retry would trust."""
        payload = {"fingerprint": self.fingerprint, "fitted": fitted, "training_seconds": training_seconds}
        atomic_write(
            self.path,
            lambda tmp: tmp.write_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)),
        )

    def discard(self) -> None:
        """The training is registered: the copy is no longer needed."""
        self.path.unlink(missing_ok=True)
