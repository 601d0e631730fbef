"""Per-customer assets before training: the regular series and their windows.

Every customer-partitioned asset handles one key or many keys in one call
(``context.partition_keys``): a per-customer run passes one key, a batch run (single-run
backfill) passes them all, so a batch is one process doing vectorised work, not N runs.
"""

from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from dagster import AssetExecutionContext

from anomaly_pipelines.core.ids import customer_key
from anomaly_pipelines.core.series import frame_to_series, regularize, series_to_frame
from anomaly_pipelines.core.windows import Scaler, sliding_windows
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
)
def customer_series(
    context: AssetExecutionContext,
    validated_usage: pd.DataFrame,
    pipeline_settings: PipelineSettings,
) -> dg.Output[pd.DataFrame]:
    """One evenly spaced cost series per customer: the models need a value at every step, and
    billing exports skip days. Gaps are filled by the configured policy and marked in
    ``is_filled`` so scores on invented values can be told apart."""
    config = pipeline_settings.load()
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


@dg.asset(
    partitions_def=customer_partitions,
    backfill_policy=SINGLE_RUN,
    group_name="series",
    kinds={"numpy"},
)
def windowed_sequences(
    context: AssetExecutionContext,
    customer_series: pd.DataFrame,
    pipeline_settings: PipelineSettings,
) -> dg.Output[dict[str, dict[str, Any]]]:
    """Each customer's chronological train/test split and its sliding windows.

    The windows here are the series scaled with statistics of the training part only (no
    look-ahead), cut to the configured window length: what lets you see, per customer, how many
    training examples the models get. Training takes its series from this asset; the detector
    derives its exact model input (residual or scaled, ``windows.representation``) from the same
    split.
    """
    # Imported here: the detector pulls in scikit-learn, which loading definitions must not.
    from anomaly_pipelines.core.detector import training_layout

    config = pipeline_settings.load()
    out: dict[str, dict[str, Any]] = {}
    rows = []
    for series in frame_to_series(customer_series):
        # A customer with one or two days is kept (scored "insufficient history" downstream).
        n_train, window = training_layout(series, config)
        scaler = Scaler.fit(series.values[:n_train], config.windows.scaler)
        scaled = scaler.transform(series.values)
        train_windows = sliding_windows(scaled[:n_train], window)
        test_windows = sliding_windows(scaled[max(n_train - window + 1, 0) :], window)
        out[series.key] = {
            "series": series,
            "window": window,
            "train_size": n_train,
            "train_end": series.timestamps[n_train - 1],
            "train_windows": train_windows,
            "test_windows": test_windows,
        }
        rows.append(
            {
                "customer_id": series.customer_id,
                "window": window,
                "train_steps": n_train,
                "train_windows": len(train_windows),
                "test_windows": len(test_windows),
                "train_end": series.timestamps[n_train - 1],
            }
        )
    table = pd.DataFrame(rows)
    add_partition_metadata(
        context,
        {
            key: {
                "window": int(value["window"]),
                "customer_train_windows": len(value["train_windows"]),
                "customer_test_windows": len(value["test_windows"]),
            }
            for key, value in out.items()
        },
    )
    train_counts = table["train_windows"].to_numpy() if len(table) else np.zeros(0)
    return dg.Output(
        out,
        metadata={
            "customers": len(out),
            "train_windows_total": int(train_counts.sum()),
            "min_train_windows": int(train_counts.min()) if len(train_counts) else 0,
            "representation": config.windows.representation,
            "windows": md(markdown_table(table)),
        },
    )
