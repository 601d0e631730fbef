"""Declarative automation: what Dagster materializes by itself, and the sensors that evaluate it.

Two things happen without anyone launching a run:

- **New customers are trained.** A customer partition whose series was never built is requested
  once ``validated_usage`` has been materialized after the partition was registered, i.e. once the
  customer's rows were ingested. A customer first seen in a daily file (registered by
  ``daily_usage``) therefore waits for the next ``ingest_job`` (``ingest_schedule``, each
  morning) instead of being "trained" on no rows, which would mark it trained for good.
- **Drifted or stale customers are retrained.** ``model_drift`` records a materialization of the
  customer-partitioned ``customer_drift`` for each customer it finds drifted or stale; the
  customer's series and models depend on that partition, so exactly those customers are
  requested, once per measurement that lists them. Their series is rebuilt from the rows of
  the morning's ingest, which ``ingest_schedule`` runs before the daily scoring. The new version then faces the
  champion/challenger gate of the training.

Either way the request covers what ``customer_job`` runs for the customer: its series (rebuilt
from the newest ``validated_usage``), its three models, and its scores, explanations and plots,
which follow the models in the same run. Several customers at once become one backfill, which
the single-run backfill policy turns into one stacked training.

``model_drift`` itself is measured after each daily scoring (a newly materialized day of
``daily_scores``). A retraining does not trigger a new measurement, and a measurement judges only
the days scored after the customer's series ends (``defs.assets.drift.recent_history``), so a
retrained customer, promoted or not, is listed again only once the days after its retraining
drift too: not in a loop, and not after every daily run for the days it was just trained on.

Both sensors are running by default (Dagster's own ``default_automation_condition_sensor`` is
stopped by default, and is not created since every automated asset has a sensor here).
"""

from __future__ import annotations

import dagster as dg

from anomaly_pipelines.defs.jobs import CUSTOMER_ASSETS, OPERATIONS_ASSETS, TRAINS

CUSTOMER_DRIFT = "customer_drift"
REASON_TAG = "anomaly_pipelines/reason"
# Training takes minutes; looking every five minutes for new or drifted customers and for new
# daily scores keeps the daemon's load low on a small machine.
AUTOMATION_INTERVAL_SECONDS = 300

AC = dg.AutomationCondition


def _listed_by_model_drift() -> dg.AutomationCondition:
    """The newest drift measurement listed the customer (a new ``customer_drift`` partition
    materialization), and nothing requested or rebuilt it since."""
    return (
        AC.any_deps_match(AC.newly_updated())
        .allow(dg.AssetSelection.assets(CUSTOMER_DRIFT))
        .since_last_handled()
        .with_label("listed drifted or stale by model_drift")
    )


def series_condition() -> dg.AutomationCondition:
    """``customer_series``: built for a new customer once its rows are ingested, rebuilt for a
    drifted one so its retraining sees the recent days."""
    rows_ingested = (
        (
            AC.missing()
            & AC.any_deps_match(AC.newly_updated()).allow(
                dg.AssetSelection.assets("validated_usage")
            )
        )
        .since_last_handled()
        .with_label("new customer, its rows ingested")
    )
    return (rows_ingested | _listed_by_model_drift()) & ~AC.in_progress()


def training_condition() -> dg.AutomationCondition:
    """The three model assets: trained for a customer never trained once its series is (being)
    built, retrained for a customer the newest drift measurement listed."""
    never_trained = (
        (
            AC.missing()
            & AC.any_deps_match(AC.newly_updated() | AC.will_be_requested()).allow(
                dg.AssetSelection.assets("customer_series")
            )
        )
        .since_last_handled()
        .with_label("never trained, its series built")
    )
    return (never_trained | _listed_by_model_drift()) & ~AC.in_progress()


def follow_models_condition() -> dg.AutomationCondition:
    """Scores, explanations and plots: rebuilt in the same run whenever automation rebuilds what
    they read (the customer's series or models), so the new champion's scores are stored."""
    return AC.any_deps_match(AC.will_be_requested()).with_label(
        "rebuilt with its customer's models"
    )


def drift_condition() -> dg.AutomationCondition:
    """``model_drift``: measured after a day was scored, once no score is being written.

    Not ``eager()``: that waits until no dependency partition is missing, and most days of
    ``daily_scores`` (every day since ``orchestration.daily_start_date``) and any customer
    never scored are. Batch scores are left out of the trigger so a retraining does not start a
    new measurement (and, for a customer whose champion is kept, a new retraining)."""
    return (
        AC.any_deps_match(AC.newly_updated())
        .allow(dg.AssetSelection.assets("daily_scores"))
        .since_last_handled()
        .with_label("a day was scored")
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    )


customer_automation_sensor = dg.AutomationConditionSensorDefinition(
    "customer_automation_sensor",
    target=dg.AssetSelection.assets(*CUSTOMER_ASSETS),
    run_tags={**TRAINS, REASON_TAG: "new or drifted customer"},
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=AUTOMATION_INTERVAL_SECONDS,
    description=(
        "Trains new customers once their rows are ingested and retrains the customers the newest "
        "model_drift found drifted or stale (series, models, scores, explanations, plots)."
    ),
)

drift_automation_sensor = dg.AutomationConditionSensorDefinition(
    "drift_automation_sensor",
    target=dg.AssetSelection.assets(*OPERATIONS_ASSETS),
    run_tags={REASON_TAG: "a day was scored"},
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=AUTOMATION_INTERVAL_SECONDS,
    description="Measures every customer's drift after each daily scoring.",
)
