"""Baselines on tiny synthetic series; the notebook LSTM with two epochs."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.evaluation import baselines

CONFIG = PipelineConfig()


def _noisy(n: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 + rng.normal(0.0, 2.0, n)


def test_robust_z_by_hand() -> None:
    # 28 steps alternating 10 and 12: median 11, absolute deviations all 1, so MAD = 1.
    history = np.tile([10.0, 12.0], 14)
    values = np.r_[history, 20.0]
    result = baselines.robust_zscore(values, CONFIG)
    # modified z = 0.6745 * |20 - 11| / 1 = 6.0705 > 3.5
    assert result.scores[28] == pytest.approx(0.6745 * 9)
    assert result.flags[28]
    # Fewer than seven steps of history: no score.
    assert np.isnan(result.scores[:7]).all() and not result.flags[:7].any()
    # Step 7 uses the 7 steps before it: 10,12,10,12,10,12,10 -> median 10, deviations
    # 0,2,0,2,0,2,0 -> MAD 0, so the mean absolute deviation 6/7 stands in:
    # |12 - 10| / (1.253314 * 6/7) = 1.8617
    assert result.scores[7] == pytest.approx(2 / (1.253314 * 6 / 7))
    assert not result.flags[7]


def test_robust_z_flags_a_spike_but_not_noise() -> None:
    values = _noisy(120)
    values[90] += 40.0
    result = baselines.robust_zscore(values, CONFIG)
    assert result.flags[90]
    assert result.flags.sum() <= 3  # a spike, maybe an echo; not the noise


def test_isolation_forest_windows_fit_on_training_and_flag_the_spike() -> None:
    values = _noisy(400)
    values[200] += 60.0  # inside the training part (the first 320 steps)
    result = baselines.isolation_forest_windows(values, CONFIG)
    window = CONFIG.windows.size
    assert not result.flags[: window - 1].any() and np.isnan(result.scores[: window - 1]).all()
    # 314 training windows, 1% contamination: about 3 training windows are beyond the cut.
    assert 2 <= result.flags[:320].sum() <= 5
    # The windows containing the spike end at steps 200 .. 206, and they are the most isolated.
    assert result.flags[200 : 200 + window].sum() >= 2
    assert 200 <= int(np.nanargmax(result.scores)) < 200 + window
    again = baselines.isolation_forest_windows(values, CONFIG)
    np.testing.assert_array_equal(result.scores, again.scores)  # seeded
    # causal: what comes after the training part changes nothing before it
    changed = values.copy()
    changed[330:] += 25.0
    np.testing.assert_array_equal(baselines.isolation_forest_windows(changed, CONFIG).scores[:330], result.scores[:330])


def test_notebook_model_is_the_notebook_architecture() -> None:
    model = baselines.build_notebook_model(window=7, units=32)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["LSTM", "RepeatVector", "LSTM", "TimeDistributed"]
    assert model.layers[0].units == 32 and not model.layers[0].return_sequences
    assert model.layers[2].return_sequences
    assert model.output_shape == (None, 7, 1)
    # LSTM(32) on 1 feature: 4 * (32 * (1 + 32) + 32) = 4352; LSTM(32) on 32 features:
    # 4 * (32 * (32 + 32) + 32) = 8320; Dense(1): 33.
    assert model.count_params() == 4352 + 8320 + 33


def test_notebook_lstm_two_epochs_flags_drops_and_is_seeded() -> None:
    config = PipelineConfig().merged({"lstm": {"epochs": 2}})
    values = _noisy(140, seed=8)
    values[120] = 40.0  # a 60% drop from ~100, and a window unlike any in training
    result = baselines.notebook_lstm(values, config)
    assert result.note == ""
    # The decrease rule: step-over-step change below -30%.
    assert result.flags[120]
    # score > 1 is exactly the decision (the larger of error / threshold and drop / -30%)
    scored = np.isfinite(result.scores)
    np.testing.assert_array_equal(result.flags[scored], result.scores[scored] > 1.0)
    # Windows end at step 6 at the earliest; before that only the drop rule could fire.
    assert np.isnan(result.scores[0])
    again = baselines.notebook_lstm(values, config)
    np.testing.assert_allclose(result.scores, again.scores, rtol=1e-5)


def test_notebook_lstm_skips_series_too_short_to_train() -> None:
    result = baselines.notebook_lstm(_noisy(15), CONFIG)
    assert "too short" in result.note
    assert not result.flags.any() and np.isnan(result.scores).all()


def test_every_baseline_returns_one_value_per_step() -> None:
    values = _noisy(60)
    for name, method in baselines.BASELINES.items():
        if name == "notebook_lstm":
            continue  # trained above with two epochs; its default is 50
        result = method(values, CONFIG)
        assert result.flags.shape == result.scores.shape == (60,), name
        assert result.flags.dtype == bool, name


def test_the_notebook_baseline_on_two_cores_gives_what_one_process_gives() -> None:
    """The evaluation runs the notebook baseline in one spawned process per core: the same
    seeded models, so the same figures, in about half the time."""
    import pandas as pd

    from anomaly_pipelines.core.evaluation.datasets import LabelledSeries
    from anomaly_pipelines.core.evaluation.runner import run_baseline

    config = PipelineConfig().merged({"lstm": {"epochs": 2}})
    series = []
    for seed in (8, 9):
        values = _noisy(140, seed=seed)
        values[120] = 40.0
        frame = pd.DataFrame(
            {"timestamp": pd.date_range("2024-01-01", periods=140, freq="D", tz="UTC"), "value": values, "label": False}
        )
        series.append(LabelledSeries(f"s{seed}", "tiny", frame))
    alone = run_baseline("notebook_lstm", series, config)
    shared = run_baseline("notebook_lstm", series, config, workers=2)
    for s in series:
        np.testing.assert_array_equal(alone.flags[s.name], shared.flags[s.name])
        np.testing.assert_allclose(alone.scores[s.name], shared.scores[s.name], rtol=1e-4)
    assert shared.cpu_seconds is not None and shared.cpu_seconds > 1.0  # the workers' time counts
