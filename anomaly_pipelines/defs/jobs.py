"""Jobs: ingest, one customer, every customer in one run, reports, and the daily scoring.

``customer_job`` and ``batch_job`` run the same customer-partitioned assets; what differs is the
partition selection. One key (``--partition``) is a per-customer run; a key range
(``--partition-range first...last``) is ONE run in ONE process, because every customer asset has
``BackfillPolicy.single_run()`` and sees all keys through ``context.partition_keys``.
"""

from __future__ import annotations

import dagster as dg

CUSTOMER_ASSETS = (
    "customer_series",
    "lstm_autoencoder",
    "isolation_forest",
    "local_outlier_factor",
    "anomaly_scores",
    "anomaly_explanations",
    "anomaly_plots",
)
INGEST_ASSETS = ("raw_usage", "validated_usage", "usage_quarantine", "usage_signals")
REPORT_ASSETS = ("scores_export", "anomaly_report")
DAILY_ASSETS = ("daily_usage", "daily_scores", "daily_alerts")
OPERATIONS_ASSETS = ("model_drift",)
# configs/dagster.yaml limits runs with this tag to one at a time: two trainings in parallel
# would only slow each other down on a small machine.
TRAINS = {"anomaly_pipelines/trains": "true"}

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(*INGEST_ASSETS),
    description="Read the configured source, validate it and register customer partitions.",
)

customer_job = dg.define_asset_job(
    "customer_job",
    selection=dg.AssetSelection.assets(*CUSTOMER_ASSETS),
    description="Train, score, explain and plot the customers of the run's partition(s).",
    tags=TRAINS,
)

batch_job = dg.define_asset_job(
    "batch_job",
    selection=dg.AssetSelection.assets(*CUSTOMER_ASSETS, *REPORT_ASSETS),
    description=(
        "Every customer of a partition range in one run (one stacked training), then the export "
        "and the report."
    ),
    tags=TRAINS,
)

report_job = dg.define_asset_job(
    "report_job",
    selection=dg.AssetSelection.assets(*REPORT_ASSETS),
    description="Rebuild the scores export and the report from every customer's stored scores.",
)

daily_scoring_job = dg.define_asset_job(
    "daily_scoring_job",
    selection=dg.AssetSelection.assets(*DAILY_ASSETS),
    description=(
        "Score the newest day of every customer with the champion models (no training), then "
        "send the alerts of its incidents."
    ),
)

drift_job = dg.define_asset_job(
    "drift_job",
    selection=dg.AssetSelection.assets(*OPERATIONS_ASSETS),
    description="Measure every customer's drift against its champion (also runs by automation).",
)
