"""The HTML report and Markdown summary: self-contained, ordered by impact, injection-proof."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from markdown_it import MarkdownIt

from anomaly_pipelines.core.api import detect
from anomaly_pipelines.core.config import ExplainConfig
from anomaly_pipelines.core.explain import EXPLANATION_COLUMNS, explain_incidents
from anomaly_pipelines.core.ids import customer_key
from anomaly_pipelines.core.plots import plot_customer, plot_portfolio
from anomaly_pipelines.core.report import write_report
from anomaly_pipelines.core.sources.synthetic import generate_usage

OUR_TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "h1",
    "h2",
    "h3",
    "div",
    "p",
    "table",
    "tr",
    "th",
    "td",
    "span",
    "a",
    "img",
    "section",
    "nav",
    "br",
    # what our Markdown template renders to (tables, bullet lists, the italic note)
    "thead",
    "tbody",
    "ul",
    "li",
    "em",
}


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text, as a browser's parser sees them."""

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(document)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def attr(self, name: str) -> list[str]:
        return [str(a[name]) for _, a in self.tags if name in a]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A real run on synthetic data: detect, explain, plot, report."""
    data = generate_usage(customers=4, days=180, seed=1)
    totals = data.usage.groupby(["customer_id", "timestamp"], as_index=False)["cost"].sum()
    scores = detect(totals, {"lstm": {"epochs": 2}, "hybrid": {"decision_threshold": 0.8}})
    explanations = explain_incidents(scores, data.usage, ExplainConfig())
    out = tmp_path_factory.mktemp("report")
    plots = {
        str(c): plot_customer(g, explanations, out / "plots" / f"{customer_key(str(c))}.png")
        for c, g in scores.groupby("customer_id")
    }
    portfolio = plot_portfolio(scores, explanations, out / "plots" / "portfolio.png")
    html_path, md_path = write_report(
        scores, explanations, plots, out, title="Run 42", portfolio_plot=portfolio
    )
    return {
        "scores": scores,
        "explanations": explanations,
        "plots": plots,
        "html": html_path,
        "md": md_path,
        "out": out,
    }


def test_report_is_self_contained(run: dict[str, object]) -> None:
    html_path, out = run["html"], run["out"]
    assert isinstance(html_path, Path) and html_path.parent == out
    document = html_path.read_text(encoding="utf-8")
    parsed = Elements(document)
    sources = parsed.attr("src")
    assert len(sources) == 1 + len(run["plots"])  # type: ignore[arg-type]
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(h.startswith("#") for h in parsed.attr("href"))  # in-page links only
    assert not any(tag in {"link", "script", "iframe"} for tag, _ in parsed.tags)
    first_plot = next(iter(run["plots"].values()))  # type: ignore[attr-defined]
    assert base64.b64encode(first_plot.read_bytes()).decode() in document


def test_top_anomalies_come_first_by_impact(run: dict[str, object]) -> None:
    explanations = run["explanations"]
    assert isinstance(explanations, pd.DataFrame) and len(explanations) >= 2
    expected = (
        explanations.assign(a=explanations["impact"].abs())
        .sort_values("a", ascending=False)["headline"]
        .head(10)
    )
    document = run["html"].read_text(encoding="utf-8")  # type: ignore[attr-defined]
    parsed = Elements(document)
    positions = [document.find(_html_text(h)) for h in expected]
    assert all(p > 0 for p in positions) and positions == sorted(positions)
    assert "".join(parsed.text).count("Explanation by the offline explainer.") == len(expected)
    # every customer with an incident has its own section, reachable from the top
    ids = {a.get("id") for _, a in parsed.tags if a.get("id")}
    assert {f"c-{customer_key(c)}" for c in explanations["customer_id"]} <= ids


def test_markdown_summary(run: dict[str, object]) -> None:
    md_path, out = run["md"], run["out"]
    text = md_path.read_text(encoding="utf-8")  # type: ignore[attr-defined]
    assert text.startswith("# Run 42\n")
    explanations = run["explanations"]
    rows = [line for line in text.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert len(rows) == min(10, len(explanations))  # type: ignore[arg-type]
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) == 1 + len(run["plots"])  # type: ignore[arg-type]
    assert all((out / image).exists() for image in images)  # type: ignore[operator]
    assert "$" not in text.replace("\\$", "")  # every dollar escaped: GitHub would render math


def _html_text(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def _hostile() -> tuple[pd.DataFrame, pd.DataFrame]:
    customer = "<script>alert(1)</script>"
    stamps = pd.date_range("2024-01-01", periods=5, freq="D", tz="UTC")
    scores = pd.DataFrame(
        {
            "customer_id": [customer] * 5 + ["](javascript:alert(2))"] * 5,
            "timestamp": list(stamps) * 2,
            "cost": 1.0,
            "expected_cost": 1.0,
            "hybrid_score": 0.1,
            "is_anomaly": False,
            "reasons": "",
            "status": ["scored"] * 5 + ["unscored"] * 5,
        }
    )
    row = {
        "incident_id": "x",
        "customer_id": customer,
        "start": stamps[1],
        "end": stamps[2],
        "peak_timestamp": stamps[2],
        "steps": 2,
        "actual_cost": 10.0,
        "expected_cost": 2.0,
        "impact": 8.0,
        "impact_pct": 400.0,
        "direction": "increase",
        "signals": "residual,<i>x</i>",
        "max_hybrid_score": 5.0,
        "severity": 'critical" onmouseover="alert(3)',
        "currency": "USD",
        "step_seconds": 86400.0,
        "root_causes": json.dumps(
            [
                {
                    "dimension": "service",
                    "value": "<b onclick=alert(4)>db</b>",
                    "actual": 9.0,
                    "expected": 1.0,
                    "impact": 8.0,
                    "share": 1.0,
                }
            ]
        ),
        "headline": "<img src=x onerror=alert(5)> $5 **now**",
        "detail": "[click](javascript:alert(6)) | pipe\n# heading\n- item <iframe src=//evil>",
        "explainer": "gemini",
        "fallback_reason": "",
    }
    return scores, pd.DataFrame([row], columns=EXPLANATION_COLUMNS)


def test_data_and_llm_text_cannot_inject_markup(tmp_path: Path) -> None:
    scores, explanations = _hostile()
    html_path, md_path = write_report(scores, explanations, {}, tmp_path, title="<title>x</title>")
    for document in (
        html_path.read_text(encoding="utf-8"),
        MarkdownIt("commonmark").enable("table").render(md_path.read_text(encoding="utf-8")),
    ):
        parsed = Elements(document)
        tags = {tag for tag, _ in parsed.tags}
        assert tags <= OUR_TAGS, tags - OUR_TAGS
        attrs = {name for _, a in parsed.tags for name in a}
        assert not any(name.startswith("on") for name in attrs), attrs
        assert not any("javascript" in h.lower() for h in parsed.attr("href"))
        assert not any(tag in {"b", "i", "iframe", "script"} for tag in tags)
        assert all(s.startswith("data:") for s in parsed.attr("src"))
        text = "".join(parsed.text)
        # shown to the reader as text, not dropped
        assert "<script>alert(1)</script>" in text
        assert "<img src=x onerror=alert(5)>" in text
    markdown = md_path.read_text(encoding="utf-8")
    assert "\n# heading" not in markdown and "\n- item" not in markdown  # newlines flattened


def test_run_without_anomalies_and_with_unscored_customers(tmp_path: Path) -> None:
    scores, explanations = _hostile()
    html_path, md_path = write_report(
        scores.assign(reasons="insufficient history"), explanations.iloc[0:0], {}, tmp_path
    )
    document = html_path.read_text(encoding="utf-8")
    assert "No anomalies in this run." in document
    assert "Customers not scored (1)" in document and "insufficient history" in document
    assert "No anomalies in this run." in md_path.read_text(encoding="utf-8")


def test_missing_plot_file_does_not_break_the_report(tmp_path: Path) -> None:
    scores, explanations = _hostile()
    customer = explanations.loc[0, "customer_id"]
    html_path, _ = write_report(scores, explanations, {customer: tmp_path / "gone.png"}, tmp_path)
    assert "data:image" not in html_path.read_text(encoding="utf-8")


def test_report_prints_the_stable_incident_ids_used_for_feedback(run: dict[str, object]) -> None:
    explanations = run["explanations"]
    assert len(explanations)
    html = run["html"].read_text(encoding="utf-8")
    markdown = run["md"].read_text(encoding="utf-8")
    top = explanations.sort_values("impact", key=abs, ascending=False).iloc[0]["incident_id"]
    assert f'id <span class="id">{top}</span>' in html
    assert f"Incident id: {top}" in markdown


def test_portfolio_moves_are_listed_though_nobody_is_flagged_for_them(run: dict[str, object], tmp_path: Path) -> None:
    scores = run["scores"].copy()  # type: ignore[attr-defined]
    day = sorted(scores["timestamp"].unique())[-20]
    moved = (scores["timestamp"] == day) & scores["customer_id"].isin(sorted(scores["customer_id"].unique())[:3])
    scores.loc[moved, "reasons"] = "portfolio_move"
    scores.loc[moved, "cost"] = scores.loc[moved, "expected_cost"] - 10.0
    html_path, md_path = write_report(scores, run["explanations"], {}, tmp_path)  # type: ignore[arg-type]
    text = md_path.read_text(encoding="utf-8")
    section = text.split("## Portfolio moves", 1)[1].split("##", 1)[0]
    row = [line for line in section.splitlines() if line.startswith(f"| {pd.Timestamp(day):%Y-%m-%d}")]
    assert len(row) == 1 and "| 3 |" in row[0] and "3 / 0" in row[0] and "30.00" in row[0], section
    assert "Portfolio moves" in Elements(html_path.read_text(encoding="utf-8")).text
    # a run without any has no such section
    _, plain = write_report(run["scores"], run["explanations"], {}, tmp_path / "plain")  # type: ignore[arg-type]
    assert "Portfolio moves" not in plain.read_text(encoding="utf-8")
