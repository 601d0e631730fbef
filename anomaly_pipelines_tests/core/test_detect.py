"""The public ``detect()`` on small data: frequencies, short series, determinism, detection."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from anomaly_pipelines import detect
from anomaly_pipelines.core.config import LSTMConfig
from anomaly_pipelines.core.models.lstm_autoencoder import reconstruction_errors, train_autoencoders
from anomaly_pipelines.core.windows import sliding_windows

FAST = {"lstm": {"epochs": 3}}


def _daily(customer: str, days: int, seed: int, start: str = "2024-01-01") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=days, freq="D", tz="UTC")
    weekly = np.where(ts.dayofweek >= 5, 60.0, 100.0)
    return pd.DataFrame({"customer_id": customer, "timestamp": ts, "cost": weekly * (1 + rng.normal(0, 0.03, days))})


@pytest.fixture(scope="module")
def scored() -> tuple[pd.DataFrame, pd.DataFrame]:
    spiky = _daily("spiky", 240, 1)
    spiky.loc[200, "cost"] *= 4  # a one-day spike in the test period
    droppy = _daily("droppy", 240, 2)
    droppy.loc[[210, 211], "cost"] *= 0.1  # a two-day drop
    quiet = _daily("quiet", 240, 3)
    usage = pd.concat([spiky, droppy, quiet], ignore_index=True)
    return usage, detect(usage, FAST)


def test_output_contract(scored: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    usage, scores = scored
    assert len(scores) == len(usage)
    for column in ("customer_id", "timestamp", "cost", "expected_cost", "hybrid_score", "is_anomaly", "reasons"):
        assert column in scores
    assert scores["is_anomaly"].dtype == bool
    assert scores["hybrid_score"].notna().all()


def test_spike_and_drop_flagged_quiet_customer_not(scored: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    usage, scores = scored
    by = scores.set_index(["customer_id", "timestamp"])
    spike_day = usage.loc[200, "timestamp"]
    drop_days = usage.loc[[210, 211], "timestamp"]
    assert by.loc[("spiky", spike_day), "is_anomaly"]
    assert "residual" in by.loc[("spiky", spike_day), "reasons"]
    assert by.loc[("droppy", drop_days.iloc[0]), "is_anomaly"]
    quiet = scores[scores.customer_id == "quiet"]
    assert quiet["is_anomaly"].sum() <= 1


def test_same_input_same_scores(scored: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    usage, scores = scored
    again = detect(usage, FAST)
    pd.testing.assert_frame_equal(scores, again)


def test_short_series_comes_back_unscored_with_reason() -> None:
    usage = pd.concat([_daily("long", 120, 1), _daily("short", 10, 2)], ignore_index=True)
    scores = detect(usage, FAST)
    short = scores[scores.customer_id == "short"]
    assert len(short) == 10 and not short["is_anomaly"].any()
    assert short["reasons"].str.contains("insufficient history").all()


def test_five_minute_metrics_with_a_burst() -> None:
    rng = np.random.default_rng(4)
    ts = pd.date_range("2024-03-01", periods=288 * 4, freq="5min", tz="UTC")
    daily = 50 + 20 * np.sin(2 * np.pi * np.arange(len(ts)) / 288)
    values = daily + rng.normal(0, 1.5, len(ts))
    values[1000:1004] += 60
    scores = detect(pd.DataFrame({"customer_id": "api", "timestamp": ts, "cost": values}), FAST)
    assert scores.loc[1000:1003, "is_anomaly"].any()
    assert scores["is_anomaly"].mean() < 0.02


def test_on_sub_daily_series_the_lstm_alerts_alone_at_lstm_alone_times_its_threshold() -> None:
    """``hybrid.lstm_alone`` is read at scoring time: one fitted 5-minute model, the step the
    LSTM finds most unusual flagged once that step's LSTM score reaches ``lstm_alone`` times its
    threshold, and nothing changed where the LSTM's vote is below the score already given."""
    from anomaly_pipelines.core import scoring
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_series
    from anomaly_pipelines.core.series import regularize

    rng = np.random.default_rng(4)
    ts = pd.date_range("2024-03-01", periods=288 * 4, freq="5min", tz="UTC")
    values = 50 + 20 * np.sin(2 * np.pi * np.arange(len(ts)) / 288) + rng.normal(0, 1.5, len(ts))
    values[1000:1012] = values[1000:1012][::-1] + 8 * np.sin(np.arange(12))  # a shape, not a level
    config = PipelineConfig().merged(FAST)
    series = regularize(pd.DataFrame({"customer_id": "api", "timestamp": ts, "cost": values}))
    fitted = fit_detectors(series, config)

    def scored(multiple: float) -> pd.DataFrame:
        return score_series(series, fitted, config.merged({"hybrid": {"lstm_alone": multiple}}))

    never = scored(0.0)
    lstm = scoring.normalise(never["lstm_error"].to_numpy(), *fitted.calibrations["api"].thresholds["lstm"])
    lstm = np.nan_to_num(lstm, nan=0.0)
    top = int(np.argmax(np.where(never["status"] == "scored", lstm, 0.0)))
    assert lstm[top] > 0 and not never["is_anomaly"].iloc[top], lstm[top]
    alone = scored(lstm[top])
    assert alone["is_anomaly"].iloc[top] or alone["is_repeat"].iloc[top]
    # the LSTM is named wherever its lone vote flagged a step, though the window gate caps it
    assert "lstm" in alone["reasons"].iloc[top]
    assert "lstm" not in never["reasons"].iloc[top]
    vote = lstm * config.hybrid.decision_threshold / lstm[top]
    below = vote <= never["hybrid_score"].to_numpy()
    np.testing.assert_array_equal(alone["hybrid_score"].to_numpy()[below], never["hybrid_score"].to_numpy()[below])
    assert (alone["hybrid_score"].to_numpy()[~below] > never["hybrid_score"].to_numpy()[~below]).all()


def test_on_sub_daily_series_the_residual_alone_needs_a_window_models_backing() -> None:
    """``hybrid.residual_alone_support``: raising it only takes away flags, and only at steps
    where no window model scores the window ending there at that share of its threshold; the
    hybrid score changes nowhere else."""
    from anomaly_pipelines.core import scoring
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_series
    from anomaly_pipelines.core.series import regularize

    rng = np.random.default_rng(8)
    ts = pd.date_range("2024-03-01", periods=288 * 4, freq="5min", tz="UTC")
    values = 50 + 20 * np.sin(2 * np.pi * np.arange(len(ts)) / 288) + rng.standard_t(3, len(ts))
    values[900:906] += 40  # an incident the window models see too
    values[[960, 1010, 1060, 1110]] += np.array([14.0, 16.0, 18.0, 20.0])  # single odd steps
    config = PipelineConfig().merged(FAST)
    series = regularize(pd.DataFrame({"customer_id": "api", "timestamp": ts, "cost": values}))
    fitted = fit_detectors(series, config)
    cal = fitted.calibrations["api"]

    def scored(support: float) -> pd.DataFrame:
        return score_series(series, fitted, config.merged({"hybrid": {"residual_alone_support": support}}), online=True)

    free = scored(0.0)
    columns = {"lstm": "lstm_error", "isolation_forest": "isolation_forest_score", "local_outlier_factor": "local_outlier_factor_score"}
    backing = np.max(
        [np.nan_to_num(scoring.normalise(free[col].to_numpy(), *cal.thresholds[name]), nan=0.0) for name, col in columns.items()],
        axis=0,
    )
    was = (free["is_anomaly"] | free["is_repeat"]).to_numpy()
    lone = was & (free["reasons"] == "residual").to_numpy()
    assert lone.sum() >= 2, free.loc[was, ["residual_score", "reasons"]]
    support = float(np.median(backing[lone]))
    strict = scored(support)
    now = (strict["is_anomaly"] | strict["is_repeat"]).to_numpy()
    assert not (now & ~was).any()
    lost = was & ~now
    assert lost.any() and (backing[lost] < support).all()
    changed = ~np.isclose(strict["hybrid_score"].to_numpy(), free["hybrid_score"].to_numpy())
    assert (backing[changed] < support).all()
    assert now[900:906].any()


