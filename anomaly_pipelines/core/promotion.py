"""Champion and challenger: a retrained model takes the ``champion`` alias only when it is not
worse than the current champion on the newest days; ``rollback`` moves the alias back.

The registry registers every new version and points the alias at it (``ModelRegistry``); this
module is the gate applied right after: it scores the same recent days with both models, puts
the alias back on the old champion when the challenger is worse, and records the decision on
the new version in MLflow (tags ``challenger_decision``, ``challenger_reason``, the two costs and
the version it was compared with; alias ``challenger`` on a version that was not promoted).

The cost of a model on the holdout days is what a person pays for it: each flagged day that
feedback did not confirm (a false alarm as far as anyone knows) counts 1, each day of an
incident marked ``accurate`` that it did not flag counts 2.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from anomaly_pipelines.core.registry import ModelRegistry

log = logging.getLogger(__name__)

CHALLENGER_ALIAS = "challenger"


@dataclass(frozen=True)
class Decision:
    customer_id: str
    challenger_version: str
    champion_version: str | None
    challenger_cost: float
    champion_cost: float
    holdout_days: int
    promoted: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def holdout_cost(
    scores: pd.DataFrame,
    holdout_days: int,
    confirmed: Mapping[str, list[pd.Timestamp]] | None = None,
) -> dict[str, tuple[float, int]]:
    """Per customer: (cost, days compared) on its newest ``holdout_days`` scored steps."""
    confirmed = confirmed or {}
    out: dict[str, tuple[float, int]] = {}
    if scores.empty:
        return out
    scored = scores[scores["status"] == "scored"] if "status" in scores.columns else scores
    for cid, group in scored.groupby("customer_id", sort=True):
        tail = group.sort_values("timestamp").tail(holdout_days)
        days = pd.DatetimeIndex(confirmed.get(str(cid), [])).normalize()
        real = pd.DatetimeIndex(tail["timestamp"]).normalize().isin(days)
        flagged = tail["is_anomaly"].astype(bool).to_numpy()
        cost = float((flagged & ~real).sum() + 2 * (real & ~flagged).sum())
        out[str(cid)] = (cost, len(tail))
    return out


def decide(
    challenger_scores: pd.DataFrame,
    champion_scores: pd.DataFrame,
    challenger_versions: Mapping[str, str],
    champion_versions: Mapping[str, str],
    *,
    holdout_days: int,
    tolerance: float = 0.0,
    confirmed: Mapping[str, list[pd.Timestamp]] | None = None,
) -> list[Decision]:
    """One decision per customer with a new version. A customer without a champion (new, or
    its champion was deleted or unusable) promotes the challenger: there is nothing to keep."""
    new = holdout_cost(challenger_scores, holdout_days, confirmed)
    old = holdout_cost(champion_scores, holdout_days, confirmed)
    decisions = []
    for cid, version in sorted(challenger_versions.items()):
        champion = champion_versions.get(cid)
        challenger_cost, days = new.get(cid, (float("nan"), 0))
        if champion is None or cid not in old:
            reason = "no usable champion to compare with"
            decisions.append(
                Decision(cid, version, champion, challenger_cost, float("nan"), days, True, reason)
            )
            continue
        champion_cost = old[cid][0]
        if cid not in new:
            reason = "the challenger scored none of the holdout days"
            decisions.append(
                Decision(cid, version, champion, float("nan"), champion_cost, 0, False, reason)
            )
            continue
        promoted = challenger_cost <= champion_cost + tolerance
        verb = "not worse than" if promoted else "worse than"
        reason = (
            f"challenger v{version} costs {challenger_cost:g} on the last {days} day(s), "
            f"{verb} champion v{champion} at {champion_cost:g}"
            + (f" (tolerance {tolerance:g})" if tolerance else "")
        )
        decisions.append(
            Decision(cid, version, champion, challenger_cost, champion_cost, days, promoted, reason)
        )
    return decisions


def apply_decisions(registry: ModelRegistry, decisions: list[Decision]) -> None:
    """Record each decision on the challenger's version in MLflow and, where the challenger
    lost, put the alias back on the champion and give the challenger the ``challenger`` alias."""
    client = registry.client()
    for d in decisions:
        name = registry.registered_name(d.customer_id)
        tags = {
            "challenger_decision": "promoted" if d.promoted else "kept_champion",
            "challenger_reason": d.reason,
            "challenger_cost": f"{d.challenger_cost:g}",
            "champion_cost": f"{d.champion_cost:g}",
            "holdout_days": str(d.holdout_days),
            "compared_with_version": d.champion_version or "",
        }
        if d.promoted and d.champion_version and d.champion_version != d.challenger_version:
            tags["previous_champion"] = d.champion_version
        for key, value in tags.items():
            client.set_model_version_tag(name, d.challenger_version, key, value)
        if not d.promoted and d.champion_version is not None:
            registry.set_alias(d.customer_id, d.champion_version)
            client.set_registered_model_alias(name, CHALLENGER_ALIAS, d.challenger_version)
            log.info("%s: champion v%s kept: %s", d.customer_id, d.champion_version, d.reason)
        else:
            log.info("%s: v%s promoted: %s", d.customer_id, d.challenger_version, d.reason)


def rollback(
    registry: ModelRegistry, customer_id: str, to_version: str | None = None
) -> tuple[str | None, str]:
    """Point the customer's alias at ``to_version``, by default the champion before the current
    one (the ``previous_champion`` tag a promotion left, else the newest older version that
    still exists). Works when the current champion was deleted: the newest remaining version
    is taken. Returns (old champion or None, new champion)."""
    client = registry.client()
    name = registry.registered_name(customer_id)
    current = registry.champion_version(customer_id)
    existing = [int(v) for v in registry.versions(customer_id)]
    if not existing:
        raise ValueError(f"customer {customer_id!r} has no registered model versions")
    target = to_version
    if target is None and current is not None:
        previous = (client.get_model_version(name, current).tags or {}).get("previous_champion")
        if previous and int(previous) in existing:
            target = previous
        else:
            older = [v for v in existing if v < int(current)]
            if not older:
                raise ValueError(
                    f"customer {customer_id!r}: champion v{current} is the oldest version; "
                    "nothing to roll back to"
                )
            target = str(max(older))
    elif target is None:
        target = str(max(existing))
    if int(target) not in existing:
        raise ValueError(
            f"customer {customer_id!r} has no version {target} (versions: "
            f"{', '.join(map(str, existing))})"
        )
    registry.set_alias(customer_id, str(target))
    client.set_model_version_tag(name, str(target), "rolled_back_from", current or "(none)")
    return current, str(target)


def champion_registered_at(
    registry: ModelRegistry, customer_ids: list[str]
) -> dict[str, pd.Timestamp]:
    """When each customer's champion version was registered (its model age for drift)."""
    versions = registry.champion_model_versions(customer_ids)
    return {
        cid: pd.Timestamp(int(mv.creation_timestamp), unit="ms", tz="UTC")
        for cid, mv in versions.items()
        if mv.creation_timestamp is not None
    }
