"""The two partition axes: customers (dynamic) and days (time), never crossed.

Customers are registered from the data by ``validated_usage`` (and the daily ingest), so a new
customer becomes a partition without a code change. Days partition what arrives daily: the staged
billing file and the daily scores. A date x customer grid would multiply the partitions the UI and
the daemon track for no gain, since training and batch scoring always need a customer's whole
history anyway.
"""

from __future__ import annotations

import warnings

import dagster as dg

from anomaly_pipelines.core.config import OrchestrationConfig

CUSTOMERS = "customers"

customer_partitions = dg.DynamicPartitionsDefinition(name=CUSTOMERS)


def daily_partitions(orchestration: OrchestrationConfig) -> dg.DailyPartitionsDefinition:
    """The days of the code location's configuration (``orchestration.daily_start_date`` and
    ``timezone``): built by ``build_definitions``, never at import, so a configuration passed to
    it decides them."""
    return dg.DailyPartitionsDefinition(
        start_date=orchestration.daily_start_date, timezone=orchestration.timezone
    )


def recent_days(days: int) -> dg.TimeWindowPartitionMapping:
    """The ``days`` daily partitions ending on a run's own day. Days before
    ``orchestration.daily_start_date`` do not exist and are simply left out (a beta parameter
    of Dagster, hence its warning is silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.TimeWindowPartitionMapping(
            start_offset=-(days - 1), allow_nonexistent_upstream_partitions=True
        )
