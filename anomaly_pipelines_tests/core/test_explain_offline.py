"""The offline explainer and ``explain_incidents``: facts in the text, limits, no network."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from anomaly_pipelines.core.config import ExplainConfig, load_config
from anomaly_pipelines.core.explain import (
    EXPLANATION_COLUMNS,
    IncidentFacts,
    OfflineExplainer,
    explain_incidents,
    find_incidents,
    root_causes,
)
from anomaly_pipelines.core.explain import formatting as fmt


def _case(
    customer: str = "acme", bump: float = 90.0, days: int = 40
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Flat services; ``bump`` is added to Database on days 30-32 (negative: a drop)."""
    stamps = pd.date_range("2024-01-01", periods=days, freq="D", tz="UTC")
    rows = []
    for i, day in enumerate(stamps):
        for service, region, cost in (
            ("Compute", "us-east-1", 60.0),
            ("Database", "eu-west-1", 30.0),
            ("Storage", "us-east-1", 10.0),
        ):
            extra = bump if (30 <= i <= 32 and service == "Database") else 0.0
            rows.append(
                {
                    "customer_id": customer,
                    "timestamp": day,
                    "service": service,
                    "region": region,
                    "cost": cost + extra,
                }
            )
    usage = pd.DataFrame(rows)
    totals = usage.groupby("timestamp", as_index=False)["cost"].sum()
    scores = totals.assign(
        customer_id=customer,
        expected_cost=100.0,
        hybrid_score=[3.0 if 30 <= i <= 32 else 0.1 for i in range(days)],
        is_anomaly=[30 <= i <= 32 for i in range(days)],
        reasons=["lstm,residual" if 30 <= i <= 32 else "" for i in range(days)],
    )
    return scores, usage


def _facts(customer: str = "acme", bump: float = 90.0) -> IncidentFacts:
    scores, usage = _case(customer, bump)
    incident = find_incidents(scores).iloc[0]
    return IncidentFacts.from_row(incident, root_causes(incident, usage))


def test_offline_text_states_the_facts_and_an_action() -> None:
    facts = _facts()
    out = OfflineExplainer().explain(facts)
    assert out.explainer == "offline" and out.fallback_reason == ""
    assert out.headline == "acme: +$270 (+90.0%) cost increase over 3 days, mostly Database"
    for text in (
        "$570.00",
        "$300.00",
        "$270.00 more",
        "+90.0%",
        "from 2024-01-31 to 2024-02-02",
        "(3 days)",
        "high",
    ):
        assert text in out.detail, text
    assert "service Database +$270.00 (100% of the increase)" in out.detail
    assert "LSTM autoencoder reconstruction error" in out.detail
    assert "Next step: check what changed in service Database around 2024-01-31" in out.detail


def test_a_drop_is_worded_as_a_drop() -> None:
    out = OfflineExplainer().explain(_facts(bump=-30.0))
    assert "cost drop" in out.headline and "-$90" in out.headline
    assert "$90.00 less" in out.detail
    assert "confirm the drop in service Database was intended" in out.detail


def test_determinism() -> None:
    first = OfflineExplainer().explain(_facts())
    assert OfflineExplainer().explain(_facts()) == first


@pytest.mark.parametrize("limit", [20, 40, 70, 120])
@pytest.mark.parametrize(
    "customer",
    [
        "acme",
        "x" * 300,
        "Ünïcödé Größe GmbH — Zürich 東京 " * 4,
        "a/../../etc/passwd",
        "<script>alert(1)</script>",
    ],
)
def test_headline_and_detail_respect_their_limits(customer: str, limit: int) -> None:
    facts = _facts(customer)
    explainer = OfflineExplainer(max_headline_chars=limit, max_detail_chars=limit * 5)
    out = explainer.explain(facts)
    assert 0 < len(out.headline) <= limit
    assert 0 < len(out.detail) <= limit * 5
    assert "+$270" in out.headline  # the change itself survives any shortening


def test_detail_drops_optional_parts_before_the_essentials() -> None:
    facts = _facts()
    full = OfflineExplainer().detail(facts)
    short = OfflineExplainer(max_detail_chars=len(full) - 40).detail(facts)
    assert len(short) <= len(full) - 40
    assert "$570.00" in short and "Next step" in short  # the facts and the action are kept
    assert "Signals" not in short


def test_headline_limit_is_validated() -> None:
    with pytest.raises(ValueError, match="max_headline_chars"):
        OfflineExplainer(max_headline_chars=5)


