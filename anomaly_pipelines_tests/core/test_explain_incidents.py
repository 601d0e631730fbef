"""Incident merging, impact arithmetic, severity and root causes (core.explain.incidents)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from anomaly_pipelines.core.api import detect
from anomaly_pipelines.core.explain import INCIDENT_COLUMNS, find_incidents, root_causes
from anomaly_pipelines.core.explain.incidents import severity_of
from anomaly_pipelines.core.ids import customer_key
from anomaly_pipelines.core.sources.synthetic import generate_usage


def _scores(
    customer: str,
    cost: list[float],
    expected: list[float],
    anomalies: list[int],
    *,
    start: str = "2024-01-01",
    freq: str = "D",
    hybrid: list[float] | None = None,
    reasons: dict[int, str] | None = None,
    drop: list[int] | None = None,
) -> pd.DataFrame:
    n = len(cost)
    frame = pd.DataFrame(
        {
            "customer_id": customer,
            "timestamp": pd.date_range(start, periods=n, freq=freq, tz="UTC"),
            "cost": cost,
            "expected_cost": expected,
            "hybrid_score": hybrid
            if hybrid is not None
            else [2.0 if i in anomalies else 0.1 for i in range(n)],
            "is_anomaly": [i in anomalies for i in range(n)],
            "reasons": [
                (reasons or {}).get(i, "residual" if i in anomalies else "") for i in range(n)
            ],
        }
    )
    return frame.drop(index=drop or []).reset_index(drop=True)


def test_consecutive_anomalies_merge_and_costs_add_up() -> None:
    cost = [100.0] * 20
    expected = [100.0] * 20
    for i, value in {5: 150.0, 6: 250.0, 7: 130.0, 15: 40.0}.items():
        cost[i] = value
    hybrid = [0.1] * 20
    hybrid[5], hybrid[6], hybrid[7], hybrid[15] = 1.5, 4.0, 1.2, 2.0
    scores = _scores(
        "acme",
        cost,
        expected,
        [5, 6, 7, 15],
        hybrid=hybrid,
        reasons={5: "residual", 6: "lstm,residual", 7: "isolation_forest", 15: "decrease"},
    )
    incidents = find_incidents(scores)
    assert list(incidents.columns) == INCIDENT_COLUMNS
    assert len(incidents) == 2
    spike, drop = incidents.iloc[0], incidents.iloc[1]
    assert spike["start"] == pd.Timestamp("2024-01-06", tz="UTC")
    assert spike["end"] == pd.Timestamp("2024-01-08", tz="UTC")
    assert spike["steps"] == 3
    assert spike["actual_cost"] == pytest.approx(530.0)
    assert spike["expected_cost"] == pytest.approx(300.0)
    assert spike["impact"] == pytest.approx(230.0)
    assert spike["impact_pct"] == pytest.approx(230.0 / 300.0 * 100)
    assert spike["direction"] == "increase"
    assert spike["peak_timestamp"] == pd.Timestamp("2024-01-07", tz="UTC")
    assert spike["max_hybrid_score"] == pytest.approx(4.0)
    assert spike["signals"] == "isolation_forest,lstm,residual"
    assert spike["severity"] == "high"  # +76.7%: at least 50, below 100
    assert drop["impact"] == pytest.approx(-60.0)
    assert drop["impact_pct"] == pytest.approx(-60.0)
    assert drop["direction"] == "decrease"
    assert drop["signals"] == "decrease"
    assert drop["steps"] == 1


def test_gap_steps_bridge_short_pauses_but_not_long_ones() -> None:
    n = 30
    scores = _scores("c", [200.0] * n, [100.0] * n, [3, 5, 9, 10, 20])
    # one normal step between 3 and 5 is bridged by the default; 3 normal steps (6-8) are not
    default = find_incidents(scores)
    assert [(r.start.day, r.end.day) for r in default.itertuples()] == [(4, 6), (10, 11), (21, 21)]
    strict = find_incidents(scores, max_gap_steps=0)
    assert [(r.start.day, r.end.day) for r in strict.itertuples()] == [
        (4, 4),
        (6, 6),
        (10, 11),
        (21, 21),
    ]
    loose = find_incidents(scores, max_gap_steps=3)
    assert [(r.start.day, r.end.day) for r in loose.itertuples()] == [(4, 11), (21, 21)]
    # the bridged normal step counts in the span's costs: 3 steps at 200 vs 100 expected
    assert default.iloc[0]["steps"] == 3
    assert default.iloc[0]["impact"] == pytest.approx(300.0)


def test_missing_rows_count_as_steps_of_the_series_frequency() -> None:
    # 5-minute data; the row at position 4 is missing from the scores (a gap in the input)
    scores = _scores(
        "m", [10.0] * 12, [5.0] * 12, [3, 5], start="2024-05-01 10:00", freq="5min", drop=[4]
    )
    incidents = find_incidents(scores, max_gap_steps=1)
    assert len(incidents) == 1
    row = incidents.iloc[0]
    assert row["step_seconds"] == 300.0
    assert row["steps"] == 3  # 10:15 .. 10:25 spans three 5-minute steps
    assert row["actual_cost"] == pytest.approx(20.0)  # only observed rows are summed
    assert find_incidents(scores, max_gap_steps=0).shape[0] == 2


def test_severity_grades_by_relative_impact() -> None:
    assert severity_of(5.0, 10.0) == "low"
    assert severity_of(30.0, 20.0) == "medium"
    assert severity_of(-55.0, -55.0) == "high"
    assert severity_of(-100.0, -100.0) == "critical"
    assert severity_of(12.0, math.nan) == "critical"  # spend where none was expected
    assert severity_of(0.0, math.nan) == "low"
    assert severity_of(30.0, 30.0, thresholds=(40.0, 60.0, 80.0)) == "low"


def test_zero_expectation_has_no_percentage() -> None:
    scores = _scores("z", [0.0, 0.0, 50.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2])
    row = find_incidents(scores).iloc[0]
    assert math.isnan(row["impact_pct"])
    assert row["impact"] == pytest.approx(50.0)
    assert row["severity"] == "critical"


def test_incident_ids_are_stable_and_safe_for_untrusted_customer_ids() -> None:
    weird = "../Acme Corp/ü"
    scores = _scores(weird, [1.0, 9.0, 1.0], [1.0, 1.0, 1.0], [1])
    first = find_incidents(scores)
    again = find_incidents(scores.sample(frac=1.0, random_state=0))  # row order must not matter
    assert first["incident_id"].tolist() == again["incident_id"].tolist()
    incident_id = first.iloc[0]["incident_id"]
    assert incident_id.startswith(customer_key(weird))
    assert "/" not in incident_id and " " not in incident_id
    assert first.iloc[0]["customer_id"] == weird


def test_no_anomalies_gives_an_empty_frame_with_the_columns() -> None:
    out = find_incidents(_scores("q", [1.0] * 5, [1.0] * 5, []))
    assert out.empty and list(out.columns) == INCIDENT_COLUMNS


def test_missing_and_bad_columns_are_named() -> None:
    scores = _scores("q", [1.0] * 5, [1.0] * 5, [2])
    with pytest.raises(ValueError, match="expected_cost"):
        find_incidents(scores.drop(columns="expected_cost"))
    bad = scores.astype({"cost": object})
    bad.loc[3, "cost"] = "12,5 EUR"
    with pytest.raises(ValueError, match=r"row 3, column 'cost'"):
        find_incidents(bad)
    with pytest.raises(ValueError, match="max_gap_steps"):
        find_incidents(scores, max_gap_steps=-1)


def test_currency_column_is_carried() -> None:
    scores = _scores("eu", [1.0, 5.0, 1.0], [1.0, 1.0, 1.0], [1]).assign(currency="eur")
    assert find_incidents(scores).iloc[0]["currency"] == "EUR"
    assert find_incidents(scores.drop(columns="currency")).iloc[0]["currency"] == "USD"


# -- root causes -------------------------------------------------------------------------------


def _usage_with_culprit() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Three services in two regions, flat for 40 days; Database jumps by 90/day on days 30-32
    while Storage falls by 10/day (an offsetting move that must not be called a cause)."""
    days = pd.date_range("2024-01-01", periods=40, freq="D", tz="UTC")
    base = {
        ("Compute", "us-east-1"): 60.0,
        ("Database", "eu-west-1"): 30.0,
        ("Storage", "us-east-1"): 10.0,
    }
    rows = []
    for i, day in enumerate(days):
        for (service, region), cost in base.items():
            if 30 <= i <= 32 and service == "Database":
                cost += 90.0
            if 30 <= i <= 32 and service == "Storage":
                cost -= 10.0
            rows.append(
                {
                    "customer_id": "acme",
                    "timestamp": day,
                    "service": service,
                    "region": region,
                    "charge_category": "Usage",
                    "cost": cost,
                }
            )
    usage = pd.DataFrame(rows)
    total = usage.groupby("timestamp", as_index=False)["cost"].sum()
    scores = pd.DataFrame(
        {
            "customer_id": "acme",
            "timestamp": total["timestamp"],
            "cost": total["cost"],
            "expected_cost": 100.0,
            "hybrid_score": [3.0 if 30 <= i <= 32 else 0.1 for i in range(40)],
            "is_anomaly": [30 <= i <= 32 for i in range(40)],
            "reasons": "",
        }
    )
    return usage, scores


