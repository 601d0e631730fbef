"""Channels: Slack-compatible webhooks, generic JSON webhooks and e-mail over SMTP.

A channel turns a stored message (a plain dict, see ``engine``) into one HTTP POST or one
e-mail. Secrets are resolved from the environment at send time and live only in local variables:
errors are reduced to a type name and a status code, because an exception's text can quote the
URL (whose path is the Slack token) or the SMTP server's reply to a login.
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from anomaly_pipelines.core.config import AlertsConfig, AlertSubscriptionConfig

logger = logging.getLogger(__name__)


class DeliveryError(Exception):
    """A delivery attempt failed; ``str()`` is safe to store and log (no secrets)."""

    def __init__(self, reason: str, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class ConfigurationError(DeliveryError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason, retryable=False)


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    attempts: int
    error: str = ""


def _env(name: str | None, what: str) -> str:
    if not name:
        raise ConfigurationError(f"{what}: no environment variable configured")
    value = os.environ.get(name, "")
    if not value:
        raise ConfigurationError(f"{what}: environment variable {name} is not set")
    return value


# -- rendering -------------------------------------------------------------------------------


def render_text(message: dict[str, Any]) -> str:
    """The plain-text body shared by every channel."""
    if message.get("kind") == "digest":
        parts = [message["subject"], ""]
        for item in message.get("items", []):
            parts.append(render_text(item))
            parts.append("-" * 40)
        return "\n".join(parts).rstrip("-\n") + "\n"
    lines = [message["subject"]]
    for label, key in (
        ("Incident", "incident_id"),
        ("Customer", "customer_id"),
        ("Status", "status_line"),
        ("Impact", "impact_text"),
        ("Period", "period"),
        ("Severity", "severity"),
    ):
        if message.get(key):
            lines.append(f"{label}: {message[key]}")
    causes = message.get("root_causes") or []
    if causes:
        lines.append("Top root causes:")
        lines += [f"  - {c}" for c in causes]
    if message.get("detail"):
        lines += ["", str(message["detail"])]
    if message.get("explainer"):
        lines.append(f"(explanation: {message['explainer']})")
    if message.get("plot"):
        lines.append(f"Plot: {message['plot']}")
    if message.get("incident_id"):
        lines += [
            "",
            "Feedback: anomaly-pipelines feedback "
            f"{message['incident_id']} accurate|not-anomaly|planned [--note TEXT]",
        ]
    return "\n".join(lines) + "\n"


def slack_payload(message: dict[str, Any]) -> dict[str, Any]:
    """Slack incoming-webhook JSON: ``text`` (notifications, fallback) plus mrkdwn blocks."""
    text = render_text(message)
    return {
        "text": message["subject"],
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": message["subject"][:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}},
        ],
    }


def webhook_payload(message: dict[str, Any]) -> dict[str, Any]:
    """Generic JSON: the structured message itself, plus the rendered text."""
    return {"source": "anomaly-pipelines", **message, "text": render_text(message)}


# -- sending ---------------------------------------------------------------------------------


def post_json(url: str, payload: dict[str, Any], headers: dict[str, str], timeout: float) -> None:
    data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        # 4xx other than 408/429 will not get better by retrying.
        retryable = exc.code >= 500 or exc.code in (408, 429)
        raise DeliveryError(f"HTTP {exc.code}", retryable=retryable) from None
    except TimeoutError:
        raise DeliveryError("timeout") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        kind = "timeout" if isinstance(reason, TimeoutError) else type(reason).__name__
        raise DeliveryError(f"connection failed: {kind}") from None
    except (ConnectionError, OSError) as exc:
        raise DeliveryError(f"connection failed: {type(exc).__name__}") from None
    except ValueError:
        raise ConfigurationError("the webhook URL is not a valid http(s) URL") from None


def send_email(sub: AlertSubscriptionConfig, message: dict[str, Any], timeout: float) -> None:
    if not sub.email_to:
        raise ConfigurationError("email_to is empty")
    email = EmailMessage()
    email["Subject"] = message["subject"]
    email["From"] = sub.email_from
    email["To"] = ", ".join(sub.email_to)
    email.set_content(render_text(message))
    password = _env(sub.smtp_password_env, "smtp_password_env") if sub.smtp_username else None
    try:
        smtp_class = smtplib.SMTP_SSL if sub.smtp_ssl else smtplib.SMTP
        with smtp_class(sub.smtp_host, sub.smtp_port, timeout=timeout) as smtp:
            if sub.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if sub.smtp_username and password is not None:
                smtp.login(sub.smtp_username, password)
            smtp.send_message(email)
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(
            f"SMTP authentication failed ({exc.smtp_code})", retryable=False
        ) from None
    except smtplib.SMTPRecipientsRefused:
        raise DeliveryError("SMTP refused every recipient", retryable=False) from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(f"SMTP error {exc.smtp_code}", retryable=exc.smtp_code < 500) from None
    except smtplib.SMTPException as exc:
        raise DeliveryError(f"SMTP error: {type(exc).__name__}") from None
    except TimeoutError:
        raise DeliveryError("timeout") from None
    except OSError as exc:
        raise DeliveryError(f"connection failed: {type(exc).__name__}") from None


def send_once(sub: AlertSubscriptionConfig, message: dict[str, Any], timeout: float) -> None:
    """One attempt over the subscription's channel; raises ``DeliveryError``."""
    if sub.channel == "email":
        send_email(sub, message, timeout)
        return
    url = _env(sub.url_env, "url_env")
    headers = {header: _env(var, f"header {header}") for header, var in sub.header_env.items()}
    payload = slack_payload(message) if sub.channel == "slack" else webhook_payload(message)
    post_json(url, payload, headers, timeout)


def deliver(
    sub: AlertSubscriptionConfig,
    message: dict[str, Any],
    config: AlertsConfig,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryResult:
    """Send with up to ``config.max_attempts`` attempts and exponential backoff. Never raises
    for a delivery problem: the result says what happened, in words safe to store."""
    error = ""
    for attempt in range(1, config.max_attempts + 1):
        try:
            send_once(sub, message, config.timeout_seconds)
            return DeliveryResult(True, attempt)
        except DeliveryError as exc:
            error = exc.reason
            logger.warning(
                "alert %r to subscription %r: attempt %d/%d failed: %s",
                message.get("subject", "")[:80],
                sub.name,
                attempt,
                config.max_attempts,
                error,
            )
            if not exc.retryable:
                return DeliveryResult(False, attempt, error)
        if attempt < config.max_attempts:
            sleep(config.backoff_seconds * 2 ** (attempt - 1))
    return DeliveryResult(False, config.max_attempts, error)
