"""Seeded synthetic daily cloud cost with labelled incidents (the demo and benchmark data).

Each customer has a handful of services whose costs grow, follow a weekday/weekend rhythm, carry
noise, and may include a recurring first-of-month charge (normal, not an anomaly), occasional
missing days and credits. Incidents are injected into one service so root-cause analysis has a
known culprit: 1-3 day spikes, drops, level shifts, runaway ramps over 1-2 weeks, and weekend
workloads left running. Every incident is returned as a labelled interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SERVICES = ["Compute", "Storage", "Database", "Networking", "Analytics", "Kubernetes"]
REGIONS = ["us-east-1", "eu-west-1", "ap-south-1", "us-west-2"]
INCIDENT_KINDS = ("spike", "drop", "level_shift", "runaway_ramp", "weekend_left_running")


@dataclass(frozen=True)
class SyntheticData:
    usage: pd.DataFrame  # customer_id, timestamp, service, region, charge_category, cost
    incidents: pd.DataFrame  # customer_id, kind, service, start, end (inclusive days)
    # Customers billed a recurring first-of-month charge (normal: measures false alarms on it).
    monthly_charges: tuple[str, ...] = ()


def generate_usage(
    customers: int = 20,
    days: int = 730,
    start: str = "2024-01-01",
    seed: int = 7,
    with_incidents: bool = True,
    quiet_customers: int = 2,
    incidents_per_customer: tuple[int, int] = (2, 4),
    missing_day_rate: float = 0.004,
    credit_rate: float = 0.0,
) -> SyntheticData:
    """Long usage rows, one per customer, service and day, plus the injected incidents.

    The last ``quiet_customers`` customers never get an incident (false-alarm checks).
    Incidents are placed in the last 60% of the history so each customer keeps a clean start
    to learn from, as real onboarding usually does.

    ``credit_rate`` is the share of customers that also receive credits (negative rows with
    ``charge_category`` "Credit"): a monthly credit on a fixed day of the month, or a promotional
    credit of a fixed share of usage for a few months. Credits are normal billing, never labelled.
    They come from their own seeded generator, so the usage rows are the same with or without
    them.
    """
    rng = np.random.default_rng(seed)
    credit_rng = np.random.default_rng([seed, 1])
    dates = pd.date_range(start, periods=days, freq="D", tz="UTC")
    rows: list[pd.DataFrame] = []
    incidents: list[dict[str, object]] = []
    monthly_charges: list[str] = []
    t = np.arange(days)
    for c in range(customers):
        customer_id = f"customer-{c + 1:03d}"
        n_services = int(rng.integers(2, 5))
        services = list(rng.choice(SERVICES, size=n_services, replace=False))
        region = str(rng.choice(REGIONS))
        base = float(rng.lognormal(mean=5.0, sigma=0.8))
        growth = float(rng.uniform(-0.0002, 0.0012))
        weekend = float(rng.uniform(0.45, 0.95))
        noise = float(rng.uniform(0.03, 0.09))
        shares = rng.dirichlet(np.ones(n_services) * 2)
        weekday = np.asarray(dates.dayofweek)
        rhythm = np.where(weekday >= 5, weekend, 1.0)
        service_costs = {}
        for s, share in zip(services, shares, strict=True):
            cost = base * share * np.exp(growth * t) * rhythm
            cost = cost * (1 + rng.normal(0, noise, days))
            service_costs[s] = np.maximum(cost, 0.0)
        if rng.random() < 0.5:  # a support plan or reservation billed on the 1st: normal
            monthly = base * float(rng.uniform(0.6, 1.5))
            first = np.asarray(dates.day) == 1
            service_costs[services[0]] = service_costs[services[0]] + np.where(first, monthly, 0.0)
            monthly_charges.append(customer_id)
        if with_incidents and c < customers - quiet_customers:
            n_inc = int(rng.integers(incidents_per_customer[0], incidents_per_customer[1] + 1))
            taken = np.zeros(days, dtype=bool)
            for _ in range(n_inc):
                kind = str(rng.choice(INCIDENT_KINDS))
                service = str(rng.choice(services))
                placed = _inject(kind, service_costs[service], dates, rng, taken, int(days * 0.4))
                if placed is not None:
                    s0, s1 = placed
                    incidents.append(
                        {
                            "customer_id": customer_id,
                            "kind": kind,
                            "service": service,
                            "start": dates[s0],
                            "end": dates[s1],
                        }
                    )
        missing = rng.random(days) < missing_day_rate
        keep = ~missing
        if credit_rng.random() < credit_rate:
            credit = _credit(credit_rng, service_costs, dates, base)
            rows.append(
                pd.DataFrame(
                    {
                        "customer_id": customer_id,
                        "timestamp": dates[keep & (credit < 0)],
                        "service": services[0],
                        "region": region,
                        "charge_category": "Credit",
                        "cost": np.round(credit[keep & (credit < 0)], 4),
                    }
                )
            )
        for s in services:
            rows.append(
                pd.DataFrame(
                    {
                        "customer_id": customer_id,
                        "timestamp": dates[keep],
                        "service": s,
                        "region": region,
                        "charge_category": "Usage",
                        "cost": np.round(service_costs[s][keep], 4),
                    }
                )
            )
    usage = pd.concat(rows, ignore_index=True).sort_values(["customer_id", "timestamp", "service"])
    inc = pd.DataFrame(incidents, columns=["customer_id", "kind", "service", "start", "end"])
    return SyntheticData(usage.reset_index(drop=True), inc, tuple(monthly_charges))


def _credit(
    rng: np.random.Generator, service_costs: dict[str, np.ndarray], dates: pd.DatetimeIndex, base: float
) -> np.ndarray:
    """Daily credit amounts (<= 0) of one customer: monthly on a fixed day, or a share of usage
    over a promotional period of two to six months."""
    days = len(dates)
    credit = np.zeros(days)
    if rng.random() < 0.5:
        day = int(rng.integers(1, 29))
        credit[np.asarray(dates.day) == day] = -base * float(rng.uniform(0.2, 0.5))
    else:
        length = min(int(rng.integers(60, 181)), days)
        s0 = int(rng.integers(0, days - length + 1))
        usage = np.sum(list(service_costs.values()), axis=0)
        credit[s0 : s0 + length] = -usage[s0 : s0 + length] * float(rng.uniform(0.1, 0.25))
    return credit


def _inject(
    kind: str,
    cost: np.ndarray,
    dates: pd.DatetimeIndex,
    rng: np.random.Generator,
    taken: np.ndarray,
    earliest: int,
) -> tuple[int, int] | None:
    """Modify ``cost`` in place; return the (first, last) labelled day, or None if no room."""
    days = len(cost)
    length = {
        "spike": int(rng.integers(1, 4)),
        "drop": int(rng.integers(1, 4)),
        "level_shift": 7,
        "runaway_ramp": int(rng.integers(7, 15)),
        "weekend_left_running": 2,
    }[kind]
    if days - length - 1 <= earliest:
        return None  # too short a history to hold this incident
    for _ in range(50):
        s0 = int(rng.integers(earliest, days - length - 1))
        if kind == "weekend_left_running":
            s0 = s0 + (5 - dates[s0].dayofweek) % 7  # next Saturday
            if s0 + length >= days:
                continue
        s1 = s0 + length - 1
        lo, hi = max(0, s0 - 21), min(days, s1 + 22)
        if taken[lo:hi].any():
            continue
        taken[s0 : s1 + 1] = True
        level = float(np.median(cost[max(0, s0 - 28) : s0])) or 1.0
        if kind == "spike":
            cost[s0 : s1 + 1] += level * rng.uniform(1.5, 4.0)
        elif kind == "drop":
            cost[s0 : s1 + 1] *= rng.uniform(0.0, 0.3)
        elif kind == "level_shift":
            factor = rng.choice([rng.uniform(1.8, 2.5), rng.uniform(0.25, 0.5)])
            cost[s0:] *= factor  # the shift persists; its first week is the labelled event
        elif kind == "runaway_ramp":
            cost[s0 : s1 + 1] += level * np.linspace(0.3, 3.0, length)
        else:  # weekend workload left running: weekday level on Saturday and Sunday
            weekday_level = float(np.median(cost[max(0, s0 - 14) : s0][dates[max(0, s0 - 14) : s0].dayofweek < 5]))
            cost[s0 : s1 + 1] = np.maximum(cost[s0 : s1 + 1], weekday_level * rng.uniform(1.6, 2.2))
        return s0, s1
    return None