def test_explain_incidents_rows_and_columns() -> None:
    a_scores, a_usage = _case("acme")
    b_scores, b_usage = _case("globex", bump=-25.0)
    quiet_scores, quiet_usage = _case("initech", bump=0.0)
    quiet_scores["is_anomaly"] = False
    scores = pd.concat([a_scores, b_scores, quiet_scores], ignore_index=True)
    usage = pd.concat([a_usage, b_usage, quiet_usage], ignore_index=True)
    out = explain_incidents(scores, usage, ExplainConfig())
    assert list(out.columns) == EXPLANATION_COLUMNS
    assert out["customer_id"].tolist() == ["acme", "globex"]
    assert out["explainer"].tolist() == ["offline", "offline"]
    assert out["fallback_reason"].tolist() == ["", ""]
    causes = [json.loads(v) for v in out["root_causes"]]
    assert [c[0]["value"] for c in causes] == ["Database", "Database"]
    assert all(len(h) <= 70 for h in out["headline"])
    assert out.loc[1, "direction"] == "decrease"


def test_explain_incidents_without_dimensions_or_anomalies() -> None:
    scores, _ = _case()
    out = explain_incidents(scores, None, ExplainConfig())
    assert out["root_causes"].tolist() == ["[]"]
    assert "Root cause" not in out.loc[0, "detail"]
    assert "review deployments" in out.loc[0, "detail"]
    empty = explain_incidents(scores.assign(is_anomaly=False), None, ExplainConfig())
    assert empty.empty and list(empty.columns) == EXPLANATION_COLUMNS


def test_config_limits_and_currency_from_usage_rows() -> None:
    scores, usage = _case()
    config = ExplainConfig(max_headline_chars=40, top_root_causes=1)
    out = explain_incidents(scores, usage.assign(currency="eur"), config)
    assert out.loc[0, "currency"] == "EUR"
    assert len(out.loc[0, "headline"]) <= 40
    assert "€" in out.loc[0, "headline"] and "$" not in out.loc[0, "detail"]
    assert len(json.loads(out.loc[0, "root_causes"])) == 1


def test_config_section_loads_from_yaml(tmp_path: object) -> None:
    path = tmp_path / "explain.yaml"  # type: ignore[operator]
    path.write_text(
        "explain:\n  explainer: gemini\n  max_calls_per_run: 3\n  severity_pct: [10, 20, 30]\n"
    )
    config = load_config(path)
    assert config.explain.explainer == "gemini" and config.explain.max_calls_per_run == 3
    assert config.explain.severity_pct == (10.0, 20.0, 30.0)
    with pytest.raises(ValueError, match="gemini_modle"):
        load_config(None, {"explain": {"gemini_modle": "x"}})


def test_formatting_is_consistent() -> None:
    assert fmt.money(1234.5) == "$1,234.50"
    assert fmt.money(-3.1, "eur", signed=True) == "-€3.10"
    assert fmt.money(12, "CHF", signed=True) == "+12.00 CHF"
    assert fmt.compact_money(12345, signed=True) == "+$12.3k"
    assert fmt.compact_money(2_500_000) == "$2.5M"
    assert fmt.compact_money(-514.4) == "-$514"
    assert (
        fmt.percent(54.93) == "+54.9%"
        and fmt.percent(-1234.0) == "-1,234%"
        and fmt.percent(float("nan")) == "n/a"
    )
    assert fmt.duration(3, 86400) == "3 days" and fmt.duration(1, 86400) == "1 day"
    assert fmt.duration(9, 300) == "45 minutes" and fmt.duration(3, 3600) == "3 hours"
    start = pd.Timestamp("2024-05-01 10:05", tz="UTC")
    assert (
        fmt.period(start, start + pd.Timedelta(minutes=15), 300) == "2024-05-01 10:05 to 10:20 UTC"
    )
    assert fmt.period_phrase(start, start, 300) == "at 2024-05-01 10:05 UTC"
    assert re.fullmatch(r"x{9}…", fmt.shorten("x" * 50, 10))


def test_sub_daily_incident_text() -> None:
    stamps = pd.date_range("2024-05-01", periods=600, freq="5min", tz="UTC")
    scores = pd.DataFrame(
        {
            "customer_id": "edge",
            "timestamp": stamps,
            "cost": [3.0 if 300 <= i < 309 else 1.0 for i in range(600)],
            "expected_cost": 1.0,
            "hybrid_score": [2.0 if 300 <= i < 309 else 0.1 for i in range(600)],
            "is_anomaly": [300 <= i < 309 for i in range(600)],
            "reasons": "residual",
        }
    )
    out = explain_incidents(scores, None, ExplainConfig())
    assert len(out) == 1
    assert "45 minutes" in out.loc[0, "detail"]
    assert "from 2024-05-02 01:00 to 01:40 UTC" in out.loc[0, "detail"]
