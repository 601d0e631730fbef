"""A second, independent synthetic daily-cost portfolio with labelled incidents.

Why it exists: ``core.sources.synthetic`` is the data the detector was designed and tuned with,
so scoring daily-cost quality only on it would flatter the detector. This generator was written
separately, sharing only the output contract (long usage rows plus labelled incident intervals
and the customers with recurring month-start charges), so the evaluation also judges the
detector on daily cost whose shapes it was not built around.

What a portfolio contains (everything is normal, unlabelled behaviour unless stated):

* accounts whose daily cost spans a few dollars (cents rounding and noise dominate) to tens of
  thousands of dollars (log-uniform scale), with 2-7 services of very unequal size;
* weekly shapes: business-day patterns of varying strength, a smooth mid-week peak, or none,
  felt by each service to a different degree; end-of-month batch bumps (larger at quarter end);
  dips on a fixed list of public holidays;
* Student-t (3-5 degrees of freedom) multiplicative noise at 1%-15% per account, a slow
  autoregressive wander, and piecewise log-linear growth or decline;
* announced price changes (a permanent -20%..+15% step on one service), new services ramping up
  over 2-6 weeks, monthly credits on a fixed day, and recurring charges billed on the 1st of
  each month (support plans, marketplace subscriptions, reserved-capacity fees; those customers
  are listed in ``Portfolio.monthly_charges``);
* accounts that onboard after 10%-60% of the period (no rows before) and 1-3 week gaps with no
  rows at all;
* labelled incidents, 0-3 per account (about 20% of accounts have none), only in the last 60% of
  an account's own history and never in its first 90 days, apart from each other and from
  gaps, price changes and ramps: ``spike``, ``outage_drop``, ``sustained_shift`` (its first 7
  days labelled), ``slow_leak`` (the whole ramp labelled), ``forgotten_resource`` and
  ``billing_error``. Each is sized against the account's daily total, so a labelled day always
  moves the total by at least ``MIN_TOTAL_MOVE`` of its kind (a leak by its last day) versus the
  same portfolio generated without incidents, which is bit-for-bit the same otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Usage services: (how strongly the account's weekly/holiday shape is felt, noise multiplier).
USAGE_SERVICES: dict[str, tuple[float, float]] = {
    "Virtual Machines": (1.0, 1.0),
    "Container Platform": (0.8, 0.9),
    "Serverless Functions": (0.9, 1.4),
    "Managed SQL": (0.5, 0.6),
    "Object Storage": (0.1, 0.4),
    "Block Storage": (0.05, 0.3),
    "Data Warehouse": (0.7, 1.2),
    "Egress Bandwidth": (0.9, 1.5),
    "Content Delivery": (0.6, 1.3),
    "Observability": (0.4, 0.7),
    "ML Training": (0.6, 1.6),
    "Backup Vault": (0.0, 0.3),
}
# Services that run the month-end batch when an account has one (first present one wins).
BATCH_SERVICES = ("Data Warehouse", "ML Training", "Serverless Functions", "Virtual Machines")
RECURRING_SERVICES = ("Support Plan", "Marketplace Subscription", "Reserved Capacity Fee")
CREDIT_SERVICE = "Credits"
INCIDENT_KINDS = (
    "spike",
    "outage_drop",
    "sustained_shift",
    "slow_leak",
    "forgotten_resource",
    "billing_error",
)
# Smallest relative move of the account's daily total on a labelled day (slow_leak: its last day).
MIN_TOTAL_MOVE: dict[str, float] = {
    "spike": 0.30,
    "outage_drop": 0.30,
    "billing_error": 0.30,
    "sustained_shift": 0.25,
    "slow_leak": 0.25,
    "forgotten_resource": 0.25,
}
_MARGIN = 0.02  # incidents are sized this much above MIN_TOTAL_MOVE, so cents rounding is safe
# Fixed-date public holidays (month, day), every year.
HOLIDAYS: tuple[tuple[int, int], ...] = (
    (1, 1),
    (5, 1),
    (7, 4),
    (12, 24),
    (12, 25),
    (12, 26),
    (12, 31),
)
_SHIFT_LABEL_DAYS = 7


@dataclass(frozen=True)
class Portfolio:
    """Long daily cost rows, the labelled incidents, and who has normal month-start charges."""

    usage: pd.DataFrame  # customer_id, timestamp (UTC day), service, cost; one row per c, s, day
    incidents: pd.DataFrame  # customer_id, kind, service, start, end (inclusive UTC days)
    # Customers billed a normal recurring charge on the 1st of each month.
    monthly_charges: tuple[str, ...]


@dataclass(frozen=True)
class _AccountPlan:
    """What was drawn for one account (for tests and diagnostics; not part of the contract)."""

    customer_id: str
    first_day: int  # index into the period of the first row
    scale: float  # daily usage at onboarding, in dollars
    weekly: str  # "business", "midweek" or "none"
    noise_sigma: float
    noise_df: int
    holiday_dip: float | None
    month_end_bump: bool
    price_change_day: int | None
    new_service: str | None
    gaps: tuple[tuple[int, int], ...]  # inclusive day indices without rows
    recurring: tuple[str, ...]
    credit_day: int | None  # day of month of the monthly credit
    event_days: np.ndarray  # bool per day: calendar or structural effects (not noise) act here


def generate_portfolio(
    customers: int = 40, days: int = 730, start: str = "2023-07-01", seed: int = 11
) -> Portfolio:
    """A seeded portfolio of ``customers`` accounts over ``days`` days from ``start``."""
    portfolio, _ = _build(customers, days, start, seed, with_incidents=True)
    return portfolio


def _build(
    customers: int, days: int, start: str, seed: int, with_incidents: bool = True
) -> tuple[Portfolio, tuple[_AccountPlan, ...]]:
    """The portfolio and each account's plan. Incidents draw from their own random streams, so
    ``with_incidents=False`` gives the exact counterfactual: the same rows without incidents."""
    if customers < 1 or days < 1:
        raise ValueError(f"need at least one customer and one day, got {customers} and {days}")
    dates = pd.date_range(start, periods=days, freq="D", tz="UTC")
    master = np.random.default_rng(seed)
    late = _pick(master, customers, 0.25)  # onboard mid-history
    gappy = _pick(master, customers, 0.2)  # 1-3 week gaps without rows
    quiet = _pick(master, customers, 0.2)  # no incidents
    calendar = _Calendar(dates)
    width = max(3, len(str(customers)))
    ids = [f"acct-{c + 1:0{width}d}" for c in range(customers)]
    frames: list[pd.DataFrame] = []
    incidents: list[tuple[str, str, str, int, int]] = []
    plans: list[_AccountPlan] = []
    monthly: list[str] = []
    for c, customer_id in enumerate(ids):
        rng = np.random.default_rng([seed, c])
        account = _account(rng, customer_id, calendar, c in late, c in gappy)
        if with_incidents and c not in quiet:
            inc_rng = np.random.default_rng([seed, c, 1])
            for kind, s_idx, s0, s1 in _incidents(inc_rng, account):
                incidents.append((customer_id, kind, account.names[s_idx], s0, s1))
        rows = account.rows(dates)
        frames.append(rows)
        plans.append(account.plan)
        if rows["service"].isin(RECURRING_SERVICES).any():
            monthly.append(customer_id)
    usage = pd.concat(frames, ignore_index=True)
    starts = np.array([i[3] for i in incidents], dtype=int)
    ends = np.array([i[4] for i in incidents], dtype=int)
    inc = pd.DataFrame(
        {
            "customer_id": pd.Series([i[0] for i in incidents], dtype="str"),
            "kind": pd.Series([i[1] for i in incidents], dtype="str"),
            "service": pd.Series([i[2] for i in incidents], dtype="str"),
            "start": dates[starts],
            "end": dates[ends],
        }
    )
    return Portfolio(usage, inc, tuple(monthly)), tuple(plans)


def _pick(rng: np.random.Generator, n: int, share: float) -> set[int]:
    """A random subset of ``round(share * n)`` accounts, at least one when there are two or more."""
    k = max(1 if n >= 2 else 0, round(share * n))
    return {int(i) for i in rng.permutation(n)[:k]}


class _Calendar:
    """Calendar features of the period, computed once."""

    def __init__(self, dates: pd.DatetimeIndex) -> None:
        self.days = len(dates)
        self.dow = np.asarray(dates.day_of_week)
        self.dom = np.asarray(dates.day)
        month = np.asarray(dates.month)
        days_in_month = np.asarray(dates.days_in_month)
        self.to_month_end = days_in_month - self.dom  # 0 on the last day of the month
        self.quarter_end = np.isin(month, (3, 6, 9, 12))
        self.holiday = np.zeros(self.days, dtype=bool)
        for m, d in HOLIDAYS:
            self.holiday |= (month == m) & (self.dom == d)
        self.holiday_week = (month == 12) & (self.dom >= 27) & (self.dom <= 30)
        self.first_of_month = self.dom == 1


class _Account:
    """Daily cost matrices of one account: usage services plus recurring charges and credits."""

    def __init__(
        self,
        names: list[str],
        usage: np.ndarray,
        service_start: np.ndarray,
        extra_names: list[str],
        extra: np.ndarray,
        active: np.ndarray,
        plan: _AccountPlan,
        blocked: np.ndarray,
    ) -> None:
        self.names = names
        self.usage = usage  # (services, days), zero before a service starts
        self.service_start = service_start
        self.extra_names = extra_names
        self.extra = extra  # (recurring + credit rows, days); a row exists where non-zero
        self.active = active  # account onboarded and not in a gap
        self.plan = plan
        self.blocked = blocked  # days incidents must keep clear of

    def total(self) -> np.ndarray:
        return self.usage.sum(axis=0) + self.extra.sum(axis=0)

    def rows(self, dates: pd.DatetimeIndex) -> pd.DataFrame:
        days = self.usage.shape[1]
        t = np.arange(days)
        present = np.vstack(
            [
                (t[None, :] >= self.service_start[:, None]) & self.active[None, :],
                (self.extra != 0) & self.active[None, :],
            ]
        )
        values = np.vstack([self.usage, self.extra])
        names = np.array(self.names + self.extra_names, dtype=object)
        rank = np.argsort(np.argsort(names))  # alphabetical order of services within a day
        s_idx, d_idx = np.nonzero(present)
        order = np.lexsort((rank[s_idx], d_idx))
        s_idx, d_idx = s_idx[order], d_idx[order]
        return pd.DataFrame(
            {
                "customer_id": pd.Series(
                    self.plan.customer_id, index=range(len(d_idx)), dtype="str"
                ),
                "timestamp": dates[d_idx],
                "service": pd.Series(names[s_idx], dtype="str"),
                "cost": np.round(values[s_idx, d_idx], 2).astype(float),
            }
        )


def _t_noise(rng: np.random.Generator, df: int, size: tuple[int, ...] | int) -> np.ndarray:
    """Student-t draws scaled to unit variance, clipped at 6 standard deviations."""
    return np.clip(rng.standard_t(df, size) * math.sqrt((df - 2) / df), -6.0, 6.0)


def _account(
    rng: np.random.Generator, customer_id: str, cal: _Calendar, late: bool, gappy: bool
) -> _Account:
    days = cal.days
    t = np.arange(days)
    first = int(rng.integers(int(0.1 * days), int(0.6 * days) + 1)) if late else 0
    years = np.maximum(t - first, 0) / 365.0
    scale = float(10 ** rng.uniform(0.3, 4.7))

    n = int(rng.integers(2, 8))
    names = [str(s) for s in rng.choice(list(USAGE_SERVICES), size=n, replace=False)]
    weights = rng.lognormal(0.0, 1.1, n)
    shares = weights / weights.sum()
    sens = np.array([USAGE_SERVICES[s][0] for s in names]) * rng.uniform(0.7, 1.3, n)
    sens = np.clip(sens, 0.0, 1.0)
    noise_mult = np.array([USAGE_SERVICES[s][1] for s in names])
    event = np.zeros(days, dtype=bool)
    blocked = np.zeros(days, dtype=bool)

    # Growth or decline: log-linear with one change of slope, and a per-service tilt.
    g1 = float(rng.uniform(-0.3, 0.9))
    g2 = g1 + float(rng.normal(0.0, 0.35))
    knot = int(rng.integers(first, days))
    log_level = g1 * years + (g2 - g1) * np.maximum(t - knot, 0) / 365.0
    log_level = log_level[None, :] + rng.normal(0.0, 0.15, n)[:, None] * years[None, :]

    # Weekly shape of the account, felt per service through its sensitivity.
    weekly = str(rng.choice(["business", "midweek", "none"], p=[0.45, 0.25, 0.3]))
    shape = np.zeros(7)
    if weekly == "business":
        weekend = float(rng.uniform(0.35, 0.92))
        shape[4] = math.log(rng.uniform(0.9, 1.0))
        shape[5] = math.log(weekend)
        shape[6] = math.log(weekend * rng.uniform(0.9, 1.05))
    elif weekly == "midweek":
        amp = float(rng.uniform(0.05, 0.3))
        shape = np.log1p(amp * np.cos(2 * np.pi * (np.arange(7) - 2) / 7))
    log_season = shape[cal.dow]

    holiday_dip: float | None = None
    if rng.random() < (0.6 if weekly == "business" else 0.15):
        holiday_dip = float(rng.uniform(0.3, 0.8))
        log_season = log_season + np.where(cal.holiday, math.log(holiday_dip), 0.0)
        log_season = log_season + np.where(cal.holiday_week, 0.5 * math.log(holiday_dip), 0.0)
        event |= cal.holiday | cal.holiday_week
    log_level = log_level + sens[:, None] * log_season[None, :]

    # Slow wander (AR(1)) shared by the services, plus heavy-tailed noise.
    phi = float(rng.uniform(0.9, 0.98))
    innov = rng.normal(0.0, float(rng.uniform(0.01, 0.05)) * math.sqrt(1 - phi**2), days)
    wander = np.empty(days)
    acc = 0.0
    for i in range(days):
        acc = phi * acc + innov[i]
        wander[i] = acc
    sigma = float(10 ** rng.uniform(-2.0, math.log10(0.15)))
    df = int(rng.integers(3, 6))
    rho = float(rng.uniform(0.3, 0.8))
    noise = sigma * (
        math.sqrt(rho) * _t_noise(rng, df, days)[None, :]
        + math.sqrt(1 - rho) * noise_mult[:, None] * _t_noise(rng, df, (n, days))
    )
    usage = scale * shares[:, None] * np.exp(log_level + wander[None, :] + noise)

    # Month-end (stronger at quarter-end) batch bump on one service.
    month_end_bump = bool(rng.random() < 0.3)
    if month_end_bump:
        batch = next((names.index(s) for s in BATCH_SERVICES if s in names), 0)
        last_days = int(rng.integers(1, 4))
        on = cal.to_month_end < last_days
        bump = float(rng.uniform(0.3, 1.2)) * np.where(cal.quarter_end, rng.uniform(1.5, 3.0), 1.0)
        usage[batch] *= 1.0 + np.where(on, bump, 0.0)
        event |= on

    # A new service ramping up over 2-6 weeks (normal onboarding of a workload).
    service_start = np.full(n, first)
    new_service: str | None = None
    if n >= 3 and rng.random() < 0.35 and days - 60 > first + 30:
        ns = int(rng.integers(first + 30, days - 60))
        ramp = int(rng.integers(14, 43))
        frac = np.clip((t - ns + 1) / ramp, 0.0, 1.0)
        usage[n - 1] *= frac * frac * (3 - 2 * frac)  # smooth start
        usage[n - 1, :ns] = 0.0
        service_start[n - 1] = ns
        new_service = names[n - 1]
        event[ns : ns + ramp] = True
        blocked[max(0, ns - 7) : ns + ramp + 7] = True

    # An announced price change: a permanent step on one service.
    price_change_day: int | None = None
    if rng.random() < 0.35 and days - 14 > first + 30:
        svc = int(rng.integers(0, n))
        price_change_day = int(rng.integers(max(first + 30, service_start[svc] + 7), days - 14))
        step = float(rng.uniform(-0.2, 0.15))
        if abs(step) < 0.03:
            step = -0.05 if step < 0 else 0.05
        usage[svc, price_change_day:] *= 1.0 + step
        event[max(0, price_change_day - 3) : price_change_day + 4] = True
        blocked[max(0, price_change_day - 7) : price_change_day + 8] = True
    usage[:, :first] = 0.0
    daily_usage = usage.sum(axis=0)
    trailing = _trailing_mean(daily_usage, first, 30)

    # Recurring month-start charges (normal) and monthly credits.
    extra_names: list[str] = []
    extra_rows: list[np.ndarray] = []
    recurring: tuple[str, ...] = ()
    if rng.random() < 0.35:
        k = int(rng.integers(1, 3))
        recurring = tuple(str(s) for s in rng.choice(RECURRING_SERVICES, size=k, replace=False))
        billed = cal.first_of_month & (t > first)
        for name in recurring:
            if name == "Support Plan":  # a share of the last 30 days of usage
                fee = float(rng.uniform(0.04, 0.1)) * 30.0 * trailing
            elif name == "Marketplace Subscription":
                fee = np.full(days, float(rng.uniform(0.3, 1.5)) * scale)
            else:
                fee = np.full(days, float(rng.uniform(0.5, 2.0)) * scale)
            extra_names.append(name)
            extra_rows.append(np.where(billed, fee, 0.0))
        event |= billed
    credit_day: int | None = None
    if rng.random() < 0.25:
        credit_day = int(rng.integers(2, 29))
        period = np.ones(days, dtype=bool)
        if rng.random() < 0.5:  # a promotional credit for 6-12 months
            length = int(rng.integers(180, 366))
            s0 = int(rng.integers(first, max(first + 1, days - length)))
            period = (t >= s0) & (t < s0 + length)
        on = (cal.dom == credit_day) & (t > first) & period
        amount = np.minimum(float(rng.uniform(0.1, 0.4)) * trailing, 0.8 * daily_usage)
        extra_names.append(CREDIT_SERVICE)
        extra_rows.append(np.where(on, -amount, 0.0))
        event |= on
    extra = np.vstack(extra_rows) if extra_rows else np.zeros((0, days))

    # Missing data: 1-3 week gaps with no rows at all.
    active = t >= first
    gaps: list[tuple[int, int]] = []
    if gappy:
        for _ in range(int(rng.integers(1, 3))):
            length = int(rng.integers(7, 22))
            lo, hi = first + 14, days - length - 14
            if hi <= lo:
                break
            for _ in range(20):
                g0 = int(rng.integers(lo, hi))
                g1_ = g0 + length - 1
                if all(g1_ + 14 < a or g0 > b + 14 for a, b in gaps):
                    gaps.append((g0, g1_))
                    active[g0 : g1_ + 1] = False
                    blocked[max(0, g0 - 7) : g1_ + 8] = True
                    break
    plan = _AccountPlan(
        customer_id=customer_id,
        first_day=first,
        scale=scale,
        weekly=weekly,
        noise_sigma=sigma,
        noise_df=df,
        holiday_dip=holiday_dip,
        month_end_bump=month_end_bump,
        price_change_day=price_change_day,
        new_service=new_service,
        gaps=tuple(sorted(gaps)),
        recurring=recurring,
        credit_day=credit_day,
        event_days=event,
    )
    return _Account(names, usage, service_start, extra_names, extra, active, plan, blocked)


def _trailing_mean(x: np.ndarray, first: int, window: int) -> np.ndarray:
    """Mean of the previous ``window`` days from ``first`` on (the day itself when none)."""
    out = x.astype(float).copy()
    cs = np.concatenate([[0.0], np.cumsum(x)])
    t = np.arange(len(x))
    lo = np.maximum(t - window, first)
    n = t - lo
    has = n > 0
    out[has] = (cs[t[has]] - cs[lo[has]]) / n[has]
    return out


def _incidents(rng: np.random.Generator, acc: _Account) -> list[tuple[str, int, int, int]]:
    """Place and inject 1-3 incidents into ``acc.usage``; return (kind, service, first, last)."""
    days = acc.usage.shape[1]
    first = acc.plan.first_day
    history = days - first
    earliest = first + max(90, math.ceil(0.4 * history))
    blocked = acc.blocked.copy()
    blocked[: min(earliest, days)] = True
    kinds = [str(k) for k in rng.choice(INCIDENT_KINDS, size=int(rng.integers(1, 4)))]
    while kinds.count("sustained_shift") > 1:  # at most one permanent shift, placed last
        kinds[kinds.index("sustained_shift")] = str(rng.choice(INCIDENT_KINDS[3:]))
    kinds.sort(key=lambda k: k == "sustained_shift")
    placed: list[tuple[str, int, int]] = []
    for kind in kinds:
        length = {
            "spike": int(rng.integers(1, 4)),
            "outage_drop": int(rng.integers(1, 5)),
            "sustained_shift": _SHIFT_LABEL_DAYS,
            "slow_leak": int(rng.integers(7, 22)),
            "forgotten_resource": int(rng.integers(5, 21)),
            "billing_error": 1,
        }[kind]
        after = 14 if kind == "sustained_shift" else 3  # room left after the label
        if kind == "sustained_shift" and placed:  # nothing may follow a permanent change
            blocked[: max(s1 for _, _, s1 in placed) + 15] = True
        cs = np.concatenate([[0], np.cumsum(blocked)])
        s = np.arange(max(0, days - length - after + 1))
        ok = s[(cs[s + length] - cs[s]) == 0]
        if len(ok) == 0:
            continue
        s0 = int(rng.choice(ok))
        s1 = s0 + length - 1
        blocked[max(0, s0 - 14) : s1 + 15] = True
        placed.append((kind, s0, s1))
    out = []
    for kind, s0, s1 in sorted(placed, key=lambda p: p[1]):
        injected = _inject(rng, acc, kind, s0, s1)
        if injected is not None:
            out.append(injected)
    return out


def _inject(
    rng: np.random.Generator, acc: _Account, kind: str, s0: int, s1: int
) -> tuple[str, int, int, int] | None:
    """Change ``acc.usage`` for one incident, sized against the account's daily total."""
    usage = acc.usage
    span = slice(s0, s1 + 1)
    total = acc.total()[span]
    live = np.nonzero((acc.service_start <= s0) & (usage[:, span] > 0).all(axis=1))[0]
    if len(live) == 0:
        return None
    share = (usage[live][:, span] / total[None, :]).min(axis=1)
    floor = MIN_TOTAL_MOVE[kind] + _MARGIN
    if kind == "outage_drop":
        need = floor / share
        fits = need <= 0.97
        if not fits.any():  # no service is big enough to drag the total down: a spike instead
            return _inject(rng, acc, "spike", s0, min(s1, s0 + 2))
        live, share = live[fits], share[fits]
    p = np.sqrt(np.maximum(share, 1e-9))
    svc = int(rng.choice(live, p=p / p.sum()))
    cost = usage[svc, span]
    if kind in ("spike", "billing_error"):
        floor *= float(rng.uniform(1.0, 2.0))
        rel = rng.uniform(0.8, 4.0) if kind == "spike" else rng.uniform(4.0, 19.0)
        usage[svc, span] = cost + np.maximum(rel * cost, floor * total)
    elif kind == "outage_drop":
        floor *= float(rng.uniform(1.0, 1.5))
        cut = min(0.97, max(float(rng.uniform(0.5, 0.95)), float((floor * total / cost).max())))
        usage[svc, span] = cost * (1.0 - cut)
    elif kind == "sustained_shift":
        floor *= float(rng.uniform(1.0, 1.6))
        k = max(float(rng.uniform(0.5, 2.0)), float((floor * total / cost).max()))
        usage[svc, s0:] *= 1.0 + k
    elif kind == "slow_leak":
        floor *= float(rng.uniform(1.0, 1.6))
        level = float(np.median(usage[svc, max(acc.plan.first_day, s0 - 28) : s0]))
        top = max(float(rng.uniform(0.6, 3.0)) * level, floor * float(total.max()))
        steps = np.arange(s1 - s0 + 1) / max(1, s1 - s0)
        grow = 0.1 + 0.9 * steps ** float(rng.uniform(0.8, 1.6))  # from 10% to 100% of ``top``
        usage[svc, span] = cost + top * grow
    elif kind == "forgotten_resource":
        history = acc.total()[max(acc.plan.first_day, s0 - 28) : s0]
        median = float(np.median(history[acc.active[max(acc.plan.first_day, s0 - 28) : s0]]))
        flat = max(float(rng.uniform(0.3, 1.5)) * median, floor * float(total.max()))
        usage[svc, span] = cost + flat
    return kind, svc, s0, s1