def test_root_causes_rank_the_culprit_and_reconcile_with_the_incident() -> None:
    usage, scores = _usage_with_culprit()
    incident = find_incidents(scores).iloc[0]
    assert incident["impact"] == pytest.approx(240.0)  # 3 days x (+90 - 10)
    causes = root_causes(incident, usage, top_n=5)
    assert [(c["dimension"], c["value"]) for c in causes] == [
        ("service", "Database"),
        ("region", "eu-west-1"),
    ]
    database = causes[0]
    assert database["actual"] == pytest.approx(360.0)
    assert database["expected"] == pytest.approx(90.0)  # 30% of the 300 expected
    assert database["impact"] == pytest.approx(270.0)
    # Database alone moved 270 of the net 240: the other 30 went the other way (Storage)
    assert database["share"] == pytest.approx(270.0 / 240.0)
    # charge_category has a single value and explains nothing; Storage moved the other way
    assert all(c["dimension"] != "charge_category" for c in causes)
    assert all(c["value"] != "Storage" for c in causes)
    assert root_causes(incident, usage, top_n=1) == causes[:1]


def test_root_causes_of_a_drop_point_at_the_falling_value() -> None:
    usage, scores = _usage_with_culprit()
    falling = usage.copy()
    flat = {"Compute": 60.0, "Database": 30.0, "Storage": 10.0}
    falling["cost"] = falling["service"].map(flat)
    stopped = (falling["service"] == "Compute") & falling["timestamp"].isin(
        scores["timestamp"].iloc[30:32]
    )
    falling.loc[stopped, "cost"] = 0.0
    total = falling.groupby("timestamp")["cost"].sum().to_numpy()
    drop_scores = scores.assign(cost=total, is_anomaly=[i in (30, 31) for i in range(40)])
    incident = find_incidents(drop_scores).iloc[0]
    assert incident["direction"] == "decrease"
    assert incident["impact"] == pytest.approx(-120.0)
    causes = root_causes(incident, falling)
    assert [(c["dimension"], c["value"]) for c in causes] == [
        ("service", "Compute"),
        ("region", "us-east-1"),
    ]
    assert causes[0]["impact"] == pytest.approx(-120.0)
    assert causes[0]["share"] == pytest.approx(1.0)