def test_a_step_no_window_model_has_scored_keeps_the_residuals_lone_vote() -> None:
    """No model score (no whole window yet, or every model weighted 0) is no evidence against
    the residual; a score below the backing is."""
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import _supported

    vote = np.array([1.5, 1.5, 1.5])
    normalised = {"lstm": np.array([0.1, 0.5, 0.0]), "isolation_forest": np.zeros(3), "local_outlier_factor": np.zeros(3)}
    raw = {name: np.array([1.0, 1.0, np.nan]) for name in normalised}
    config = PipelineConfig()
    np.testing.assert_array_equal(_supported(vote, normalised, raw, config), [0.0, 1.5, 1.5])
    silent = config.merged({"hybrid": {"weights": {"lstm": 0.0, "isolation_forest": 0.0, "local_outlier_factor": 0.0}}})
    np.testing.assert_array_equal(_supported(vote, normalised, raw, silent), vote)


def test_constant_and_zero_series_do_not_crash() -> None:
    ts = pd.date_range("2024-01-01", periods=100, freq="D", tz="UTC")
    usage = pd.concat(
        [
            pd.DataFrame({"customer_id": "zero", "timestamp": ts, "cost": 0.0}),
            pd.DataFrame({"customer_id": "flat", "timestamp": ts, "cost": 5.0}),
        ]
    )
    scores = detect(usage, FAST)
    assert np.isfinite(scores["hybrid_score"]).all()
    assert not scores["is_anomaly"].any()


def test_missing_columns_error_names_them() -> None:
    with pytest.raises(ValueError, match="cost"):
        detect(pd.DataFrame({"customer_id": ["a"], "timestamp": ["2024-01-01"]}))


def test_stacked_training_matches_training_alone() -> None:
    """A customer's autoencoder does not depend on who shares its stacked model."""
    rng = np.random.default_rng(0)
    series = {cid: np.sin(np.arange(120) * 2 * np.pi / 7) + rng.normal(0, 0.1, 120) for cid in ("a", "b", "c")}
    windows = {cid: sliding_windows(v, 7) for cid, v in series.items()}
    config = LSTMConfig(epochs=3)
    together = train_autoencoders(list(windows), list(windows.values()), config, seed=1)
    alone = train_autoencoders(["b"], [windows["b"]], config, seed=1)
    err_together = reconstruction_errors(together.model, ["b"], [windows["b"]])[0]
    err_alone = reconstruction_errors(alone.model, ["b"], [windows["b"]])[0]
    np.testing.assert_allclose(err_together, err_alone, rtol=1e-3, atol=1e-6)


def test_the_written_out_backward_pass_equals_tensorflows_gradient() -> None:
    """Training backpropagates through time by hand (``_reconstruction_for_training``): same
    reconstruction, and every weight's gradient TensorFlow's own to float rounding."""
    import tensorflow as tf

    from anomaly_pipelines.core.models import lstm_autoencoder as lstm

    lstm.keras_module()
    layer = lstm.StackedLSTMAutoencoder(3, 5, 8)
    layer.set_weights(lstm._initial_weights(["a", "b", "c"], 8, seed=3))
    rng = np.random.default_rng(3)
    x = tf.constant(rng.random((4, 3, 5)).astype(np.float32))
    weight = tf.constant(rng.random((4, 3, 5)).astype(np.float32))
    reconstruct = lstm._reconstruction_for_training()

    def gradients(forward: Callable[[], Any]) -> tuple[Any, list[Any]]:
        with tf.GradientTape() as tape:
            out = forward()
            loss = tf.reduce_sum(tf.square(out - x) * weight)
        return out, tape.gradient(loss, layer.trainable_variables)

    out_tf, grads_tf = gradients(lambda: layer(x))
    out_own, grads_own = gradients(lambda: reconstruct(x, *(tf.convert_to_tensor(v) for v in layer.stacked_weights())))
    np.testing.assert_allclose(out_own.numpy(), out_tf.numpy(), rtol=1e-6)
    for variable, theirs, ours in zip(layer.trainable_variables, grads_tf, grads_own, strict=True):
        scale = np.abs(theirs.numpy()).max()
        assert scale > 0, variable.name
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5 * scale, err_msg=variable.name)


def test_a_kept_trainer_starts_each_training_afresh() -> None:
    """The traced step of a shape is kept for the next training of that shape (tracing costs
    seconds); weights and optimizer state are not: the second customer trains as if first."""
    from anomaly_pipelines.core.models import lstm_autoencoder

    rng = np.random.default_rng(1)
    windows = {cid: sliding_windows(np.sin(np.arange(90) * 2 * np.pi / 7) + rng.normal(0, 0.2, 90), 7) for cid in "ab"}
    config = LSTMConfig(epochs=3)
    train_autoencoders(["a"], [windows["a"]], config, seed=1)
    after_a = train_autoencoders(["b"], [windows["b"]], config, seed=1)
    lstm_autoencoder._TRAINERS.clear()
    fresh = train_autoencoders(["b"], [windows["b"]], config, seed=1)
    for kept, new in zip(after_a.model.get_weights(), fresh.model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, new)
    np.testing.assert_array_equal(after_a.val_loss, fresh.val_loss)


def test_enough_work_compiles_the_training_step_and_trains_alike() -> None:
    """Large trainings compile the step with XLA (``lstm.compile_min_work``); the compiled step
    computes what the plain graph does."""
    rng = np.random.default_rng(2)
    windows = [sliding_windows(np.sin(np.arange(90) * 2 * np.pi / 7) + rng.normal(0, 0.2, 90), 7)]
    plain = train_autoencoders(["a"], windows, LSTMConfig(epochs=3), seed=1)
    compiled = train_autoencoders(["a"], windows, LSTMConfig(epochs=3, compile_min_work=0), seed=1)
    np.testing.assert_allclose(
        reconstruction_errors(compiled.model, ["a"], windows)[0],
        reconstruction_errors(plain.model, ["a"], windows)[0],
        rtol=1e-3,
        atol=1e-6,
    )


