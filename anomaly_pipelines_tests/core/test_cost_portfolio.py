"""The independent synthetic cost portfolio: contract, realism and fair incident labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from anomaly_pipelines.core.evaluation import cost_portfolio as cp

START = "2023-07-01"
DAYS = 730
DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def built() -> tuple[cp.Portfolio, tuple[cp._AccountPlan, ...]]:
    return cp._build(40, DAYS, START, 11, with_incidents=True)


@pytest.fixture(scope="module")
def portfolio(built: tuple[cp.Portfolio, tuple[cp._AccountPlan, ...]]) -> cp.Portfolio:
    return built[0]


@pytest.fixture(scope="module")
def plans(built: tuple[cp.Portfolio, tuple[cp._AccountPlan, ...]]) -> dict[str, cp._AccountPlan]:
    return {p.customer_id: p for p in built[1]}


@pytest.fixture(scope="module")
def counterfactual() -> cp.Portfolio:
    return cp._build(40, DAYS, START, 11, with_incidents=False)[0]


def _daily(usage: pd.DataFrame) -> pd.Series:
    return usage.groupby(["customer_id", "timestamp"])["cost"].sum()


def test_default_arguments_match_the_built_portfolio(portfolio: cp.Portfolio) -> None:
    again = cp.generate_portfolio()
    pd.testing.assert_frame_equal(again.usage, portfolio.usage)
    pd.testing.assert_frame_equal(again.incidents, portfolio.incidents)
    assert again.monthly_charges == portfolio.monthly_charges


def test_same_seed_gives_identical_frames_and_another_seed_differs() -> None:
    a = cp.generate_portfolio(customers=6, days=400, seed=5)
    b = cp.generate_portfolio(customers=6, days=400, seed=5)
    c = cp.generate_portfolio(customers=6, days=400, seed=6)
    pd.testing.assert_frame_equal(a.usage, b.usage)
    pd.testing.assert_frame_equal(a.incidents, b.incidents)
    assert a.monthly_charges == b.monthly_charges
    assert not a.usage.equals(c.usage)


def test_columns_dtypes_and_utc_daily_timestamps(portfolio: cp.Portfolio) -> None:
    usage, incidents = portfolio.usage, portfolio.incidents
    assert list(usage.columns) == ["customer_id", "timestamp", "service", "cost"]
    assert list(incidents.columns) == ["customer_id", "kind", "service", "start", "end"]
    for frame, col in [(usage, "customer_id"), (usage, "service"), (incidents, "kind")]:
        assert pd.api.types.is_string_dtype(frame[col])
    assert usage["cost"].dtype == np.float64 and np.isfinite(usage["cost"]).all()
    for frame, col in [(usage, "timestamp"), (incidents, "start"), (incidents, "end")]:
        ts = frame[col]
        assert isinstance(ts.dtype, pd.DatetimeTZDtype) and str(ts.dt.tz) == "UTC"
        assert (ts == ts.dt.normalize()).all()
    first, last = pd.Timestamp(START, tz="UTC"), pd.Timestamp(START, tz="UTC") + (DAYS - 1) * DAY
    assert usage["timestamp"].min() == first and usage["timestamp"].max() == last
    assert (usage["cost"] == usage["cost"].round(2)).all()  # billed in cents
    assert not usage.duplicated(["customer_id", "service", "timestamp"]).any()
    assert usage["customer_id"].nunique() == 40
    assert usage["customer_id"].is_monotonic_increasing


def test_scales_span_tiny_to_huge_accounts(portfolio: cp.Portfolio) -> None:
    typical = _daily(portfolio.usage).groupby(level=0).median()
    assert typical.min() < 10 and typical.max() > 10_000
    assert (typical < 100).sum() >= 5 and (typical > 1_000).sum() >= 5


def test_mid_history_onboarding_and_multiweek_gaps(
    portfolio: cp.Portfolio, plans: dict[str, cp._AccountPlan]
) -> None:
    origin = pd.Timestamp(START, tz="UTC")
    late, gappy = 0, 0
    for customer_id, days in portfolio.usage.groupby("customer_id")["timestamp"]:
        present = pd.DatetimeIndex(days.unique())
        offset = (present.min() - origin).days
        assert offset == plans[customer_id].first_day
        late += offset >= 0.1 * DAYS
        steps = np.diff(np.asarray((present - origin).days))
        longest = int(steps.max()) - 1 if len(steps) else 0
        gaps = plans[customer_id].gaps
        if gaps:
            assert longest >= 7 and longest == max(b - a + 1 for a, b in gaps)
            gappy += 1
        else:
            assert longest == 0  # no other missing day inside the history
    assert late >= 1 and gappy >= 1


def test_incidents_sit_late_in_each_history_apart_and_outside_gaps(
    portfolio: cp.Portfolio,
) -> None:
    incidents, usage = portfolio.incidents, portfolio.usage
    per_customer = incidents.groupby("customer_id").size()
    assert per_customer.max() <= 3
    assert 0.15 <= 1 - len(per_customer) / 40 <= 0.4  # about a fifth of accounts have none
    assert set(incidents["kind"]) == set(cp.INCIDENT_KINDS)
    days = usage.groupby("customer_id")["timestamp"]
    firsts, lasts = days.min(), days.max()
    rows = pd.MultiIndex.from_frame(usage[["customer_id", "timestamp", "service"]])
    for customer_id, group in incidents.groupby("customer_id"):
        first, last = firsts[customer_id], lasts[customer_id]
        history = (last - first).days + 1
        group = group.sort_values("start")
        assert (group["start"] >= first + max(90, int(np.ceil(0.4 * history))) * DAY).all()
        assert (group["end"] <= last).all() and (group["end"] >= group["start"]).all()
        assert (group["start"].iloc[1:].to_numpy() > group["end"].iloc[:-1].to_numpy()).all()
        for row in group.itertuples():
            span = pd.date_range(row.start, row.end, freq="D")
            wanted = pd.MultiIndex.from_arrays(
                [[customer_id] * len(span), span, [row.service] * len(span)]
            )
            assert wanted.isin(rows).all()  # a row on every labelled day: not in a gap
        if "sustained_shift" in set(group["kind"]):
            assert group["kind"].iloc[-1] == "sustained_shift"  # nothing after a permanent shift
    lengths = (incidents["end"] - incidents["start"]).dt.days + 1
    bounds = {
        "spike": (1, 3),
        "outage_drop": (1, 4),
        "sustained_shift": (7, 7),
        "slow_leak": (7, 21),
        "forgotten_resource": (5, 20),
        "billing_error": (1, 1),
    }
    for kind, length in zip(incidents["kind"], lengths, strict=True):
        assert bounds[kind][0] <= length <= bounds[kind][1]


def test_labelled_days_move_the_daily_total_as_promised(
    portfolio: cp.Portfolio, counterfactual: cp.Portfolio
) -> None:
    with_inc, without = _daily(portfolio.usage), _daily(counterfactual.usage)
    assert with_inc.index.equals(without.index)  # incidents add no rows and remove none
    rel = with_inc / without - 1
    changed = set(rel.index[(with_inc - without).abs() > 0.011])
    explained: set[tuple[str, pd.Timestamp]] = set()
    for row in portfolio.incidents.itertuples():
        days = rel.loc[row.customer_id]
        span = days.loc[row.start : row.end]
        floor = cp.MIN_TOTAL_MOVE[row.kind]
        after = days.loc[row.end + DAY :]
        if row.kind == "outage_drop":
            assert (span <= -floor).all(), (row, span.round(3).tolist())
        elif row.kind == "slow_leak":
            assert span.iloc[-1] >= floor and span.iloc[0] > 0
            added = (with_inc - without).loc[row.customer_id].loc[row.start : row.end]
            assert (np.diff(added.to_numpy()) >= -0.02).all()  # a growing cost
        else:
            assert (span >= floor).all(), (row, span.round(3).tolist())
        if row.kind == "sustained_shift":
            assert (after > 0).all()  # the level change is permanent
            extent = days.index[days.index >= row.start]
        else:
            assert (after.iloc[:3].abs() < 0.01).all()  # over: back to normal
            extent = span.index
        explained |= {(row.customer_id, day) for day in extent}
    assert changed and changed <= explained


def test_noise_is_heavy_tailed(
    counterfactual: cp.Portfolio, plans: dict[str, cp._AccountPlan]
) -> None:
    """Robust z-scores of log daily totals (about a centred rolling median) of accounts without a
    weekly shape, calendar days with charges, credits, bumps or holidays left out."""
    daily = _daily(counterfactual.usage)
    dates = pd.date_range(START, periods=DAYS, freq="D", tz="UTC")
    scores = []
    for customer_id, plan in plans.items():
        if plan.weekly != "none":
            continue
        log_total = np.log(daily.loc[customer_id]).reindex(dates)
        residual = log_total - log_total.rolling(15, center=True, min_periods=8).median()
        residual[plan.event_days] = np.nan
        values = residual.dropna().to_numpy()
        mad = np.median(np.abs(values - np.median(values))) * 1.4826
        scores.append(values / mad)
    z = np.concatenate(scores)
    assert len(scores) >= 4 and len(z) > 1500
    excess_kurtosis = float(np.mean((z - z.mean()) ** 4) / np.var(z) ** 2 - 3)
    assert excess_kurtosis > 1.5  # a Gaussian gives about 0
    assert np.mean(np.abs(z) > 4) > 0.003  # a Gaussian gives about 0.00006
    assert {p.noise_df for p in plans.values()} <= {3, 4, 5}
    sigmas = [p.noise_sigma for p in plans.values()]
    assert min(sigmas) >= 0.01 and max(sigmas) <= 0.15


def test_recurring_month_start_charges_and_monthly_credits(
    portfolio: cp.Portfolio, plans: dict[str, cp._AccountPlan]
) -> None:
    usage = portfolio.usage
    recurring = usage[usage["service"].isin(cp.RECURRING_SERVICES)]
    assert (recurring["timestamp"].dt.day == 1).all() and (recurring["cost"] > 0).all()
    assert set(recurring["customer_id"]) == set(portfolio.monthly_charges)
    assert 5 <= len(portfolio.monthly_charges) < 40
    daily = _daily(usage)
    for customer_id in portfolio.monthly_charges:
        days = daily.loc[customer_id]
        on_first = days[days.index.day == 1].iloc[1:]
        assert on_first.median() > 1.05 * days[days.index.day == 2].median()
    negative = usage[usage["cost"] < 0]
    assert set(negative["service"]) == {cp.CREDIT_SERVICE}
    credits = usage[usage["service"] == cp.CREDIT_SERVICE]
    assert credits.groupby("customer_id")["timestamp"].agg(lambda t: t.dt.day.nunique()).eq(1).all()
    with_credit = {c for c, p in plans.items() if p.credit_day is not None}
    assert with_credit and set(credits["customer_id"]) == with_credit
    assert (daily > 0).all()  # a credit never exceeds the day's usage


def test_weekly_shapes_holidays_and_month_end_bumps(
    counterfactual: cp.Portfolio, plans: dict[str, cp._AccountPlan]
) -> None:
    daily = _daily(counterfactual.usage)
    assert {p.weekly for p in plans.values()} == {"business", "midweek", "none"}
    weekend_ratio, midweek_ratio, holiday_ratio = [], [], []
    for customer_id, plan in plans.items():
        days = daily.loc[customer_id]
        clean = days[~plan.event_days[(days.index - days.index[0]).days + plan.first_day]]
        by_dow = clean.groupby(clean.index.day_of_week).median()
        if plan.weekly == "business":
            weekend_ratio.append(by_dow.loc[[5, 6]].mean() / by_dow.loc[[0, 1, 2, 3]].mean())
        elif plan.weekly == "midweek":
            midweek_ratio.append(by_dow.loc[2] / by_dow.loc[6])
        if plan.holiday_dip is not None and plan.weekly == "business":
            for day in days.index[(days.index.month == 12) & (days.index.day == 25)]:
                before = days.reindex([day - k * 7 * DAY for k in range(1, 5)]).median()
                holiday_ratio.append(days.loc[day] / before)  # versus the same weekday earlier
    assert np.median(weekend_ratio) < 0.9 and min(weekend_ratio) < 0.7
    assert np.median(midweek_ratio) > 1.05
    assert holiday_ratio and np.nanmedian(holiday_ratio) < 0.85
    assert any(p.month_end_bump for p in plans.values())
    assert any(p.price_change_day is not None for p in plans.values())
    assert any(p.new_service is not None for p in plans.values())
