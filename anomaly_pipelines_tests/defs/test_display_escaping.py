"""Hostile customer ids reach people as plain, visible text.

Ids come from billing files anyone can write to. In Dagster's Markdown metadata (written by the
real ``scores_export`` asset) a ``<script>``, an ``<img onerror>`` or a Markdown link must arrive
escaped whether or not the UI sanitises it; in ``report.html`` and ``summary.md`` a
right-to-left override (which makes ``acme<RLO>cod.exe`` display as ``acmeexe.doc``) must be
shown as what it is.
"""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pandas as pd

from anomaly_pipelines import detect
from anomaly_pipelines.core.explain import find_incidents
from anomaly_pipelines.core.report import write_report
from anomaly_pipelines.defs.assets.reporting import scores_export
from anomaly_pipelines.defs.metadata import markdown_table
from anomaly_pipelines.defs.resources import PipelineSettings
from anomaly_pipelines_tests.defs.conftest import write_config

RLO = "\u202e"
HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    f"acme{RLO}cod.exe",
    "a|b\nc",
]


def _assert_plain(text: str, markdown: bool = True) -> None:
    for raw in ("<script", "<img", RLO):
        assert raw not in text, (raw, text)
    if markdown:  # an unescaped "](" would make a link; an unescaped "|" a new table cell
        assert not re.search(r"(?<!\\)\]\(javascript", text), text
        assert "a|b" not in text, text


def test_markdown_metadata_tables_escape_ids() -> None:
    text = markdown_table(pd.DataFrame({"customer_id": HOSTILE, "cost": 1.0}))
    _assert_plain(text)
    assert "&lt;script&gt;" in text and "acme&lt;U+202E&gt;cod.exe" in text
    assert len(text.splitlines()) == 2 + len(HOSTILE)  # one table row per id, none split


def test_scores_export_metadata_in_dagster_is_escaped(tmp_path: Path) -> None:
    days = pd.date_range("2024-01-01", periods=10, freq="D", tz="UTC")
    usage = pd.concat(
        [pd.DataFrame({"customer_id": cid, "timestamp": days, "cost": 1.0}) for cid in HOSTILE]
    )
    scores = detect(usage).assign(is_anomaly=True)  # every row listed in latest_anomalies
    settings = PipelineSettings.from_file(str(write_config(tmp_path)))
    result = scores_export(
        context=dg.build_asset_context(), anomaly_scores=scores, pipeline_settings=settings
    )
    shown = result.metadata["latest_anomalies"].value
    _assert_plain(shown)
    assert "&lt;img src=x onerror=alert(1)&gt;" in shown


def _scored(customer: str) -> pd.DataFrame:
    stamps = pd.date_range("2024-01-01", periods=30, freq="D", tz="UTC")
    flagged = [i == 25 for i in range(30)]
    return pd.DataFrame(
        {
            "customer_id": customer, "timestamp": stamps,
            "cost": [300.0 if f else 100.0 for f in flagged], "expected_cost": 100.0,
            "hybrid_score": [3.0 if f else 0.1 for f in flagged], "is_anomaly": flagged,
            "reasons": ["residual" if f else "" for f in flagged],
        }
    )


def test_report_shows_direction_overrides_and_markup_as_text(tmp_path: Path) -> None:
    scores = pd.concat([_scored(cid) for cid in HOSTILE], ignore_index=True)
    explanations = find_incidents(scores).assign(
        headline=lambda f: f["customer_id"] + " spiked", detail="see plot", explainer="offline"
    )
    html_path, md_path = write_report(scores, explanations, {}, tmp_path)
    page = html_path.read_text(encoding="utf-8")
    _assert_plain(page, markdown=False)
    assert "acme&lt;U+202E&gt;cod.exe" in page
    summary = md_path.read_text(encoding="utf-8")
    _assert_plain(summary)
    assert "U+202E" in summary