def test_groups_trained_in_worker_processes_equal_groups_trained_here() -> None:
    """Lanes (``lstm.training_processes``) are a way to use the cores, not another training:
    every group's weights and epochs are the ones this process trains, in group order, each
    worker's progress reaches the caller, and the errors a worker scores are its model's."""
    from anomaly_pipelines.core.models.lstm_workers import train_groups

    rng = np.random.default_rng(3)
    groups = []
    for g in range(3):
        inputs = [rng.normal(0, 1, 60 + 10 * g) for _ in range(2)]
        windows = [sliding_windows(x[: 40 + 10 * g], 7) for x in inputs]
        groups.append(([f"{g}{i}" for i in range(2)], windows, inputs if g else None))

    class Report:
        def __init__(self) -> None:
            self.started: list[int] = []
            self.ended: list[int] = []
            self.epochs: list[int] = []

        def start_cohort(self, size: int) -> None:
            self.started.append(size)

        def end_cohort(self, size: int) -> None:
            self.ended.append(size)

        def epoch(self, epoch: int, epochs: int, train_loss: float, val_loss: float) -> None:
            self.epochs.append(epoch)

    here = train_groups(groups, LSTMConfig(epochs=2, training_processes=1), seed=4)
    report = Report()
    lanes = train_groups(groups, LSTMConfig(epochs=2, training_processes=2), seed=4, report=report)
    assert [fit.customer_ids for fit in lanes] == [ids for ids, _, _ in groups]
    for (ids, _, inputs), a, b in zip(groups, here, lanes, strict=True):
        if inputs is None:
            assert a.scored is None and b.scored is None
        else:
            by_model = reconstruction_errors(b.model, ids, [sliding_windows(x, 7) for x in inputs])
            for mine, theirs, model in zip(a.scored, b.scored, by_model, strict=True):
                np.testing.assert_allclose(theirs, mine, rtol=1e-5)
                np.testing.assert_allclose(theirs, model, rtol=1e-5)
        for wa, wb in zip(a.model.get_weights(), b.model.get_weights(), strict=True):
            np.testing.assert_array_equal(wa, wb)
        # The validation pass runs on fewer threads in a worker: its sums may round differently.
        np.testing.assert_allclose(a.val_loss, b.val_loss, rtol=1e-6)
        np.testing.assert_allclose(a.history, b.history, rtol=1e-6)
        np.testing.assert_array_equal(a.epochs, b.epochs)
    assert report.started == report.ended == [2, 2, 2]
    assert sorted(report.epochs) == [1, 1, 1, 2, 2, 2]


def test_lanes_are_used_only_when_each_trains_two_groups_unless_set() -> None:
    """A worker's start (TensorFlow, the compile) costs seconds that one group does not win back."""
    from anomaly_pipelines.core.models.lstm_workers import lanes_for
    from anomaly_pipelines.core.processes import usable_cores

    cores = usable_cores()
    assert lanes_for(2 * cores - 1, LSTMConfig()) == 1
    assert lanes_for(2 * cores, LSTMConfig()) == cores
    assert lanes_for(2, LSTMConfig(training_processes=2)) == 2
    assert lanes_for(5, LSTMConfig(training_processes=1)) == 1


