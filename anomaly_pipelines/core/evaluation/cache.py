"""On-disk cache of detector outputs, so a full evaluation is not paid for twice.

The full run takes about 15 minutes on two cores, most of it in the notebook baseline (one
Keras model per series) and the hybrid on long per-minute series. While the detector is being
tuned the baselines do not change, and a run that is interrupted should resume where it
stopped. An entry is keyed by everything its output depends on: the detector, the data (names,
timestamps, values), the whole configuration and the source code that produces it; any change is
a miss.
Detectors are seeded, so a hit returns what a fresh run would.

Entries are ``.npz`` arrays plus a JSON header, read without pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.evaluation.datasets import LabelledSeries

CORE = Path(__file__).resolve().parents[1]
DETECTION_MODULES = ("api.py", "detector.py", "scoring.py", "series.py", "windows.py", "ids.py")
# The configuration sections detection reads; the others (sources, explanations, alerts, ...)
# cannot change a detector's output.
DETECTION_SETTINGS = {
    "preprocess", "windows", "training", "lstm", "isolation_forest", "local_outlier_factor", "decrease_rule", "hybrid",
}
# The baselines read the notebook method's numbers and nothing of the hybrid's own settings.
BASELINE_SETTINGS = {"windows", "training", "lstm", "isolation_forest", "decrease_rule"}


def default_cache_dir() -> Path:
    """Outside the repository, per user (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "anomaly_pipelines" / "evaluation"


def source_files(detector: str) -> list[Path]:
    """The code a detector's output depends on: for the hybrid, the detection modules of
    ``core`` (not the explanations, alerts or registry beside them); for a baseline, the
    baselines module and what it imports from core."""
    if detector == "hybrid":
        return sorted([*(CORE / name for name in DETECTION_MODULES), *(CORE / "models").glob("*.py")])
    return [
        CORE / "evaluation" / "baselines.py",
        CORE / "windows.py",
        CORE / "models" / "lstm_autoencoder.py",
    ]


def cache_key(detector: str, series: Iterable[LabelledSeries], config: PipelineConfig) -> str:
    digest = hashlib.sha256()
    digest.update(detector.encode())
    settings = DETECTION_SETTINGS if detector == "hybrid" else BASELINE_SETTINGS
    digest.update(config.model_dump_json(include=settings).encode())
    for path in source_files(detector):
        digest.update(path.relative_to(CORE).as_posix().encode())
        digest.update(path.read_bytes())
    for s in series:
        digest.update(s.name.encode())
        digest.update(pd.DatetimeIndex(s.frame["timestamp"]).asi8.tobytes())
        digest.update(np.ascontiguousarray(s.values, dtype=np.float64).tobytes())
    return digest.hexdigest()[:32]


def load(directory: Path, key: str) -> list[dict[str, Any]] | None:
    """The cached detections (``detector``, ``flags``, ``scores``, timings, notes) or None."""
    header_path, arrays_path = directory / f"{key}.json", directory / f"{key}.npz"
    if not (header_path.is_file() and arrays_path.is_file()):
        return None
    try:
        header = json.loads(header_path.read_text(encoding="utf-8"))
        with np.load(arrays_path, allow_pickle=False) as arrays:
            out = []
            for d, entry in enumerate(header["detections"]):
                names = header["series"]
                out.append(
                    {
                        **entry,
                        "flags": {n: arrays[f"f{d}_{i}"].astype(bool) for i, n in enumerate(names)},
                        "scores": {n: arrays[f"s{d}_{i}"] for i, n in enumerate(names)},
                    }
                )
            return out
    except (OSError, ValueError, KeyError):
        return None  # a damaged entry is a miss; it is overwritten by the fresh result


def save(directory: Path, key: str, series_names: list[str], detections: list[dict[str, Any]]) -> None:
    """Store detections given as dicts with ``flags`` and ``scores`` (per series name) and any
    JSON-serialisable fields besides."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    entries = []
    for d, det in enumerate(detections):
        flags, scores = det["flags"], det["scores"]
        for i, name in enumerate(series_names):
            arrays[f"f{d}_{i}"] = np.asarray(flags[name], dtype=bool)
            arrays[f"s{d}_{i}"] = np.asarray(scores[name], dtype=float)
        entries.append({k: v for k, v in det.items() if k not in ("flags", "scores")})
    # Write under temporary names, then rename: an interrupted write never looks like an entry.
    tmp_arrays = directory / f"{key}.tmp.npz"
    np.savez_compressed(tmp_arrays, **arrays)
    tmp_header = directory / f"{key}.tmp.json"
    tmp_header.write_text(json.dumps({"series": series_names, "detections": entries}), encoding="utf-8")
    tmp_arrays.replace(directory / f"{key}.npz")
    tmp_header.replace(directory / f"{key}.json")
