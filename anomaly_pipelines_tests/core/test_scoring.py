import warnings

import numpy as np
import pandas as pd
import pytest

from anomaly_pipelines.core import scoring


def test_seasonal_expectation_uses_same_phase_and_ignores_one_bad_cycle() -> None:
    week = np.array([10, 10, 10, 10, 10, 2, 2], dtype=float)
    values = np.tile(week, 6)
    values[14 + 5] = 100.0  # one anomalous Saturday two weeks in
    expected = scoring.seasonal_expectation(values, period=7, cycles=4, fallback=7)
    # Saturday of week 5 looks back at 4 Saturdays, one of them 100: the median stays 2
    assert expected[35 + 5] == 2.0
    assert expected[35 + 0] == 10.0


def test_decrease_rate_is_nan_after_zero() -> None:
    rate = scoring.decrease_rate(np.array([10.0, 6.0, 0.0, 5.0]))
    assert np.isnan(rate[0]) and rate[1] == -0.4 and rate[2] == -1.0 and np.isnan(rate[3])


def test_threshold_reaches_beyond_a_moderate_quantile() -> None:
    center, threshold = scoring.learn_threshold(np.arange(101, dtype=float), 0.95, reach=2.0)
    assert center == 50.0 and threshold == 95.0 + 2 * 45.0
    norm = scoring.normalise(np.array([50.0, 185.0, 320.0, np.nan]), center, threshold)
    assert norm.tolist() == [0.0, 1.0, 2.0, 0.0]


def test_threshold_is_robust_to_a_few_training_incidents() -> None:
    rng = np.random.default_rng(0)
    clean = np.abs(rng.normal(size=1000))
    dirty = np.r_[clean, np.full(20, 40.0)]  # 2% of training is an unlabelled incident
    _, t_clean = scoring.learn_threshold(clean, 0.95, reach=2.0)
    _, t_dirty = scoring.learn_threshold(dirty, 0.95, reach=2.0)
    assert abs(t_dirty - t_clean) / t_clean < 0.2
    assert t_dirty < 10  # an extreme quantile would have learned the incident (40) as normal


def test_flat_training_signal_gets_a_minimum_spread() -> None:
    center, threshold = scoring.learn_threshold(np.ones(10), 0.95, reach=2.0)
    assert threshold >= center * 1.1


def test_hybrid_is_mean_of_two_largest() -> None:
    sig = {"a": np.array([2.0, 0.5]), "b": np.array([0.0, 0.5]), "c": np.array([1.0, 3.0])}
    assert scoring.hybrid(sig, {}).tolist() == [1.5, 1.75]
    assert scoring.hybrid(sig, {"c": 0.0}).tolist() == [1.0, 0.5]


def test_capped_hybrid_needs_a_second_signal() -> None:
    # One detector 50x over its threshold and nothing else: capped at 2, the mean is 1 < 1.25.
    alone = {"lstm": np.array([50.0, 50.0]), "residual": np.array([0.0, 0.6])}
    assert scoring.hybrid(alone, {}, cap=2.0).tolist() == [1.0, 1.3]
    assert scoring.hybrid(alone, {}).tolist() == [25.0, 25.3]


def test_seasonal_expectation_skips_removed_values_and_bridges_a_missing_cycle() -> None:
    week = np.array([10, 10, 10, 10, 10, 2, 2], dtype=float)
    values = np.tile(week, 8) * 1.0
    values[28:35] = np.nan  # a whole week removed from history (an incident)
    expected = scoring.seasonal_expectation(values, period=7, cycles=4, fallback=7, fill=False)
    # The week after the hole still gets weekday 10 and weekend 2, from the weeks before it.
    np.testing.assert_allclose(expected[35:42], week)
    # Nothing known before the first step: NaN without fill, the first value with it.
    assert np.isnan(expected[0])
    assert scoring.seasonal_expectation(values, 7, 4, 7)[0] == 10.0