def test_a_failing_training_worker_says_why_and_stops_the_others() -> None:
    from anomaly_pipelines.core.models.lstm_workers import train_groups

    class Ends:
        def __init__(self) -> None:
            self.ended: list[int] = []

        def start_cohort(self, size: int) -> None: ...

        def end_cohort(self, size: int) -> None:
            self.ended.append(size)

        def epoch(self, epoch: int, epochs: int, train_loss: float, val_loss: float) -> None: ...

    # a's training is long (hundreds of epochs); b's windows are not windows, it fails at once
    groups = [(["a"], [np.random.default_rng(0).normal(size=(400, 7))], None), (["b"], [np.zeros(20)], None)]
    report = Ends()
    with pytest.raises(RuntimeError, match=r"LSTM training worker failed \(exit 1\): IndexError"):
        train_groups(groups, LSTMConfig(epochs=2000, patience=2000, training_processes=2), seed=0, report=report)
    assert report.ended == []  # a's worker was stopped, not waited for


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through Linux's /proc")
def test_training_workers_stop_when_their_parent_is_killed() -> None:
    """A killed batch step (out of memory, SIGKILL) must not leave workers training for nobody."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import numpy as np\n"
        "from anomaly_pipelines.core.config import LSTMConfig\n"
        "from anomaly_pipelines.core.models.lstm_workers import train_groups\n"
        "w = np.random.default_rng(0).normal(size=(400, 7))\n"
        "train_groups([(['a'], [w], None), (['b'], [w], None)], LSTMConfig(epochs=100000, patience=100000, training_processes=2), 0)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])

    def workers() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
                command = (entry / "cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if int(stat[1]) == parent.pid and b"lstm_workers" in command:
                found.append(int(entry.name))
        return found

    deadline = time.monotonic() + 120
    while len(started := workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(started) == 2
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    def running(pid: int) -> bool:
        try:  # a zombie ("Z") has stopped; only its new parent has not collected it yet
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 60
    while any(running(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in started if running(pid)], "workers still training without their parent"


def test_scoring_the_fitted_series_reuses_the_fit_scores_only_while_nothing_changed() -> None:
    """Fitting scores its series with every model to learn the thresholds; scoring them right
    after (``detect()``) reuses those scores: the same frames as scoring afresh, while a changed
    series is scored afresh."""
    import dataclasses
    import pickle

    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_series
    from anomaly_pipelines.core.series import regularize

    config = PipelineConfig().merged(FAST)
    series = regularize(pd.concat([_daily("a", 200, 1), _daily("b", 200, 2)], ignore_index=True))
    fitted = fit_detectors(series, config)
    assert set(fitted.fit_scores) == {"a", "b"}
    afresh = pickle.loads(pickle.dumps(fitted))  # pickling leaves the fit scores behind
    assert afresh.fit_scores == {}
    for online in (True, False):
        pd.testing.assert_frame_equal(score_series(series, fitted, config, online), score_series(series, afresh, config, online))

    spiked = series[0].values.copy()
    spiked[-1] *= 5
    changed = [dataclasses.replace(series[0], values=spiked), series[1]]
    reused = score_series(changed, fitted, config)
    assert reused["is_anomaly"].iloc[199]
    pd.testing.assert_frame_equal(reused, score_series(changed, afresh, config))


def test_latest_scoring_equals_the_tail_of_full_scoring() -> None:
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_latest, score_series
    from anomaly_pipelines.core.series import regularize

    # "c" (shorter) ends in a runaway ramp 11 days after a one-day spike: each day of the ramp
    # repeats the spike's incident, which only the flags before the ramp's first day can tell
    ramp = _daily("c", 450, 3)
    ramp.loc[ramp.index[-36], "cost"] *= 4
    ramp.loc[ramp.index[-25:], "cost"] *= np.linspace(2, 4, 25)
    usage = pd.concat([_daily("a", 500, 1), _daily("b", 500, 2), ramp], ignore_index=True)
    usage.loc[499, "cost"] *= 3  # the newest day of "a" is a spike
    # "b" is billed on the 1st, and the invoice grows: day-of-month effects follow recent months
    first = (usage.customer_id == "b") & (usage.timestamp.dt.day == 1)
    usage.loc[first, "cost"] += np.where(usage.loc[first, "timestamp"] < pd.Timestamp("2024-10-01", tz="UTC"), 80.0, 160.0)
    config = PipelineConfig().merged(FAST)
    series = regularize(usage)
    fitted = fit_detectors(series, config)
    assert fitted.calibrations["b"].day_of_month_offsets  # learned on training
    full = score_series(series, fitted, config, online=True)
    # the grown invoice is expected once three months have shown it
    assert not full[(full.customer_id == "b") & (full.timestamp >= "2025-01-01")]["is_anomaly"].any()
    assert len(full) > 2 * 400  # longer than the tail daily scoring reads
    full = full.groupby("customer_id").tail(3).reset_index(drop=True)
    latest = score_latest(series, fitted, config, steps=3)
    # float32 inference differs in the last bits with the batch shape (oneDNN), hence rtol
    pd.testing.assert_frame_equal(latest, full, check_exact=False, rtol=2e-3)
    assert latest.loc[latest.customer_id == "a", "is_anomaly"].iloc[-1]
    assert latest.loc[latest.customer_id == "c", "is_repeat"].all()
    # the expectation of the newest steps is computed exactly as in the full scoring
    np.testing.assert_array_equal(latest["expected_cost"], full["expected_cost"])


def test_online_rows_equal_the_daily_run_on_history_cut_at_that_step() -> None:
    """``online=True`` reports at each step exactly what the daily run reported that day."""
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_latest, score_series
    from anomaly_pipelines.core.series import CustomerSeries, regularize

    usage = pd.concat([_daily("a", 420, 1), _daily("b", 420, 2)], ignore_index=True)
    usage.loc[380:383, "cost"] *= 2.5  # an incident in "a"'s test part
    usage.loc[420 + 150, "cost"] *= 0.2  # a drop in "b"'s training part
    config = PipelineConfig().merged(FAST)
    series = regularize(usage)
    fitted = fit_detectors(series, config)
    online = score_series(series, fitted, config, online=True)
    retro = score_series(series, fitted, config, online=False)
    for step in (150, 151, 300, 380, 381, 383, 386, 419):
        cut = [
            CustomerSeries(s.customer_id, s.timestamps[: step + 1], s.values[: step + 1], s.filled[: step + 1], s.frequency)
            for s in series
        ]
        daily = score_latest(cut, fitted, config).set_index("customer_id")
        for cid in ("a", "b"):
            row = online[(online.customer_id == cid)].iloc[step]
            assert row["timestamp"] == daily.loc[cid, "timestamp"]
            for column in ("hybrid_score", "expected_cost", "lstm_error", "isolation_forest_score"):
                assert row[column] == pytest.approx(daily.loc[cid, column], rel=2e-3, abs=1e-9), (cid, step, column)
            assert row["is_anomaly"] == daily.loc[cid, "is_anomaly"], (cid, step)
    # the incident is reported online, and hindsight differs from what the day could know
    assert online[(online.customer_id == "a")].iloc[380:384]["is_anomaly"].any()
    assert not np.allclose(online["lstm_error"].fillna(0), retro["lstm_error"].fillna(0))


def test_microsecond_timestamps_score_like_nanoseconds() -> None:
    # pandas 3 readers often keep microseconds; the warm-up and cleaning masks must not care.
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_series
    from anomaly_pipelines.core.series import CustomerSeries, regularize

    usage = _daily("a", 300, 1)
    usage.loc[250:259, "cost"] += np.linspace(30, 300, 10)  # a runaway ramp, cleaned from history
    config = PipelineConfig().merged(FAST)
    series = regularize(usage)[0]
    fitted = fit_detectors([series], config)
    micro = CustomerSeries(series.customer_id, series.timestamps.as_unit("us"), series.values, series.filled, series.frequency)
    expected = score_series([series], fitted, config)
    actual = score_series([micro], fitted, config)
    np.testing.assert_allclose(actual["expected_cost"], expected["expected_cost"])
    assert actual["is_anomaly"].tolist() == expected["is_anomaly"].tolist()


def test_a_holiday_dip_that_recurs_a_year_later_is_expected_and_a_past_incident_is_not() -> None:
    usage = _daily("a", 760, 5)  # 2024-01-01 .. 2026-01-29
    ts = usage["timestamp"]
    holiday = (ts.dt.month == 12) & (ts.dt.day == 25)
    usage.loc[holiday, "cost"] *= 0.4  # Christmas: a dip every year
    incident = ts == pd.Timestamp("2024-06-12", tz="UTC")
    usage.loc[incident, "cost"] *= 4  # once only
    scores = detect(usage, FAST, online=True).set_index("timestamp")
    assert scores.loc[pd.Timestamp("2024-12-25", tz="UTC"), "is_anomaly"]  # first time: surprising
    second = scores.loc[pd.Timestamp("2025-12-25", tz="UTC")]
    assert not second["is_anomaly"] and abs(second["cost"] - second["expected_cost"]) < 0.15 * second["cost"]
    # last year's one-off spike is not expected again on its date
    later = scores.loc[pd.Timestamp("2025-06-12", tz="UTC")]
    assert abs(later["expected_cost"] - later["cost"]) < 0.15 * later["cost"]
    without = detect(usage, {**FAST, "hybrid": {"annual_recurrence": False}}, online=True).set_index("timestamp")
    assert without.loc[pd.Timestamp("2025-12-25", tz="UTC"), "is_anomaly"]


def test_a_quarter_end_batch_is_expected_from_the_second_quarter_on_and_a_month_end_incident_is_not() -> None:
    usage = _daily("q", 480, 8)  # 2024-01-01 .. 2025-04-24
    ts = usage["timestamp"]
    usage.loc[ts.dt.is_month_end & ts.dt.month.isin([3, 6, 9, 12]), "cost"] *= 2.5  # quarter close
    usage.loc[ts == pd.Timestamp("2024-08-31", tz="UTC"), "cost"] *= 2.5  # once only, at a month's end
    scores = detect(usage, FAST, online=True).set_index("timestamp")
    without = detect(usage, {**FAST, "hybrid": {"quarterly_recurrence": False}}, online=True).set_index("timestamp")

    def expected_share(frame: pd.DataFrame, day: str) -> float:
        row = frame.loc[pd.Timestamp(day, tz="UTC")]
        return float(row["expected_cost"] / row["cost"])

    assert expected_share(scores, "2024-03-31") < 0.5  # the first quarter end is a surprise
    for later in ("2024-06-30", "2024-09-30", "2024-12-31", "2025-03-31"):
        assert 0.85 < expected_share(scores, later) < 1.15, later
    for later in ("2024-09-30", "2024-12-31"):
        assert not scores.loc[pd.Timestamp(later, tz="UTC"), "is_anomaly"]
        assert without.loc[pd.Timestamp(later, tz="UTC"), "is_anomaly"]
        assert expected_share(without, later) < 0.5
    # August's one-off incident is not expected again at November's end
    assert 0.85 < expected_share(scores, "2024-11-30") < 1.15


def test_a_filled_gap_is_never_an_anomaly() -> None:
    """Three weeks missing: their interpolated values cross weekends at weekday level, far
    from the weekly cycle, but they are a guess between two observations, not spend. A day
    missing inside an incident neither counts as spend nor splits the incident in two (the
    days after it would be a repeat of the days before, and never alerted)."""
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_series
    from anomaly_pipelines.core.series import regularize

    usage = _daily("gappy", 400, 10)
    usage.loc[200:206, "cost"] *= 3  # a week-long incident, its fourth day missing
    usage = usage.drop(usage.index[[203, *range(300, 321)]])
    config = PipelineConfig().merged(FAST)
    series = regularize(usage)
    scores = score_series(series, fit_detectors(series, config), config, online=True)
    filled = scores["is_filled"].to_numpy(dtype=bool)
    assert np.flatnonzero(filled).tolist() == [203, *range(300, 321)]
    assert scores.loc[filled, "residual_score"].max() > 5  # a weekend filled at weekday level
    assert not scores.loc[filled, "is_anomaly"].any()
    incident = scores.iloc[200:207]
    assert incident["is_anomaly"].tolist() == [True, True, True, False, True, True, True]
    assert not incident["is_repeat"].any()


def test_monthly_cost_is_expected_from_last_year_and_a_doubled_month_is_found() -> None:
    """Monthly invoices follow the year: a month is far from the last months' median, so a
    month expected from them hides a doubled bill in the season's swing. Measured against the
    same months of earlier years, it stands out, and the residual alone reports it (six years
    of months are too few windows for the window models to agree)."""
    rng = np.random.default_rng(11)
    ts = pd.date_range("2019-01-01", periods=84, freq="MS", tz="UTC")
    season = 100 + 20 * np.sin(2 * np.pi * np.arange(84) / 12)
    frames = []
    for name in ("steady", "doubled"):
        cost = season * (1 + rng.normal(0, 0.03, 84))
        if name == "doubled":
            cost[74] *= 2.0
        frames.append(pd.DataFrame({"customer_id": name, "timestamp": ts, "cost": cost}))
    scores = detect(pd.concat(frames), FAST, online=True)
    flagged = scores[scores["is_anomaly"]]
    assert list(zip(flagged["customer_id"], flagged["timestamp"], strict=True)) == [("doubled", ts[74])]
    # Two years are needed to know a month's place in the year.
    steady = scores[scores["customer_id"] == "steady"].reset_index(drop=True)
    assert steady["status"].iloc[:24].eq("warmup").all() and steady["status"].iloc[31:].eq("scored").all()


def test_the_decrease_rule_is_a_daily_rule() -> None:
    rng = np.random.default_rng(6)
    ts = pd.date_range("2024-03-01", periods=288 * 6, freq="5min", tz="UTC")
    # a request rate that halves and doubles from one 5-minute step to the next all day
    values = np.where(np.arange(len(ts)) % 2 == 0, 100.0, 50.0) * (1 + rng.normal(0, 0.02, len(ts)))
    scores = detect(pd.DataFrame({"customer_id": "api", "timestamp": ts, "cost": values}), FAST, online=True)
    assert not scores["decrease_flag"].any()
    assert not scores["reasons"].str.contains("decrease").any()


def test_a_drop_votes_only_when_it_is_confirm_z_spreads_below_its_expectation() -> None:
    """``decrease_rule.confirm_z`` is read at scoring time: one fitted model, the same drop,
    a vote from the decrease rule just below the step's own depth and none just above it."""
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_series
    from anomaly_pipelines.core.series import regularize

    usage = _daily("dippy", 240, 9)
    usage.loc[215, "cost"] *= 0.6  # a 40% one-day dip on a weekday
    config = PipelineConfig().merged(FAST)
    series = regularize(usage)
    fitted = fit_detectors(series, config)
    base = score_series(series, fitted, config)
    depth = float(base["residual_score"].iloc[215])
    assert base["decrease_flag"].iloc[215] and depth > 1.0, depth

    def score_at(confirm_z: float) -> float:
        settings = config.merged({"decrease_rule": {"confirm_z": confirm_z}})
        return float(score_series(series, fitted, settings)["hybrid_score"].iloc[215])

    assert score_at(depth - 0.1) > score_at(depth + 0.1)
    assert score_at(depth + 0.1) == score_at(100.0)  # as if the rule never voted


