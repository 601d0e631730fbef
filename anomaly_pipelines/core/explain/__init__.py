"""Explanations of anomalies: incidents, root causes and text a person can act on.

``explain_incidents`` is the entry point: scores (and optionally the usage rows with their
dimensions) in, one row per incident out, with facts, ranked root causes, a headline and a
detail text. The offline explainer is the default; Gemini only rephrases the same facts.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd

from anomaly_pipelines.core.config import ExplainConfig
from anomaly_pipelines.core.explain.gemini import GeminiExplainer
from anomaly_pipelines.core.explain.incidents import (
    DIMENSION_COLUMNS,
    INCIDENT_COLUMNS,
    IncidentFacts,
    find_incidents,
    prepare_dimensions,
    root_causes,
)
from anomaly_pipelines.core.explain.offline import Explainer, Explanation, OfflineExplainer

__all__ = [
    "DIMENSION_COLUMNS",
    "EXPLANATION_COLUMNS",
    "INCIDENT_COLUMNS",
    "Explainer",
    "Explanation",
    "GeminiExplainer",
    "IncidentFacts",
    "OfflineExplainer",
    "explain_incidents",
    "find_incidents",
    "make_explainer",
    "root_causes",
]

logger = logging.getLogger(__name__)

EXPLANATION_COLUMNS = [
    *INCIDENT_COLUMNS,
    "root_causes",
    "headline",
    "detail",
    "explainer",
    "fallback_reason",
]


def make_explainer(config: ExplainConfig, api_key: str | None = None) -> Explainer:
    """The explainer ``config`` asks for. Gemini without a key is not an error (the demo must run
    anywhere): the offline explainer stands in and every row records why."""
    offline_limits = {
        "max_headline_chars": config.max_headline_chars,
        "max_detail_chars": config.max_detail_chars,
    }
    if config.explainer == "offline":
        return OfflineExplainer(**offline_limits)
    key = api_key if api_key is not None else os.environ.get("GEMINI_API_KEY", "")
    if not key:
        return OfflineExplainer(**offline_limits, fallback_reason="GEMINI_API_KEY is not set")
    return GeminiExplainer(
        config.gemini_model,
        key,
        base_url=config.gemini_base_url,
        timeout_seconds=config.timeout_seconds,
        max_output_tokens=config.max_output_tokens,
        temperature=config.temperature,
        max_calls=config.max_calls_per_run,
        max_retries=config.max_retries,
        cache_dir=Path(config.cache_dir) if config.cache_dir else None,
        backoff_seconds=config.backoff_seconds,
        thinking_budget=config.thinking_budget,
        max_seconds_per_run=config.max_seconds_per_run,
        **offline_limits,
    )


def explain_incidents(
    scores: pd.DataFrame,
    dimensions: pd.DataFrame | None,
    config: ExplainConfig,
    explainer: Explainer | None = None,
) -> pd.DataFrame:
    """One row per incident: the incident columns, ``root_causes`` (JSON list), ``headline``,
    ``detail``, ``explainer`` (who wrote the text) and ``fallback_reason`` ('' when none).

    Root causes need ``dimensions`` (usage rows with customer_id, timestamp, cost and any of
    service, region, sub_account, charge_category); without them the list is empty. When the
    scores have no ``currency`` column the usage rows' currency (if any) is used, else USD.
    """
    incidents = find_incidents(scores, config.max_gap_steps, severity_pct=config.severity_pct)
    if incidents.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in EXPLANATION_COLUMNS}).astype(
            incidents.dtypes.to_dict()
        )
    by_customer = prepare_dimensions(dimensions)
    if "currency" not in scores.columns:
        incidents["currency"] = [
            _currency(by_customer.get(cid), default)
            for cid, default in zip(incidents["customer_id"], incidents["currency"], strict=True)
        ]
    chosen = explainer if explainer is not None else make_explainer(config)
    fallback = OfflineExplainer(config.max_headline_chars, config.max_detail_chars)
    extra: dict[str, list[str]] = {
        k: [] for k in ("root_causes", "headline", "detail", "explainer", "fallback_reason")
    }
    for _, incident in incidents.iterrows():
        causes = root_causes(
            incident,
            by_customer.get(str(incident["customer_id"])),
            config.top_root_causes,
            min_share=config.min_root_cause_share,
        )
        facts = IncidentFacts.from_row(incident, causes)
        try:
            explanation = chosen.explain(facts)
        except Exception as exc:
            if isinstance(chosen, OfflineExplainer):
                raise  # a bug in our own templates must surface, not hide behind a fallback
            # A third-party explainer failing must not fail the run; the type name is recorded,
            # not the message, which might quote a credential.
            logger.warning(
                "explainer %s failed on %s: %s", chosen.name, facts.incident_id, type(exc).__name__
            )
            explanation = fallback.explain(facts)
            explanation = Explanation(
                explanation.headline,
                explanation.detail,
                explanation.explainer,
                f"{chosen.name} failed: {type(exc).__name__}",
            )
        extra["root_causes"].append(json.dumps(list(facts.root_causes), ensure_ascii=False))
        extra["headline"].append(explanation.headline)
        extra["detail"].append(explanation.detail)
        extra["explainer"].append(explanation.explainer)
        extra["fallback_reason"].append(explanation.fallback_reason)
    for column, values in extra.items():
        incidents[column] = values
    return incidents[EXPLANATION_COLUMNS]


def _currency(rows: pd.DataFrame | None, default: str) -> str:
    if rows is not None and "currency" in rows.columns:
        values = rows["currency"].dropna().astype(str)
        if not values.empty:
            return values.iloc[0].upper()
    return default