def test_constant_runs_count_repeats_and_restart_after_a_filled_step() -> None:
    values = np.array([1.0, 2.0, 2.0, 2.0, 3.0, 5.0, 5.0, 5.0, 5.0, 5.0])
    filled = np.zeros(10, dtype=bool)
    assert scoring.constant_runs(values, filled).tolist() == [1, 1, 2, 3, 1, 1, 2, 3, 4, 5]
    filled[7] = True  # a gap filled between two equal readings is flat by construction
    assert scoring.constant_runs(values, filled).tolist() == [1, 1, 2, 3, 1, 1, 2, 0, 1, 2]
    block = scoring.constant_runs(np.vstack([values, values]), np.vstack([filled, ~filled & False]))
    assert block[1].tolist() == [1, 1, 2, 3, 1, 1, 2, 3, 4, 5]


def test_weekends_apart_needs_every_weekend_day_beyond_the_weekdays_own_spread() -> None:
    """Hourly, two weeks from a Monday, a daily wave; weekdays wander 2% from day to day."""
    rng = np.random.default_rng(0)
    stamps = pd.date_range("2024-03-04", periods=14 * 24, freq="h")
    wave = 100 + 30 * np.sin(2 * np.pi * stamps.hour.to_numpy() / 24)
    day_level = np.repeat(1 + rng.normal(0, 0.02, 14), 24)
    weekend = np.asarray(stamps.day_of_week >= 5)

    def apart(levels: np.ndarray, min_change: float = 0.15) -> bool:
        return scoring.weekends_apart(wave * day_level * levels, stamps, 24, min_change)

    assert apart(np.where(weekend, 0.5, 1.0))
    assert apart(np.where(weekend, 1.4, 1.0))  # busier weekends too
    assert not apart(np.ones(14 * 24))
    assert not apart(np.where(weekend, 0.5, 1.0), min_change=0)  # the setting turns it off
    assert not apart(np.where(weekend, 0.9, 1.0))  # under 15% is not worth a cycle of its own
    assert apart(np.where(weekend, 0.6, 1.0), min_change=0.5)  # the default: 2/3 and less
    assert not apart(np.where(weekend, 0.75, 1.0), min_change=0.5)
    # One quiet Saturday (an outage) and three ordinary weekend days are no pattern.
    assert not apart(np.where(np.asarray(stamps.normalize() == pd.Timestamp("2024-03-09")), 0.5, 1.0))
    # Nor is a weekend as far off as weekdays wander from each other.
    wandering = np.repeat(np.exp(rng.normal(0, 0.3, 14)), 24)
    assert not scoring.weekends_apart(wave * wandering * np.where(weekend, 0.7, 1.0), stamps, 24, 0.15)
    # Ratios need positive levels.
    assert not apart(np.where(weekend, 0.5, 1.0) - 1.0)


def test_recent_day_of_month_offsets_follow_a_changed_charge() -> None:
    days = np.tile(np.arange(1, 31), 6)  # six 30-day months
    residuals = np.zeros((1, days.size))
    charge = np.array([50.0, 50.0, 50.0, 100.0, 100.0, 100.0])  # the invoice doubles in month 4
    residuals[0, days == 1] = charge
    residuals[0, (days == 15)] = [0.0, 80.0, 0.0, 0.0, 0.0, 0.0]  # one odd month is not a pattern
    prior = np.zeros((1, 32))
    prior[0, 1] = 50.0
    out = scoring.recent_day_of_month_offsets(residuals, days, np.array([[1.0]]), prior)
    firsts = out[0, days == 1]
    # Months 1-3: the training prior; then the median of the last three 1sts, which follows
    # the bigger invoice as soon as two of them have seen it (month 6).
    assert firsts.tolist() == [50.0, 50.0, 50.0, 50.0, 50.0, 100.0]
    assert not out[0, days == 15].any()