def test_a_confirmed_drop_most_of_the_way_to_the_residuals_threshold_is_news_by_itself() -> None:
    """A 40% fall on a noisy daily series sits just short of the residual's threshold: the mean
    of the residual and the decrease rule misses it; ``decrease_rule.alone_residual`` (read at
    scoring time) flags it while the step reaches that share of the threshold, and not above."""
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_series
    from anomaly_pipelines.core.series import regularize

    rng = np.random.default_rng(9)
    cost = 100 * (1 + rng.normal(0, 0.08, 240))
    cost[212] = 0.6 * cost[211]
    ts = pd.date_range("2024-01-01", periods=240, freq="D", tz="UTC")
    series = regularize(pd.DataFrame({"customer_id": "dippy", "timestamp": ts, "cost": cost}))
    config = PipelineConfig().merged(FAST)
    fitted = fit_detectors(series, config)
    share = float(score_series(series, fitted, config, online=True)["residual_score"].iloc[212])
    share /= fitted.calibrations["dippy"].thresholds["residual"][1]
    assert 0.8 <= share < 1.0, share

    def step(alone_residual: float) -> pd.Series:
        settings = config.merged({"decrease_rule": {"alone_residual": alone_residual}})
        return score_series(series, fitted, settings, online=True).iloc[212]

    never, below, above = step(0.0), step(share - 0.05), step(share + 0.05)
    assert not never["is_anomaly"]
    assert below["is_anomaly"] and "decrease" in below["reasons"]
    assert not above["is_anomaly"]
    assert above["hybrid_score"] == never["hybrid_score"]


def test_thresholds_are_learned_without_a_long_training_incident() -> None:
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors
    from anomaly_pipelines.core.series import regularize

    clean = _daily("a", 400, 7)
    dirty = clean.assign(customer_id="b")
    dirty.loc[150:163, "cost"] *= 2.0  # a fortnight-long unlabelled incident inside training
    fitted = fit_detectors(regularize(pd.concat([clean, dirty], ignore_index=True)), PipelineConfig().merged(FAST))
    t_clean = fitted.calibrations["a"].thresholds["residual"][1]
    t_dirty = fitted.calibrations["b"].thresholds["residual"][1]
    assert t_dirty < 1.5 * t_clean, (t_dirty, t_clean)
    kept = PipelineConfig().merged({**FAST, "hybrid": {"threshold_exclude_run": 0}})
    t_kept = fit_detectors(regularize(dirty), kept).calibrations["b"].thresholds["residual"][1]
    assert t_kept > 2 * t_clean  # what the incident did to the threshold before


def test_window_detectors_are_pyod_models_behind_one_interface() -> None:
    from anomaly_pipelines.core.config import IsolationForestConfig, LocalOutlierFactorConfig
    from anomaly_pipelines.core.models import outlier

    rng = np.random.default_rng(8)
    train = rng.normal(size=(400, 7))
    odd = np.full((1, 7), 6.0)
    models = {
        "isolation_forest": outlier.fit_isolation_forest(train, IsolationForestConfig(), 1),
        "local_outlier_factor": outlier.fit_local_outlier_factor(train, LocalOutlierFactorConfig()),
    }
    for name in ("ecod", "copod", "hbos", "knn"):
        models[name] = outlier.window_detector(name, 1).fit(outlier.window_features(train))
    for name, model in models.items():
        assert type(model).__module__.startswith("pyod.models"), name
        normal = outlier.anomaly_score(model, train[:50])
        assert outlier.anomaly_score(model, odd)[0] > np.quantile(normal, 0.9), name
    with pytest.raises(ValueError, match="unknown window detector"):
        outlier.window_detector("prophet", 1)


def test_an_incident_does_not_echo_through_the_windows_after_it_online() -> None:
    usage = pd.concat([_daily("a", 300, 9), _daily("b", 300, 10)], ignore_index=True)
    usage.loc[250:252, "cost"] *= 5  # a three-day spike of "a"
    config = {**FAST}
    online = detect(usage, config, online=True)
    a = online[online.customer_id == "a"].reset_index(drop=True)
    assert a.loc[250:252, "is_anomaly"].any()
    # the six windows after it still hold the spike; without the gate they kept voting
    assert not (a.loc[254:259, "is_anomaly"] | a.loc[254:259, "is_repeat"]).any()
    ungated = detect(usage, {**config, "hybrid": {"window_gate": 0}}, online=True)
    ungated_a = ungated[ungated.customer_id == "a"].reset_index(drop=True)
    assert (ungated_a.loc[253:259, "hybrid_score"] > a.loc[253:259, "hybrid_score"]).any()


