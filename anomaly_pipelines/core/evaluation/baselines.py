"""Baselines the project's detector must beat, each run on one series at a time.

* ``isolation_forest``: IsolationForest over sliding windows of raw values, fitted on the
  windows of the first 80% of the series, flagging windows beyond its 1% contamination cut.
* ``robust_z``: the value against the median and MAD of the preceding steps (modified z-score,
  threshold 3.5, as Iglewicz and Hoaglin recommend).
* ``notebook_lstm``: the original notebook method, reproduced faithfully: per series, min-max
  scaling, 7-step windows, one Keras LSTM autoencoder trained on the first 80% of history, an
  anomaly where a window's reconstruction error exceeds mean + 1.5 sigma of the training errors,
  or where the value fell more than 30% from the step before. One Keras model per series in a
  plain Python loop, exactly as the notebook did: it is also the speed baseline for the stacked
  training in ``core.models.lstm_autoencoder``.

Every baseline is causal, like the daily run: a window's score goes to the step it ends on, and
models see only the training part (the first ``train_fraction`` of the series).

Every number of the notebook method comes from ``PipelineConfig`` defaults (window size, LSTM
units, epochs, batch size, patience, validation split, learning rate, threshold sigma, training
fraction, decrease threshold, seed), so the baseline moves with the configuration it is compared
under. The other two baselines are fixed textbook methods; their constants live here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import MinMaxScaler

from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.models.lstm_autoencoder import keras_module  # imports Keras lazily
from anomaly_pipelines.core.windows import sliding_windows

IF_CONTAMINATION = 0.01
ROBUST_Z_WINDOW = 28  # steps of history behind each value: four weeks of daily data
ROBUST_Z_MIN_PERIODS = 7
ROBUST_Z_THRESHOLD = 3.5
# The modified z-score's constants: 0.6745 makes MAD consistent with a normal sigma; when more
# than half of the window is one value (MAD = 0) the mean absolute deviation stands in.
_MAD_FACTOR = 0.6745
_MEAN_AD_FACTOR = 1.253314
# Fewer training windows than this cannot hold out a validation split to stop early on.
NOTEBOOK_MIN_TRAIN_WINDOWS = 10


@dataclass(frozen=True)
class BaselineResult:
    """Per-step decisions and a continuous score (higher = more anomalous; NaN where the method
    cannot score, e.g. before its first full window). ``note`` says why a series was not scored."""

    flags: np.ndarray
    scores: np.ndarray
    note: str = ""


def _at_window_end(per_window: np.ndarray, n: int, window: int, fill: float | bool) -> np.ndarray:
    """Place one value per window at the step the window ends on, as an online detector would."""
    out = np.full(n, fill, dtype=np.asarray(per_window).dtype)
    if len(per_window):
        out[window - 1 : window - 1 + len(per_window)] = per_window
    return out


def _train_size(n: int, config: PipelineConfig) -> int:
    return int(n * config.training.train_fraction)


def isolation_forest_windows(values: np.ndarray, config: PipelineConfig) -> BaselineResult:
    """The textbook use on the training part: fit on its windows, flag the 1% most isolated
    (the forest's own contamination cut), score every window at the step it ends on."""
    values = np.asarray(values, dtype=float)
    n, window = len(values), config.windows.size
    windows = sliding_windows(values, window)
    n_train = max(_train_size(n, config) - window + 1, 0)
    if n_train < 2:
        return _unscored(n, f"too short: {n} steps")
    model = IsolationForest(
        n_estimators=config.isolation_forest.n_estimators,
        contamination=IF_CONTAMINATION,
        random_state=config.training.seed,
    ).fit(windows[:n_train])
    flagged = model.predict(windows) == -1
    scores = -model.score_samples(windows)
    return BaselineResult(
        _at_window_end(flagged, n, window, False), _at_window_end(scores, n, window, np.nan)
    )


def robust_zscore(values: np.ndarray, config: PipelineConfig) -> BaselineResult:
    """Modified z-score of each value against the ``ROBUST_Z_WINDOW`` steps before it.

    The current value is left out of its own reference, so a spike cannot hide itself.
    """
    del config  # a fixed textbook method; nothing in the pipeline config applies
    values = np.asarray(values, dtype=float)
    n = len(values)
    scores = np.full(n, np.nan)
    for i in range(ROBUST_Z_MIN_PERIODS, min(ROBUST_Z_WINDOW, n)):
        scores[i] = _modified_z(values[i], values[:i])
    if n > ROBUST_Z_WINDOW:
        history = np.lib.stride_tricks.sliding_window_view(values[:-1], ROBUST_Z_WINDOW)
        current = values[ROBUST_Z_WINDOW:]
        median = np.median(history, axis=1)
        mad = np.median(np.abs(history - median[:, None]), axis=1)
        mean_ad = np.mean(np.abs(history - median[:, None]), axis=1)
        scores[ROBUST_Z_WINDOW:] = _z_from(current, median, mad, mean_ad)
    flags = np.nan_to_num(scores, nan=0.0) > ROBUST_Z_THRESHOLD
    return BaselineResult(flags, scores)


def _modified_z(value: float, history: np.ndarray) -> float:
    median = float(np.median(history))
    deviation = np.abs(history - median)
    z = _z_from(
        np.array([value]), np.array([median]), np.array([np.median(deviation)]), np.array([deviation.mean()])
    )
    return float(z[0])


def _z_from(value: np.ndarray, median: np.ndarray, mad: np.ndarray, mean_ad: np.ndarray) -> np.ndarray:
    diff = np.abs(value - median)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(
            mad > 0,
            _MAD_FACTOR * diff / mad,
            np.where(mean_ad > 0, diff / (_MEAN_AD_FACTOR * mean_ad), np.where(diff > 0, np.inf, 0.0)),
        )
    return z


def build_notebook_model(window: int, units: int) -> Any:
    """The notebook's autoencoder: LSTM encoder, the code repeated per step, LSTM decoder, and a
    dense output per step."""
    keras = keras_module()
    return keras.Sequential(
        [
            keras.Input(shape=(window, 1)),
            keras.layers.LSTM(units),
            keras.layers.RepeatVector(window),
            keras.layers.LSTM(units, return_sequences=True),
            keras.layers.TimeDistributed(keras.layers.Dense(1)),
        ]
    )


def notebook_lstm(values: np.ndarray, config: PipelineConfig) -> BaselineResult:
    """The notebook method on one series (see the module docstring).

    The min-max scaler is fitted on the training part only, so the scaled values the model
    learns on do not depend on anomalies that come later. The score is the larger of the window
    error over its threshold and the drop over the decrease threshold, so ``score > 1`` is
    exactly the notebook's decision.
    """
    keras = keras_module()  # lazy: importing TensorFlow takes seconds
    values = np.asarray(values, dtype=float)
    n, window = len(values), config.windows.size
    n_train = _train_size(n, config)
    n_train_windows = n_train - window + 1
    if n_train_windows < NOTEBOOK_MIN_TRAIN_WINDOWS:
        return _unscored(n, f"too short: {n} steps")

    scaler = MinMaxScaler().fit(values[:n_train, None])
    scaled = scaler.transform(values[:, None])[:, 0]
    x = sliding_windows(scaled, window)[:, :, None]
    # Weeks of per-minute data give tens of thousands of near-identical windows; like the
    # project's detector (``lstm.max_training_windows``), train on an even sample of them.
    # Two years of daily data (580 windows) stay whole, as in the notebook.
    stride = -(-n_train_windows // config.lstm.max_training_windows)
    x_train = x[:n_train_windows:stride]

    lstm = config.lstm
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.training.seed)
    model = build_notebook_model(window, lstm.units)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lstm.learning_rate), loss="mse")
    model.fit(
        x_train,
        x_train,
        epochs=lstm.epochs,
        batch_size=lstm.batch_size,
        validation_split=lstm.validation_fraction,
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=lstm.patience, restore_best_weights=True
            )
        ],
        shuffle=True,
        verbose=0,
    )
    recon = model.predict(x, batch_size=4096, verbose=0)
    errors = np.mean((recon - x) ** 2, axis=(1, 2))
    train_errors = errors[:n_train_windows]
    threshold = float(train_errors.mean() + lstm.threshold_sigma * train_errors.std())

    ratio = errors / threshold if threshold > 0 else np.where(errors > threshold, np.inf, 0.0)
    lstm_scores = _at_window_end(ratio, n, window, np.nan)
    lstm_flags = _at_window_end(errors > threshold, n, window, False)
    rate = _step_change(values)
    decrease = config.decrease_rule
    drop_scores = rate / decrease.threshold if decrease.enabled else np.full(n, np.nan)
    drop_flags = np.nan_to_num(rate, nan=0.0) < decrease.threshold if decrease.enabled else np.zeros(n, bool)
    scores = np.fmax(lstm_scores, drop_scores)
    return BaselineResult(lstm_flags | drop_flags, scores)


def _step_change(values: np.ndarray) -> np.ndarray:
    """``pct_change``: (x[t] - x[t-1]) / x[t-1]; undefined after a zero."""
    rate = np.full(len(values), np.nan)
    prev = values[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        rate[1:] = np.where(prev != 0, (values[1:] - prev) / prev, np.nan)
    return rate


def _unscored(n: int, note: str) -> BaselineResult:
    return BaselineResult(np.zeros(n, dtype=bool), np.full(n, np.nan), note)


Baseline = Callable[[np.ndarray, PipelineConfig], BaselineResult]

BASELINES: dict[str, Baseline] = {
    "isolation_forest": isolation_forest_windows,
    "robust_z": robust_zscore,
    "notebook_lstm": notebook_lstm,
}