def test_day_of_month_offsets_need_consistency() -> None:
    ts = pd.date_range("2024-01-01", periods=180, freq="D", tz="UTC")
    res = np.zeros(180)
    res[ts.day == 1] = 50.0
    res[ts.day == 15] = np.where(np.arange((ts.day == 15).sum()) % 2 == 0, 50.0, -50.0)
    offsets = scoring.day_of_month_offsets(ts, res, sigma=1.0)
    assert offsets == {1: 50.0}


def _plain_day_of_month_offsets(
    timestamps: pd.DatetimeIndex, residuals: np.ndarray, sigma: float, min_months: int = 3
) -> dict[int, float]:
    """The rule of ``day_of_month_offsets`` written plainly, one pandas group per day."""
    offsets: dict[int, float] = {}
    frame = pd.DataFrame({"dom": timestamps.day, "res": residuals}).dropna()
    for dom, group in frame.groupby("dom"):
        if len(group) < min_months:
            continue
        median = float(group["res"].median())
        same_sign = float(np.mean(np.sign(group["res"]) == np.sign(median)))
        if abs(median) > 3 * sigma and same_sign >= 0.75:
            offsets[int(dom)] = median
    return offsets


def test_day_of_month_offsets_equal_the_plain_per_day_rule() -> None:
    rng = np.random.default_rng(11)
    chosen = 0
    for case in range(120):
        n = int(rng.integers(0, 400))
        ts = pd.date_range("2023-01-01", periods=n, freq="D", tz="UTC")
        res = rng.normal(0.0, 1.0, n)
        res[ts.day == 1] += rng.choice([0.0, 8.0, -8.0])
        res[ts.day == 20] += np.where(rng.random((ts.day == 20).sum()) < 0.8, 6.0, -6.0)
        res[rng.random(n) < rng.choice([0.0, 0.1, 0.9])] = np.nan
        if case % 4 == 0:
            res = np.round(res)  # zeros and ties
        sigma = float(rng.choice([0.3, 1.0, 2.0]))
        got = scoring.day_of_month_offsets(ts, res, sigma)
        want = _plain_day_of_month_offsets(ts, res, sigma)
        assert list(got.items()) == list(want.items())
        chosen += len(got)
    assert chosen > 50  # the cases do choose offsets


def test_reasons_lists_signals_at_threshold() -> None:
    out = scoring.reasons({"lstm": np.array([1.0, 0.2]), "residual": np.array([3.0, 0.0])}, {"decrease": np.array([False, True])})
    assert list(out) == ["lstm,residual", "decrease"]


def test_fast_nan_medians_match_numpy() -> None:
    rng = np.random.default_rng(3)
    for width in (1, 2, 3, 4, 7, 14, 16, 17, 256):
        values = rng.normal(size=(5, 40, width))
        values[rng.random(values.shape) < 0.3] = np.nan
        values[0, 0] = np.nan  # a slice with nothing known
        values[1, 1] = 1.0  # a slice with all known
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmedian(values, axis=-1)
        np.testing.assert_array_equal(scoring._nanmedian(values), expected)
        # the sorting network (and its fallback past 16 values): the same numbers
        np.testing.assert_array_equal(scoring._median(list(np.moveaxis(values, -1, 0))), expected)