def test_days_declared_normal_become_the_baseline_at_once() -> None:
    """A planned migration doubles the cost. Held out as an incident, it keeps alerting for
    weeks; declared normal (feedback ``planned``), the expectation follows within days."""
    import dataclasses

    from anomaly_pipelines.core.config import as_config
    from anomaly_pipelines.core.detector import fit_detectors, score_series
    from anomaly_pipelines.core.series import CustomerSeries

    n, shift = 240, 200
    stamps = pd.date_range("2024-01-01", periods=n, freq="D", tz="UTC")
    values = 100 + 20 * (stamps.day_of_week < 5) + np.random.default_rng(0).normal(0, 2, n)
    values[shift:] *= 2.0
    series = CustomerSeries("acme", stamps, values, np.zeros(n, bool), pd.Timedelta(days=1))
    config = as_config({"lstm": {"epochs": 2}, "training": {"train_fraction": 0.75}})
    fitted = fit_detectors([series], config)
    held_out = score_series([series], fitted, config)
    declared = dataclasses.replace(series, declared_normal=np.arange(n) >= shift)
    normal = score_series([declared], fitted, config)
    error = np.abs(normal["expected_cost"].to_numpy() - values) / values
    assert (error[shift + 7 : shift + 21] < 0.15).all()
    assert not normal["is_anomaly"].to_numpy()[shift + 10 :].any()
    assert held_out["is_anomaly"].to_numpy()[shift + 10 : shift + 21].all()


def test_training_reports_progress_and_keeps_the_loss_curve() -> None:
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors
    from anomaly_pipelines.core.series import regularize

    usage = pd.concat([_daily("a", 200, 1), _daily("b", 200, 2)], ignore_index=True)
    lines: list[str] = []
    config = PipelineConfig().merged({"lstm": {"epochs": 3, "patience": 5}})
    fitted = fit_detectors(regularize(usage), config, progress=lines.append)
    (fit,) = fitted.autoencoders
    assert len(fit.history) == 3 and all(np.isfinite(v) for pair in fit.history for v in pair)
    assert lines[0].startswith("LSTM training: 0 of 2 customers done; cohort of 2, epoch 1/3")
    assert "s left" in lines[0]


def test_the_way_down_from_a_sub_daily_peak_is_a_repeat_and_the_daily_run_agrees() -> None:
    """Hourly: after a spike, the steps the residual alone still flags below ``peak_ratio`` of
    the peak belong to it (``is_repeat``); the daily run reports each of them the same way.
    The window models are given no vote, so every flag here is the residual's alone (with them,
    the windows holding the spike echo it and the steps after it are theirs too)."""
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_latest, score_series
    from anomaly_pipelines.core.series import CustomerSeries, regularize

    rng = np.random.default_rng(5)
    ts = pd.date_range("2024-01-01", periods=24 * 30, freq="h", tz="UTC")
    daily = 100 + 30 * np.sin(2 * np.pi * ts.hour.to_numpy() / 24)
    cost = daily * (1 + rng.normal(0, 0.02, len(ts)))
    peak = len(ts) - 30
    cost[peak : peak + 6] = daily[peak : peak + 6] * np.array([3.0, 2.2, 2.0, 1.9, 1.8, 1.7])
    series = regularize(pd.DataFrame({"customer_id": "h", "timestamp": ts, "cost": cost}))
    silent = {"lstm": 0.0, "isolation_forest": 0.0, "local_outlier_factor": 0.0}
    config = PipelineConfig().merged({"lstm": {"epochs": 1}, "hybrid": {"weights": silent, "lstm_alone": 0}})
    fitted = fit_detectors(series, config)
    online = score_series(series, fitted, config, online=True)
    run = online.iloc[peak : peak + 6]
    flagged = run["is_anomaly"] | run["is_repeat"]
    assert flagged.all(), run[["cost", "expected_cost", "residual_score", "reasons"]]
    assert run["is_anomaly"].iloc[0]
    below = run["residual_score"] < config.hybrid.peak_ratio * run["residual_score"].iloc[0]
    way_down = below & flagged
    assert way_down.iloc[1:].sum() >= 3, run[["residual_score", "reasons"]]
    assert run.loc[way_down, "is_repeat"].all() and not run.loc[way_down, "is_anomaly"].any()
    # without the rule the same steps are new anomalies: the rule, not the quiet period, decides
    off = score_series(series, fitted, config.merged({"hybrid": {"peak_ratio": 0}}), online=True)
    assert off.iloc[peak : peak + 6].loc[way_down.to_numpy(), "is_anomaly"].all()
    s = series[0]
    for step in (peak, peak + 1, peak + 3, peak + 5):
        cut = [CustomerSeries(s.customer_id, s.timestamps[: step + 1], s.values[: step + 1], s.filled[: step + 1], s.frequency)]
        day = score_latest(cut, fitted, config).iloc[0]
        row = online.iloc[step]
        assert (row["is_anomaly"], row["is_repeat"]) == (day["is_anomaly"], day["is_repeat"]), step
        assert row["hybrid_score"] == pytest.approx(day["hybrid_score"], rel=2e-3, abs=1e-9), step


def test_an_incident_far_beyond_the_alarm_before_it_is_news_not_a_repeat() -> None:
    """Hourly: a modest spike raises an alarm; six hours later, inside its quiet period, an
    outage-sized surge. Reported as a repeat of the first, the surge would reach nobody; at
    ``escalation`` times the earlier alarm's residual it is a new anomaly, and the daily run
    says so too. Window models are given no vote, so both flags are the residual's."""
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_latest, score_series
    from anomaly_pipelines.core.series import CustomerSeries, regularize

    rng = np.random.default_rng(6)
    ts = pd.date_range("2024-01-01", periods=24 * 30, freq="h", tz="UTC")
    daily = 100 + 30 * np.sin(2 * np.pi * ts.hour.to_numpy() / 24)
    cost = daily * (1 + rng.normal(0, 0.02, len(ts)))
    small, surge = len(ts) - 40, len(ts) - 34
    cost[small] = daily[small] * 1.5
    cost[surge] = daily[surge] * 6.0
    series = regularize(pd.DataFrame({"customer_id": "h", "timestamp": ts, "cost": cost}))
    silent = {"lstm": 0.0, "isolation_forest": 0.0, "local_outlier_factor": 0.0}
    config = PipelineConfig().merged({"lstm": {"epochs": 1}, "hybrid": {"weights": silent, "lstm_alone": 0}})
    fitted = fit_detectors(series, config)
    online = score_series(series, fitted, config, online=True)
    assert online["is_anomaly"].iloc[small] and online["is_anomaly"].iloc[surge]
    ratio = online["residual_score"].iloc[surge] / online["residual_score"].iloc[small]
    assert ratio >= config.hybrid.escalation
    off = score_series(series, fitted, config.merged({"hybrid": {"escalation": 0}}), online=True)
    assert off["is_repeat"].iloc[surge] and not off["is_anomaly"].iloc[surge]
    s = series[0]
    cut = [CustomerSeries(s.customer_id, s.timestamps[: surge + 1], s.values[: surge + 1], s.filled[: surge + 1], s.frequency)]
    day = score_latest(cut, fitted, config).iloc[0]
    assert day["is_anomaly"] and not day["is_repeat"]