def test_root_causes_without_usable_dimensions_are_empty() -> None:
    usage, scores = _usage_with_culprit()
    incident = find_incidents(scores).iloc[0]
    assert root_causes(incident, None) == []
    assert root_causes(incident, usage[["customer_id", "timestamp", "cost"]]) == []
    assert root_causes(incident, usage.assign(customer_id="other")) == []
    # no usage before the incident: no baseline mix to compare with
    assert root_causes(incident, usage[usage["timestamp"] >= incident["start"]]) == []


def test_root_causes_name_a_bad_dimension_row() -> None:
    usage, scores = _usage_with_culprit()
    incident = find_incidents(scores).iloc[0]
    bad = usage.astype({"cost": object})
    bad.loc[7, "cost"] = "n/a"
    with pytest.raises(ValueError, match=r"dimensions: row 7, column 'cost'"):
        root_causes(incident, bad)
    missing = usage.drop(columns="timestamp")
    with pytest.raises(ValueError, match="timestamp"):
        root_causes(incident, missing)


@pytest.fixture(scope="module")
def synthetic() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    data = generate_usage(customers=4, days=180, seed=1)
    totals = data.usage.groupby(["customer_id", "timestamp"], as_index=False)["cost"].sum()
    return data.usage, data.incidents, detect(totals, {"lstm": {"epochs": 2}})


