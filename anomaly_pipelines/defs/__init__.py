"""The Dagster layer: assets, checks, jobs, schedules, sensors and resources that wire ``core``.

Nothing in ``core`` imports Dagster; everything here is thin: read settings, call ``core``, store
the result, describe it in metadata. ``anomaly_pipelines.definitions`` assembles the code location.
"""

import warnings

from dagster import BetaWarning

# Single-run backfills (``BackfillPolicy.single_run()``) are how a batch run processes every
# customer in one process; the API is marked beta, which is known and accepted here, so the
# warning would only add noise to every code-location load and run log.
warnings.filterwarnings("ignore", message=r"Parameter `backfill_policy`", category=BetaWarning)
