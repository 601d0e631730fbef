"""Alerts: subscriptions, channels (Slack-compatible and generic webhooks, SMTP e-mail) and the
idempotent daily pass that sends one alert per incident, its updates and its end.

Plain Python (no Dagster): the daily Dagster asset ``daily_alerts`` and the CLI both call
``process_day`` / ``send_test`` / ``OperationsStore`` from here.
"""

from anomaly_pipelines.core.alerts.channels import DeliveryResult, render_text
from anomaly_pipelines.core.alerts.engine import (
    AlertRunSummary,
    continue_cut_incidents,
    customer_matches,
    flush,
    incident_matches,
    incident_message,
    process_day,
    sample_message,
    send_test,
)
from anomaly_pipelines.core.alerts.store import OperationsStore, store_url

__all__ = [
    "AlertRunSummary",
    "DeliveryResult",
    "OperationsStore",
    "continue_cut_incidents",
    "customer_matches",
    "flush",
    "incident_matches",
    "incident_message",
    "process_day",
    "render_text",
    "sample_message",
    "send_test",
    "store_url",
]