def test_root_cause_finds_the_injected_service_on_synthetic_data(
    synthetic: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
) -> None:
    """The generator knows which service each incident was injected into; the detector's own
    expected costs plus the usage rows must name that service first for every labelled event."""
    usage, labelled, scores = synthetic
    assert len(labelled) >= 3
    marked = scores.copy()
    marked["is_anomaly"] = False
    for event in labelled.itertuples():
        inside = (marked["customer_id"] == event.customer_id) & marked["timestamp"].between(
            event.start, event.end
        )
        marked.loc[inside, "is_anomaly"] = True
    incidents = find_incidents(marked, max_gap_steps=0)
    assert len(incidents) == len(labelled)
    for event in labelled.itertuples():
        incident = incidents[
            (incidents["customer_id"] == event.customer_id) & (incidents["start"] == event.start)
        ].iloc[0]
        causes = root_causes(incident, usage)
        assert causes, f"no root cause for {event.kind} in {event.service}"
        assert (causes[0]["dimension"], causes[0]["value"]) == ("service", event.service), (
            event.kind,
            causes,
        )
        assert causes[0]["share"] > 0.5
        assert np.sign(causes[0]["impact"]) == np.sign(incident["impact"])


def test_root_causes_follow_each_values_weekly_rhythm() -> None:
    """Batch runs only on weekdays; a Saturday spike in Web must not be read as 'Batch down'
    (a flat pre-incident mix would expect Batch on Saturday too and blame it)."""
    days = pd.date_range("2024-01-01", periods=42, freq="D", tz="UTC")  # 2024-01-01 is a Monday
    saturday = days[40]
    assert saturday.dayofweek == 5
    rows = []
    for day in days:
        weekday = day.dayofweek < 5
        rows.append(
            {
                "customer_id": "c",
                "timestamp": day,
                "service": "Batch",
                "cost": 100.0 if weekday else 0.0,
            }
        )
        rows.append(
            {
                "customer_id": "c",
                "timestamp": day,
                "service": "Web",
                "cost": 100.0 if day == saturday else 50.0,
            }
        )
    usage = pd.DataFrame(rows)
    total = usage.groupby("timestamp", as_index=False)["cost"].sum()
    scores = total.assign(
        customer_id="c",
        expected_cost=[150.0 if d.dayofweek < 5 else 50.0 for d in total["timestamp"]],
        hybrid_score=0.1,
        is_anomaly=total["timestamp"] == saturday,
        reasons="residual",
    )
    incident = find_incidents(scores).iloc[0]
    assert incident["impact"] == pytest.approx(50.0)
    causes = root_causes(incident, usage)
    assert [(c["value"], round(c["impact"], 6), round(c["expected"], 6)) for c in causes] == [
        ("Web", 50.0, 50.0)
    ]


def test_no_root_cause_when_only_the_expectation_moved() -> None:
    """If the detector's expectation is off (e.g. still inflated by an earlier runaway job) while
    every service runs at its usual level, no service is to blame."""
    usage, scores = _usage_with_culprit()
    usage = usage.assign(
        cost=usage["service"].map({"Compute": 60.0, "Database": 30.0, "Storage": 10.0})
    )
    inflated = scores.assign(
        cost=100.0, expected_cost=[160.0 if 30 <= i <= 32 else 100.0 for i in range(40)]
    )
    incident = find_incidents(inflated).iloc[0]
    assert incident["impact"] == pytest.approx(-180.0)
    assert root_causes(incident, usage) == []


def test_a_change_of_direction_starts_a_new_incident() -> None:
    # a runaway job (days 10-12 above expectation), then days 13-14 far below an expectation
    # it inflated; day 15 is flagged by the drop rule only, barely below expectation
    cost = [100.0] * 25
    for i, value in {10: 200.0, 11: 300.0, 12: 400.0, 13: 40.0, 14: 40.0, 16: 95.0}.items():
        cost[i] = value
    scores = _scores("r", cost, [100.0] * 25, [10, 11, 12, 13, 14, 16])
    scores["residual_score"] = (scores["cost"] - scores["expected_cost"]).abs() / 10.0
    incidents = find_incidents(scores)
    assert [(r.start.day, r.end.day, r.direction) for r in incidents.itertuples()] == [
        (11, 13, "increase"),
        (14, 17, "decrease"),  # day 17 (-5, under 2 sigma) joins the drop instead of splitting it
    ]
    assert incidents["impact"].tolist() == pytest.approx([600.0, -125.0])
    # without residual scores, a 10% gap is "clear"
    assert len(find_incidents(scores.drop(columns="residual_score"))) == 2