def test_a_weekday_drop_as_deep_as_the_quiet_weekends_is_found_in_two_weeks_of_metrics() -> None:
    """Two weeks of 5-minute load from a Monday, weekends at half the weekdays' level: too
    short for a weekly cycle. Measured against the daily cycle, each weekend is a drop from
    Friday (and each Monday a jump), which sets the spread, so a weekday falling by 40% for
    six hours is no news. With weekdays and weekends expected apart it is found, online and in
    the daily run, and the last weekend (in the test part) raises nothing."""
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_latest, score_series
    from anomaly_pipelines.core.series import CustomerSeries, regularize

    rng = np.random.default_rng(1)
    ts = pd.date_range("2024-03-04", periods=14 * 288, freq="5min", tz="UTC")
    hour = ts.hour.to_numpy() + ts.minute.to_numpy() / 60
    level = 100 * (1 + 0.5 * np.sin((hour - 9) / 24 * 2 * np.pi)) * np.where(ts.day_of_week >= 5, 0.5, 1.0)
    load = level * rng.normal(1, 0.05, len(ts))
    first = 11 * 288 + 10 * 12  # the second Friday, 10:00
    load[first:first + 72] *= 0.6
    series = regularize(pd.DataFrame({"customer_id": "load", "timestamp": ts, "cost": load}))
    config = PipelineConfig().merged({"lstm": {"epochs": 2}})
    found = {}
    for apart in (False, True):
        # The default keeps weekends apart; 0 turns that off.
        tried = config if apart else config.merged({"hybrid": {"weekend_level_change": 0.0}})
        fitted = fit_detectors(series, tried)
        assert fitted.calibrations["load"].weekends_apart == apart
        summary = fitted.training_summary().iloc[0]  # what users see of it, in MLflow too
        assert summary["weekends_apart"] == apart and summary["cycle_steps"] == 288
        assert summary["scored_from"] == fitted.calibrations["load"].warm_until
        assert pd.isna(summary["weekends_scored_from"]) != apart
        online = score_series(series, fitted, tried, online=True)
        found[apart] = online["is_anomaly"].to_numpy()
    # The first weekend has no weekend before it to be expected from: warm-up, like the first
    # two days. The second one is scored.
    status = online["status"].to_numpy()
    assert (status[5 * 288 : 7 * 288] == "warmup").all() and (status[12 * 288 :] == "scored").all()
    assert not found[False][first:first + 72].any()
    alarms = np.flatnonzero(found[True])
    assert alarms.size and alarms[0] >= first and alarms[0] < first + 72
    assert not found[True][12 * 288:].any()  # the last weekend is expected
    s = series[0]
    end = alarms[0] + 1
    cut = [CustomerSeries(s.customer_id, s.timestamps[:end], s.values[:end], s.filled[:end], s.frequency)]
    assert score_latest(cut, fitted, tried).iloc[0]["is_anomaly"]


def test_a_metric_stuck_at_one_value_is_found_and_counts_that_often_repeat_are_not() -> None:
    """Hourly: a metric whose agent stopped repeats its last reading for eight hours. It stays
    within the noise of its gentle daily wave, and the window models are given no vote, so
    without ``hybrid.stuck_run`` nothing reports it. With it, the run is an
    anomaly once it is three times the longest run of training (here 1 step, so 6 steps at
    the least), online and in the daily run alike. A count that repeats values all the time
    (a run of 24 zeros in training) is not stuck after the same eight hours."""
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_latest, score_series
    from anomaly_pipelines.core.series import CustomerSeries, regularize

    rng = np.random.default_rng(4)
    ts = pd.date_range("2024-01-01", periods=24 * 30, freq="h", tz="UTC")
    wave = 100 + 5 * np.sin(2 * np.pi * ts.hour.to_numpy() / 24)
    metric = wave * (1 + rng.normal(0, 0.03, len(ts)))
    counts = rng.poisson(0.3, len(ts)).astype(float)
    counts[:30] = [0.0] * 5 + [1.0] + [0.0] * 24  # a run of 24 zeros early in training
    first = len(ts) - 50
    metric[first : first + 8] = metric[first - 1]
    counts[first : first + 8] = counts[first - 1]
    usage = pd.concat(
        [
            pd.DataFrame({"customer_id": "metric", "timestamp": ts, "cost": metric}),
            pd.DataFrame({"customer_id": "counts", "timestamp": ts, "cost": counts}),
        ]
    )
    series = regularize(usage)
    silent = {"lstm": 0.0, "isolation_forest": 0.0, "local_outlier_factor": 0.0}
    config = PipelineConfig().merged({"lstm": {"epochs": 1}, "hybrid": {"weights": silent, "lstm_alone": 0}})
    fitted = fit_detectors(series, config)
    online = score_series(series, fitted, config, online=True)
    stuck = online[online["reasons"].str.contains("stuck")]
    # The run counts its first, unchanged reading: step first + 4 is the 6th in a row.
    assert stuck["customer_id"].unique().tolist() == ["metric"]
    metric_rows = online[online["customer_id"] == "metric"].reset_index(drop=True)
    assert metric_rows.index[metric_rows["reasons"].str.contains("stuck")].tolist() == list(range(first + 4, first + 8))
    assert metric_rows["is_anomaly"].iloc[first + 4]
    off = score_series(series, fitted, config.merged({"hybrid": {"stuck_run": 0}}), online=True)
    assert not off[off["customer_id"] == "metric"]["is_anomaly"].iloc[first : first + 8].any()
    s = next(x for x in series if x.customer_id == "metric")
    end = first + 5
    cut = [CustomerSeries(s.customer_id, s.timestamps[:end], s.values[:end], s.filled[:end], s.frequency)]
    day = score_latest(cut, fitted, config).iloc[0]
    assert "stuck" in day["reasons"] and day["is_anomaly"] == metric_rows["is_anomaly"].iloc[end - 1]


def test_a_metric_that_moves_to_a_new_level_for_good_is_news_once_and_the_daily_run_agrees() -> None:
    """5-minute: a metric steps up for good. The shift is flagged from its first step; once it
    has settled (``hybrid.shift_span``) the plateau is nothing new, where before it stayed
    flagged until the seasonal history had learned the level two days later (each of those
    steps an alarm past any labelled window). The daily run reports every step the same."""
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_latest, score_series
    from anomaly_pipelines.core.series import CustomerSeries, regularize

    rng = np.random.default_rng(8)
    n, shift = 288 * 10, 288 * 9
    ts = pd.date_range("2024-01-01", periods=n, freq="5min", tz="UTC")
    cost = 20 + 3 * np.sin(2 * np.pi * np.arange(n) / 288) + rng.normal(0, 1.5, n)
    cost[shift:] += 25
    series = regularize(pd.DataFrame({"customer_id": "cpu", "timestamp": ts, "cost": cost}))
    config = PipelineConfig().merged({"lstm": {"epochs": 1}})
    fitted = fit_detectors(series, config)
    online = score_series(series, fitted, config, online=True)
    flagged = np.flatnonzero(online["is_anomaly"].to_numpy())
    span = int(pd.Timedelta(config.hybrid.shift_span) / pd.Timedelta("5min"))
    assert flagged.size and flagged[0] == shift
    assert flagged[-1] < shift + span + 12, flagged[-5:]
    unsettled = config.merged({"hybrid": {"shift_span": "0h"}})  # the window models see it too
    off = score_series(series, fit_detectors(series, unsettled), unsettled, online=True)
    assert np.flatnonzero(off["is_anomaly"].to_numpy())[-1] > shift + 3 * span
    s = series[0]
    for step in (shift + 3, shift + span + 6, shift + 200):
        cut = [CustomerSeries(s.customer_id, s.timestamps[: step + 1], s.values[: step + 1], s.filled[: step + 1], s.frequency)]
        day = score_latest(cut, fitted, config).iloc[0]
        row = online.iloc[step]
        assert (row["is_anomaly"], row["is_repeat"]) == (day["is_anomaly"], day["is_repeat"]), step
        assert row["hybrid_score"] == pytest.approx(day["hybrid_score"], rel=2e-3, abs=1e-9), step


