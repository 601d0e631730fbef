"""The per-customer regular series: what training, batch scoring and the daily run start from.

There is no separate windows asset: each model derives its own input (residual or scaled
windows, ``windows.representation``) from the series inside ``core.detector``, so a stored copy
of windows would be a value nothing reads.

Every customer-partitioned asset handles one key or many keys in one call
(``context.partition_keys``): a per-customer run passes one key, a batch run (single-run
backfill) passes them all, so a batch is one process doing vectorised work, not N runs.
"""

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from anomaly_pipelines.core.ids import customer_key
from anomaly_pipelines.core.series import regularize, series_to_frame
from anomaly_pipelines.defs.automation import CUSTOMER_DRIFT, series_condition
from anomaly_pipelines.defs.metadata import add_partition_metadata, markdown_table, md
from anomaly_pipelines.defs.partitions import customer_partitions
from anomaly_pipelines.defs.resources import PipelineSettings

SINGLE_RUN = dg.BackfillPolicy.single_run()


def rows_for_partitions(
    frame: pd.DataFrame, keys: list[str], context: AssetExecutionContext
) -> pd.DataFrame:
    """Rows of the run's customers; a key with no rows is logged, not fatal, so one customer
    that vanished from the source does not fail a batch of hundreds."""
    row_keys = frame["customer_id"].astype(str).map(customer_key)
    selected = frame[row_keys.isin(keys)]
    absent = sorted(set(keys) - set(row_keys[row_keys.isin(keys)]))
    if absent:
        context.log.warning(f"no usage rows for {len(absent)} partition(s): {absent[:10]}")
    return selected


@dg.asset(
    partitions_def=customer_partitions,
    backfill_policy=SINGLE_RUN,
    group_name="series",
    kinds={"pandas"},
    # Not read: a customer listed by model_drift gets its series rebuilt from the newest
    # validated_usage before it is retrained (defs.automation).
    deps=[CUSTOMER_DRIFT],
    automation_condition=series_condition(),
)
def customer_series(
    context: AssetExecutionContext,
    validated_usage: pd.DataFrame,
    pipeline_settings: PipelineSettings,
) -> dg.Output[pd.DataFrame]:
    """One evenly spaced cost series per customer: the models need a value at every step, and
    billing exports skip days. Gaps are filled by the configured policy and marked in
    ``is_filled`` so scores on invented values can be told apart."""
    config = pipeline_settings.config
    keys = list(context.partition_keys)
    usage = rows_for_partitions(validated_usage, keys, context)
    series = regularize(usage, config.preprocess)
    frame = series_to_frame(series)
    summary = pd.DataFrame(
        [
            {
                "customer_id": s.customer_id,
                "steps": len(s),
                "filled": int(s.filled.sum()),
                "frequency": str(s.frequency),
                "start": s.timestamps[0],
                "end": s.timestamps[-1],
                "enough_history": len(s) >= config.preprocess.min_history,
            }
            for s in series
        ]
    )
    add_partition_metadata(
        context,
        {
            s.key: {
                "customer_id": s.customer_id,
                "customer_steps": len(s),
                "customer_filled_steps": int(s.filled.sum()),
                "first_timestamp": str(s.timestamps[0]),
                "last_timestamp": str(s.timestamps[-1]),
            }
            for s in series
        },
    )
    return dg.Output(
        frame,
        metadata={
            "row_count": len(frame),
            "customers": len(series),
            "filled_steps": int(frame["is_filled"].sum()) if len(frame) else 0,
            "series": md(markdown_table(summary)),
        },
    )
