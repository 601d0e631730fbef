"""The default explainer: deterministic text from the verified facts, no network.

It is also every other explainer's fallback, so it must never fail and never exceed the
configured lengths: whatever happens to Gemini, each incident still gets a headline and detail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from anomaly_pipelines.core.explain import formatting as fmt
from anomaly_pipelines.core.explain.incidents import IncidentFacts

# A root cause carrying at least this share of the change is "the" cause ("mostly X"); at
# least WORTH_A_LOOK it is still where the next step points.
MOSTLY = 0.5
WORTH_A_LOOK = 0.25

_DIMENSION_LABELS = {
    "service": "service",
    "region": "region",
    "sub_account": "sub-account",
    "charge_category": "charge category",
}


@dataclass(frozen=True)
class Explanation:
    headline: str
    detail: str
    explainer: str  # "offline" or "gemini": who wrote the text the reader sees
    fallback_reason: str = ""  # why a non-default explainer was not used; "" when it was


@runtime_checkable
class Explainer(Protocol):
    name: str

    def explain(self, facts: IncidentFacts) -> Explanation: ...


class OfflineExplainer:
    """Template text: facts, root cause and one next step, within the configured lengths."""

    name = "offline"

    def __init__(
        self, max_headline_chars: int = 70, max_detail_chars: int = 700, fallback_reason: str = ""
    ) -> None:
        if max_headline_chars < 10:
            raise ValueError(f"max_headline_chars must be at least 10, got {max_headline_chars}")
        self.max_headline_chars = max_headline_chars
        self.max_detail_chars = max_detail_chars
        # Set when this explainer stands in for one that could not run (e.g. no API key), so
        # every row says why the configured explainer was not used.
        self.fallback_reason = fallback_reason

    def explain(self, facts: IncidentFacts) -> Explanation:
        return Explanation(
            headline=self.headline(facts),
            detail=self.detail(facts),
            explainer=self.name,
            fallback_reason=self.fallback_reason,
        )

    def headline(self, facts: IncidentFacts) -> str:
        """Longest of a few templates that fits; the customer id is shortened last."""
        p = facts.presented()
        word = "cost increase" if facts.direction == "increase" else "cost drop"
        change = (
            f"{p['impact_short']} ({p['impact_pct']})"
            if p["impact_pct"] != "n/a"
            else p["impact_short"]
        )
        top = facts.root_causes[0] if facts.root_causes else None
        # "mostly X" only when X carries most of the change; a 20% contributor is not "mostly".
        cause = f", mostly {top['value']}" if top and top["share"] >= MOSTLY else ""
        tails = [
            f"{change} {word} over {p['duration']}{cause}",
            f"{change} {word}{cause}",
            f"{change} {word}",
            change,
        ]
        limit = self.max_headline_chars
        for tail in tails:
            text = f"{facts.customer_id}: {tail}"
            if len(text) <= limit:
                return text
        # The id is what makes the headline long (ids are untrusted and may be huge): shorten it,
        # but keep at least a recognisable prefix.
        for tail in tails[1:]:
            room = limit - len(tail) - 2
            if room >= 8:
                return f"{fmt.shorten(facts.customer_id, room)}: {tail}"
        # Very tight limits: the change matters more than whose it is (the row names the customer).
        for tail in tails:
            if len(tail) <= limit:
                return tail
        return fmt.shorten(tails[-1], limit)

    def detail(self, facts: IncidentFacts) -> str:
        p = facts.presented()
        verb = "more" if facts.direction == "increase" else "less"
        pct = f", {p['impact_pct']}" if p["impact_pct"] != "n/a" else ", with no spend expected"
        opening = (
            f"{fmt.shorten(facts.customer_id, 80)} spent {p['actual_cost']} "
            f"{fmt.period_phrase(facts.start, facts.end, facts.step_seconds)} ({p['duration']}) "
            f"against {p['expected_cost']} expected: {fmt.money(abs(facts.impact), facts.currency)} "
            f"{verb}{pct}. Severity: {facts.severity}; most unusual on {p['peak']}."
        )
        signals = f"Signals: {', '.join(p['signals'])}." if p["signals"] else ""
        causes = [
            f"{_DIMENSION_LABELS.get(c['dimension'], c['dimension'])} {c['value']} "
            f"{c['impact']} ({c['share_of_change']} of the {'increase' if facts.direction == 'increase' else 'drop'})"
            for c in p["root_causes"]
        ]
        action = _action(facts)
        # Drop root causes from the end, then the signals, until the text fits; the opening
        # facts and the action are what a reader needs most.
        for n in range(len(causes), -1, -1):
            for with_signals in (True, False):
                parts = [opening]
                if with_signals and signals:
                    parts.append(signals)
                if n:
                    label = (
                        "Root cause" if facts.root_causes[0]["share"] >= MOSTLY else "Contributors"
                    )
                    parts.append(f"{label}: " + "; ".join(causes[:n]) + ".")
                parts.append(action)
                text = " ".join(parts)
                if len(text) <= self.max_detail_chars:
                    return text
        return fmt.shorten(f"{opening} {action}", self.max_detail_chars)


def _action(facts: IncidentFacts) -> str:
    """One concrete next step, aimed at the top root cause when there is one."""
    when = fmt.timestamp(facts.start, facts.step_seconds)
    if facts.root_causes and facts.root_causes[0]["share"] >= WORTH_A_LOOK:
        top = facts.root_causes[0]
        where = f"{_DIMENSION_LABELS.get(top['dimension'], top['dimension'])} {top['value']}"
        if facts.direction == "increase":
            return (
                f"Next step: check what changed in {where} around {when} (new or scaled resources, "
                "a runaway job, a pricing change) and stop or right-size it if it was not planned."
            )
        return (
            f"Next step: confirm the drop in {where} was intended (a shutdown, migration or "
            "discount); if not, look for failed workloads or missing billing data."
        )
    if facts.direction == "increase":
        return (
            f"Next step: review deployments, scaling events and new resources around {when}; "
            "if the increase was planned, no action is needed."
        )
    return (
        "Next step: confirm the drop was intended; if not, look for stopped workloads or "
        "missing billing data."
    )