def _half_hourly_rides(weeks: int, weekly: bool, seed: int) -> pd.DataFrame:
    """Half-hourly demand with a rush-hour day; with ``weekly``, weekends have their own shape."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=weeks * 7 * 48, freq="30min", tz="UTC")
    hour = np.asarray(ts.hour + ts.minute / 60)
    weekday = 10 + 12 * np.exp(-((hour - 8.5) ** 2) / 4) + 14 * np.exp(-((hour - 19) ** 2) / 6)
    weekend = 9 + 9 * np.exp(-((hour - 14) ** 2) / 18)
    level = np.where(np.asarray(ts.dayofweek) >= 5, weekend, weekday) if weekly else weekday
    return pd.DataFrame({"customer_id": f"rides-{weekly}", "timestamp": ts, "cost": level * (1 + rng.normal(0, 0.04, len(ts)))})


def test_a_sub_daily_series_whose_weekends_differ_gets_a_weekly_cycle_and_its_holiday_found() -> None:
    from anomaly_pipelines.core.api import usage_series
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import _cycle, training_layout

    one_epoch = {"lstm": {"epochs": 1}}
    config = PipelineConfig().merged(one_epoch)
    rides = _half_hourly_rides(8, weekly=True, seed=3)
    holiday = np.flatnonzero(pd.DatetimeIndex(rides["timestamp"]).normalize() == pd.Timestamp("2024-02-20", tz="UTC"))
    rides.loc[holiday, "cost"] *= 0.55  # a Tuesday with a Sunday's demand or less, in the test part
    plain = _half_hourly_rides(8, weekly=False, seed=4)
    cycles = {s.customer_id: _cycle(s, *training_layout(s, config), config) for s in usage_series(pd.concat([rides, plain]), config)}
    assert cycles == {"rides-True": 7 * 48, "rides-False": 48}  # no weekly shape: two days of warm-up
    (alone,) = usage_series(rides, config)
    daily_only = config.merged({"hybrid": {"weekly_cycle_gain": 0.0}})
    assert _cycle(alone, *training_layout(alone, daily_only), daily_only) == 48
    scores = detect(rides, one_epoch, online=True)
    flagged = np.flatnonzero(scores["is_anomaly"].to_numpy())
    assert np.isin(flagged, holiday).any()
    # Weekends are no surprise: nothing flagged outside the holiday and the windows that still
    # hold its last hours.
    around = np.arange(holiday[0], holiday[-1] + 7)
    assert np.isin(flagged, around).all(), scores.loc[flagged[~np.isin(flagged, around)], "timestamp"]


def _portfolio_scored(days: int, drops: dict[int, list[int]]) -> tuple[Callable[..., pd.DataFrame], Callable[[int], pd.DataFrame]]:
    """12 daily customers, customer ``i`` dropping to 40% on each day of ``drops[i]``, fitted
    once: a function scoring every step online (under changed decision settings if given),
    and one giving the daily run's scores of a day."""
    from anomaly_pipelines.core.config import PipelineConfig
    from anomaly_pipelines.core.detector import fit_detectors, score_latest, score_series
    from anomaly_pipelines.core.series import CustomerSeries, regularize

    usage = pd.concat([_daily(f"c{i:02d}", days, 100 + i) for i in range(12)], ignore_index=True)
    for i, steps in drops.items():
        usage.loc[[i * days + step for step in steps], "cost"] *= 0.4
    config = PipelineConfig().merged({"lstm": {"epochs": 1}})
    series = regularize(usage)
    fitted = fit_detectors(series, config)

    def online(changes: dict[str, Any] | None = None) -> pd.DataFrame:
        return score_series(series, fitted, config.merged(changes or {}), online=True)

    def daily_run(step: int) -> pd.DataFrame:
        cut = [CustomerSeries(s.customer_id, s.timestamps[: step + 1], s.values[: step + 1], s.filled[: step + 1], s.frequency) for s in series]
        return score_latest(cut, fitted, config).set_index("customer_id")

    return online, daily_run


def test_a_holiday_in_its_second_year_is_still_a_portfolio_move_for_a_customer_it_is_new_to() -> None:
    """Christmas a year on: four customers dipped last year too, so each expects it now and
    barely deviates. The portfolio still moved: a fifth customer, whose spend did not dip last
    Christmas, dips with them and is explained by the move, not flagged alone; a drop of one
    customer on an ordinary day still is an anomaly."""
    first, second, alone = 359, 724, 700  # 2024-12-25, 2025-12-25, 2025-12-01
    score, daily_run = _portfolio_scored(760, {**{i: [first, second] for i in range(4)}, 4: [second], 11: [alone]})
    online = score()
    day = online.groupby("customer_id").nth(second).set_index("customer_id")
    assert str(day["timestamp"].iloc[0].date()) == "2025-12-25"
    # the four who dipped last year expect it: their own deviation is small
    assert (day.loc[[f"c{i:02d}" for i in range(4)], "residual_score"] < 3).all()
    assert not day["is_anomaly"].any(), day[["cost", "expected_cost", "reasons"]]
    assert "portfolio_move" in day.loc["c04", "reasons"]
    assert online[online.customer_id == "c11"].iloc[alone]["is_anomaly"]
    daily = daily_run(second)  # the daily run on that day counts the same portfolio
    assert (daily["is_anomaly"] == day["is_anomaly"]).all()
    assert (daily["reasons"] == day["reasons"]).all()


def test_a_drop_shared_by_a_fifth_of_the_portfolio_is_a_portfolio_move_and_the_daily_run_agrees() -> None:
    """A holiday that a year of history has not shown yet: 4 of 12 customers drop the same day.
    That day is a portfolio move, not 4 incidents; a drop of one customer alone still is one."""
    holiday, alone = 260, 270
    score, daily_run = _portfolio_scored(300, {**{i: [holiday] for i in range(4)}, 11: [alone]})
    online = score()
    day = online.groupby("customer_id").nth(holiday).set_index("customer_id")
    moved = [f"c{i:02d}" for i in range(4)]
    assert not day["is_anomaly"].any(), day[["cost", "expected_cost", "reasons"]]
    assert all("portfolio_move" in day.loc[cid, "reasons"] for cid in moved)
    assert online[online.customer_id == "c11"].iloc[alone]["is_anomaly"]
    # without the rule the shared drop is four anomalies
    off = score({"hybrid": {"portfolio_move_share": 0}})
    assert off.groupby("customer_id").nth(holiday)["is_anomaly"].sum() >= 3
    daily = daily_run(holiday)  # the daily run on that day counts the same portfolio
    assert (daily["is_anomaly"] == day["is_anomaly"]).all()
    assert (daily["reasons"] == day["reasons"]).all()


def test_identical_spikes_seen_all_through_training_raise_no_alarm() -> None:
    """A clean count (NAB's art_increase_spike_density): zero, with a pair of spikes of 20
    every 100 five-minute steps. Every spike has the same residual, and the residual's
    threshold, the largest training score, lands on that tie: flagged at or beyond its
    threshold, each spike reached it and one opened an alarm that chained on as repeats. A
    score the training reached on dozens of steps is not beyond the alarm budget."""
    ts = pd.date_range("2024-01-01", periods=288 * 14, freq="5min", tz="UTC")
    values = np.zeros(len(ts))
    values[::100] = values[6::100] = 20.0
    scores = detect(pd.DataFrame({"customer_id": "errors", "timestamp": ts, "cost": values}), FAST, online=True)
    assert (scores["status"] == "scored").sum() > 2000
    assert not scores["is_anomaly"].any() and not scores["is_repeat"].any()