def test_updated_seasonal_expectation_equals_a_full_computation() -> None:
    """Cleaning passes only recompute where the history changed: the numbers are the same."""
    rng = np.random.default_rng(5)
    for period, steps in ((7, 300), (24, 24 * 12), (None, 60)):
        values = 100 + rng.normal(0, 5, (4, steps))
        block = scoring.SeasonalExpectation(values, period, 4, 7)
        for share in (0.01, 0.2):
            cleaned = np.where(rng.random(values.shape) < share, np.nan, values)
            cleaned[1, steps // 2 : steps // 2 + 3 * (period or 7)] = np.nan  # a long incident left out
            block = block.update(cleaned)
            full = scoring.SeasonalExpectation(cleaned, period, 4, 7)
            for fill in (True, False):
                np.testing.assert_array_equal(block.expected(fill), full.expected(fill))


def test_tail_quantile_extrapolates_a_heavy_tail() -> None:
    rng = np.random.default_rng(1)
    scores = np.abs(rng.standard_t(3, 20_000))
    # |t3| exceeds 28.0 with probability 1e-4 (scipy.stats.t.ppf(1 - 5e-5, 3))
    assert scoring.tail_quantile(scores, 1e-4) == pytest.approx(28.0, rel=0.25)
    # not in the tail: the empirical quantile
    assert scoring.tail_quantile(scores, 0.05) == pytest.approx(np.quantile(scores, 0.95))
    # far beyond the data, yet finite and above every score
    assert np.max(scores) < scoring.tail_quantile(scores, 1e-6) < 1e3
    # a light tail (Gaussian) extrapolates far lower than the heavy one
    light = np.abs(rng.normal(size=20_000))
    assert scoring.tail_quantile(light, 1e-4) == pytest.approx(3.89, rel=0.15)
    assert scoring.tail_quantile(np.array([]), 1e-3) == -np.inf
    assert scoring.tail_quantile(np.ones(30), 1e-3) == 1.0  # no excess: the largest score


def test_a_threshold_many_training_scores_share_is_moved_just_above_them() -> None:
    spikes = np.r_[np.zeros(950), np.full(50, 26.9)]  # every spike of one height
    assert scoring.above_ties(spikes, 26.9, 1e-3) > 26.9
    assert scoring.above_ties(spikes, 26.9, 0.06) == 26.9  # within the budget: kept
    # the training maximum reached once (continuous scores) is kept: it flags its equal
    continuous = np.random.default_rng(0).normal(size=1000)
    assert scoring.above_ties(continuous, float(continuous.max()), 1e-3) == continuous.max()
    assert scoring.above_ties(continuous, 10.0, 1e-3) == 10.0


def test_long_runs_and_trailing_any() -> None:
    mask = np.array([1, 0, 1, 1, 1, 0, 1, 1, 0, 0], bool)
    assert scoring.long_runs(mask, 3).astype(int).tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert scoring.long_runs(mask, 2).astype(int).tolist() == [0, 0, 1, 1, 1, 0, 1, 1, 0, 0]
    marked = np.array([0, 1, 0, 0, 0, 0], bool)
    assert scoring.trailing_any(marked, 3).astype(int).tolist() == [0, 1, 1, 1, 0, 0]


def test_forward_fill_per_row() -> None:
    values = np.array([[np.nan, 1.0, np.nan, 3.0, np.nan], [2.0, np.nan, np.nan, np.nan, 5.0]])
    filled = scoring.forward_fill(values)
    np.testing.assert_array_equal(filled[0, 1:], [1.0, 1.0, 3.0, 3.0])
    assert np.isnan(filled[0, 0])
    np.testing.assert_array_equal(filled[1], [2.0, 2.0, 2.0, 2.0, 5.0])


def test_robust_sigma_of_a_mostly_flat_series_comes_from_its_bursts() -> None:
    residuals = np.zeros(1000)
    residuals[::50] = 10.0  # an idle metric with regular bursts: MAD is 0
    sigma = scoring.robust_sigma(residuals, floor=1e-9)
    assert sigma == pytest.approx(np.mean(np.abs(residuals)) * 1.2533)
    assert scoring.robust_sigma(np.random.default_rng(0).normal(size=5000), 1e-9) == pytest.approx(1.0, rel=0.05)


def test_repeats_are_runs_starting_soon_after_an_earlier_flag() -> None:
    flags = np.array([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 0], bool)
    # with a quiet period of 4: the run at 5 starts 3 steps after step 2 (a repeat); the run at
    # 11 starts 6 steps after step 5 (new)
    assert scoring.repeats(flags, 4).astype(int).tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    # with 6, step 5 is a repeat and so is the run at 11 (step 5 lies within 6 before it)
    assert np.flatnonzero(scoring.repeats(flags, 6)).tolist() == [5, 11, 12]
    assert not scoring.repeats(flags, 0).any()
    # decided by earlier steps only: cutting the future off changes nothing before the cut
    for cut in range(1, len(flags)):
        assert scoring.repeats(flags[:cut], 6).tolist() == scoring.repeats(flags, 6)[:cut].tolist()


def test_carry_over_gives_a_skipped_step_the_flag_before_it() -> None:
    flags = np.array([[0, 0, 1, 0, 1, 0, 0, 1], [1, 0, 0, 0, 0, 0, 1, 1]], bool)
    skip = np.array([[1, 0, 0, 1, 0, 1, 1, 0], [0, 1, 1, 0, 0, 0, 0, 0]], bool)
    # a skipped step before any real one has nothing to carry; a run of skipped steps carries
    # the last real flag through to its end
    assert scoring.carry_over(flags, skip).astype(int).tolist() == [[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 1, 1]]
    assert scoring.carry_over(flags[0], skip[0]).tolist() == scoring.carry_over(flags, skip)[0].tolist()
    assert scoring.carry_over(flags, np.zeros_like(skip)).tolist() == flags.tolist()


def test_preceding_peak_is_the_largest_of_the_steps_before() -> None:
    rng = np.random.default_rng(3)
    block = rng.exponential(size=(3, 200))
    block[1, 50] = np.nan  # counted as 0
    for span in (1, 2, 3, 7, 12, 64, 100, 250):
        expected = np.zeros_like(block)
        for t in range(1, block.shape[1]):
            expected[:, t] = np.nanmax(np.nan_to_num(block[:, max(0, t - span) : t], nan=0.0), axis=1)
        np.testing.assert_array_equal(scoring.preceding_peak(block, span), expected, err_msg=str(span))
    assert not scoring.preceding_peak(block, 0).any()


def test_a_settled_shift_is_measured_from_its_new_level_and_nothing_else_is() -> None:
    rng = np.random.default_rng(4)
    n, at, span = 600, 300, 48
    values = 10 + rng.normal(0, 1, n)
    values[at:] += 12  # a plateau with the old noise
    values[500] += 8  # a spike on the plateau
    values[560:] = 10 + rng.normal(0, 1, 40)  # and back to the old level
    expected, spread = np.full(n, 10.0), np.ones(n)
    z = (values - expected) / spread
    out = scoring.settled_shift(values, z, spread, span, limit=2.0, share=0.9, noise=2.0)
    # the shift's first span of steps is news; after it, the plateau is nothing new
    np.testing.assert_array_equal(out[: at + span - 4], z[: at + span - 4])
    assert np.abs(out[at + span + 5 : 500]).max() < 4
    assert out[500] > 6  # the spike stands out from the plateau as well
    assert np.abs(out[560:]).max() < 4  # a step back to the old level is no surprise either
    # a burst scattered far wider than the noise is an incident still running, not a new level
    bursty = 10 + rng.normal(0, 1, n)
    bursty[at:] += rng.uniform(6, 30, n - at)
    zb = bursty - 10.0
    np.testing.assert_array_equal(scoring.settled_shift(bursty, zb, spread, span, 2.0, 0.9, 2.0), zb)
    # decided by earlier steps only
    cut = 520
    np.testing.assert_array_equal(
        scoring.settled_shift(values[:cut], z[:cut], spread[:cut], span, 2.0, 0.9, 2.0), out[:cut]
    )


def test_sampled_lags_of_a_long_cycle_cover_odd_and_even_steps() -> None:
    """Every second lag of a 5-minute day left odd and even steps with disjoint histories."""
    for steps in (288, 576, 2016):
        lags, needed = scoring._past_lags(steps)
        assert len(lags) == scoring.MEDIAN_SAMPLE and lags[0] == 1 and lags[-1] == steps
        assert abs(np.sum(lags % 2) - len(lags) / 2) <= 2
        assert needed == len(lags) // 2
    lags, needed = scoring._past_lags(1152, 144)
    assert needed == 32  # the same share of the sample as of the steps
