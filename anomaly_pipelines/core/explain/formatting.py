"""How amounts, percentages, periods and durations are written, in one place.

The offline explainer, the Gemini prompt, the answer check and the report must all write a
figure the same way: the Gemini check accepts only figures that appear in the facts, so a
second, slightly different formatter would reject correct answers.
"""

from __future__ import annotations

import math

import pandas as pd

_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "INR": "₹"}
DAY_SECONDS = 86_400.0


def is_number(value: object) -> bool:
    """True for a finite real number (NaN, None and inf are "no value" in incident rows)."""
    try:
        return value is not None and math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def money(value: float, currency: str = "USD", *, signed: bool = False, decimals: int = 2) -> str:
    """``$1,234.56``, ``+$12.00``, ``-€3.10`` or ``1,234.56 CHF`` for currencies without a symbol."""
    if not is_number(value):
        return "n/a"
    amount = float(value)
    sign = "-" if amount < 0 else ("+" if signed else "")
    number = f"{abs(amount):,.{decimals}f}"
    code = str(currency or "USD").upper()
    symbol = _SYMBOLS.get(code)
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {code}"


def compact_money(value: float, currency: str = "USD", *, signed: bool = False) -> str:
    """Short form for headlines: ``+$514``, ``$12.3k``, ``-$1.2M``; cents only below 100."""
    if not is_number(value):
        return "n/a"
    amount = abs(float(value))
    if amount >= 1e6:
        body, suffix = f"{amount / 1e6:,.1f}", "M"
    elif amount >= 1e4:
        body, suffix = f"{amount / 1e3:,.1f}", "k"
    elif amount >= 100:
        body, suffix = f"{amount:,.0f}", ""
    else:
        body, suffix = f"{amount:,.2f}", ""
    sign = "-" if float(value) < 0 else ("+" if signed else "")
    code = str(currency or "USD").upper()
    symbol = _SYMBOLS.get(code)
    return f"{sign}{symbol}{body}{suffix}" if symbol else f"{sign}{body}{suffix} {code}"


def percent(value: float | None, *, signed: bool = True, decimals: int = 1) -> str:
    """``+54.9%``; large changes without decimals (``+1,234%``); ``n/a`` without a baseline."""
    if not is_number(value):
        return "n/a"
    pct = float(value)  # type: ignore[arg-type]
    places = 0 if abs(pct) >= 100 else decimals
    sign = "-" if pct < 0 else ("+" if signed else "")
    return f"{sign}{abs(pct):,.{places}f}%"


def share(value: float) -> str:
    """A share of a total as a whole percentage: ``97%``."""
    return "n/a" if not is_number(value) else f"{float(value) * 100:.0f}%"


def _unit(step_seconds: float) -> tuple[str, float]:
    if step_seconds >= DAY_SECONDS:
        return "day", DAY_SECONDS
    if step_seconds >= 3600:
        return "hour", 3600.0
    return "minute", 60.0


def duration(steps: int, step_seconds: float) -> str:
    """``3 days``, ``1 day``, ``45 minutes``: the span the incident covers, in the data's unit."""
    unit, size = _unit(step_seconds)
    count = steps * step_seconds / size
    text = f"{count:,.0f}" if abs(count - round(count)) < 1e-9 else f"{count:,.1f}"
    return f"{text} {unit}" + ("" if text == "1" else "s")


def timestamp(value: pd.Timestamp, step_seconds: float) -> str:
    """A date for daily data, a UTC date and time for sub-daily data."""
    ts = pd.Timestamp(value)
    ts = ts.tz_convert("UTC") if ts.tzinfo is not None else ts
    return f"{ts:%Y-%m-%d}" if step_seconds >= DAY_SECONDS else f"{ts:%Y-%m-%d %H:%M} UTC"


def period(start: pd.Timestamp, end: pd.Timestamp, step_seconds: float) -> str:
    """``2024-03-26``, ``2024-03-26 to 2024-03-28`` or ``2024-03-26 10:05 to 10:20 UTC``."""
    first, last = pd.Timestamp(start), pd.Timestamp(end)
    if first == last:
        return timestamp(first, step_seconds)
    if step_seconds < DAY_SECONDS and first.date() == last.date():
        return f"{first:%Y-%m-%d %H:%M} to {last:%H:%M} UTC"
    return (
        f"{timestamp(first, step_seconds).removesuffix(' UTC')} to {timestamp(last, step_seconds)}"
    )


def period_phrase(start: pd.Timestamp, end: pd.Timestamp, step_seconds: float) -> str:
    """The period inside a sentence: ``on 2024-03-26`` or ``from 2024-03-26 to 2024-03-28``."""
    text = period(start, end, step_seconds)
    if pd.Timestamp(start) == pd.Timestamp(end):
        return f"at {text}" if step_seconds < DAY_SECONDS else f"on {text}"
    return f"from {text}"


def shorten(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters, marking the cut with an ellipsis."""
    text = str(text)
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + "…" if limit > 0 else ""
