"""The storage IO manager with real Dagster runs: values for many partitions are split per
partition, loads across partitions combine what exists and warn about what does not."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster import AssetExecutionContext

from anomaly_pipelines.core.ids import customer_key
from anomaly_pipelines.defs.demo import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG
from anomaly_pipelines.defs.io_managers import PartitionedStorageIOManager

IDS = ["Acme/EU", "beta", "Gamma Ltd"]  # one needs a hashed key, one is plain
KEYS = [customer_key(c) for c in IDS]
PARTS = dg.StaticPartitionsDefinition(KEYS)
SINGLE_RUN = dg.BackfillPolicy.single_run()


@dg.asset(partitions_def=PARTS, backfill_policy=SINGLE_RUN)
def frames(context: AssetExecutionContext) -> pd.DataFrame:
    ids = [c for c in IDS if customer_key(c) in context.partition_keys]
    return pd.DataFrame(
        {
            "customer_id": [c for c in ids for _ in range(3)],
            "timestamp": pd.Timestamp("2024-01-01", tz="UTC")
            + pd.to_timedelta([i % 3 for i in range(3 * len(ids))], "D"),
            "cost": [float(i) for i in range(3 * len(ids))],
        }
    )


@dg.asset(partitions_def=PARTS, backfill_policy=SINGLE_RUN)
def refs(context: AssetExecutionContext, frames: pd.DataFrame) -> dict[str, dict[str, int]]:
    return {
        key: {"rows": int((frames["customer_id"].map(customer_key) == key).sum())}
        for key in context.partition_keys
    }


@dg.asset
def combined(frames: pd.DataFrame, refs: dict[str, dict[str, int]]) -> pd.DataFrame:
    assert sorted(refs) == sorted(frames["customer_id"].map(customer_key).unique())
    return frames


@dg.asset(partitions_def=PARTS, backfill_policy=SINGLE_RUN)
def bad_keys(context: AssetExecutionContext) -> dict[str, int]:
    return {"not-a-partition": 1, **{k: 2 for k in context.partition_keys}}


@dg.asset(partitions_def=PARTS, backfill_policy=SINGLE_RUN)
def bad_type(context: AssetExecutionContext) -> list[int]:
    return [1, 2, 3]


def _range(first: str, last: str) -> dict[str, str]:
    return {PARTITION_RANGE_START_TAG: first, PARTITION_RANGE_END_TAG: last}


def _io(tmp_path: Path) -> dict[str, PartitionedStorageIOManager]:
    return {"io_manager": PartitionedStorageIOManager(base_dir=str(tmp_path / "storage"))}


def test_multi_partition_values_are_stored_per_partition(tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [frames, refs],
            instance=instance,
            resources=_io(tmp_path),
            tags=_range(KEYS[0], KEYS[-1]),
        )
        assert result.success
    for key, cid in zip(KEYS, IDS, strict=True):
        stored = pd.read_parquet(tmp_path / "storage" / "frames" / f"{key}.parquet")
        assert stored["customer_id"].unique().tolist() == [cid]
        assert isinstance(stored["timestamp"].dtype, pd.DatetimeTZDtype)
        assert pd.read_pickle(tmp_path / "storage" / "refs" / f"{key}.pkl") == {key: {"rows": 3}}


def test_loading_all_partitions_skips_missing_ones_with_a_warning(tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        resources = _io(tmp_path)
        # Only two of the three partitions exist, written by two kinds of run.
        dg.materialize(
            [frames, refs], instance=instance, resources=resources, partition_key=KEYS[0]
        )
        dg.materialize(
            [frames, refs], instance=instance, resources=resources, tags=_range(KEYS[1], KEYS[1])
        )
        result = dg.materialize(
            [frames, refs, combined], selection=[combined], instance=instance, resources=resources
        )
        assert result.success
        out = result.output_for_node("combined")
        assert sorted(out["customer_id"].unique()) == sorted(IDS[:2])
        assert len(out) == 6
        warnings = [
            e.user_message
            for e in instance.all_logs(result.run_id)
            if e.level == 30 and "never materialized" in e.user_message
        ]
        assert any("skipping 1 of 3 partitions" in w and KEYS[2] in w for w in warnings)


def test_a_missing_single_partition_is_an_error_naming_it(tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [frames, refs],
            selection=[refs],
            instance=instance,
            resources=_io(tmp_path),
            partition_key=KEYS[1],
            raise_on_error=False,
        )
        assert not result.success
        failure = next(
            e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE
        )
        message = str(failure.event_specific_data.error)
        assert f"partition {KEYS[1]!r}" in message and "materialize it first" in message


@pytest.mark.parametrize(
    ("asset", "expected"),
    [(bad_keys, "not among the run's partition keys"), (bad_type, "cannot split a list")],
    ids=["dict-with-foreign-key", "unsplittable-type"],
)
def test_values_that_cannot_be_split_fail_clearly(
    tmp_path: Path, asset: dg.AssetsDefinition, expected: str
) -> None:
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [asset],
            instance=instance,
            resources=_io(tmp_path),
            tags=_range(KEYS[0], KEYS[-1]),
            raise_on_error=False,
        )
        assert not result.success
        failure = next(
            e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE
        )
        assert expected in str(failure.event_specific_data.error)


@dg.asset
def mixed_objects() -> pd.DataFrame:
    return pd.DataFrame({"customer_id": ["a", "b"], "value": [1.5, {"not": "a number"}]})


def _failure(result: dg.ExecuteInProcessResult) -> str:
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    return str(failure.event_specific_data.error)


def test_a_table_parquet_cannot_type_fails_and_is_not_pickled(tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [mixed_objects], instance=instance, resources=_io(tmp_path), raise_on_error=False
        )
    assert not result.success
    message = _failure(result)
    assert "'mixed_objects'" in message and "cannot store this table as Parquet" in message
    assert not list((tmp_path / "storage").rglob("mixed_objects*"))  # neither .parquet nor .pkl


def _scores(customer_id: str, days: int = 3) -> pd.DataFrame:
    from anomaly_pipelines.core.score_schema import SCORE_COLUMNS

    frame = pd.DataFrame(
        {
            "customer_id": customer_id,
            "timestamp": pd.date_range("2024-01-01", periods=days, freq="D", tz="UTC"),
            "cost": 10.0,
            "expected_cost": 10.0,
            "hybrid_score": 0.1,
            "is_anomaly": False,
            "is_repeat": False,
            "residual_score": 0.1,
            "lstm_error": 0.01,
            "lstm_threshold": 0.05,
            "lstm_flag": 0,  # an int flag: the schema coerces it to bool
            "isolation_forest_score": 0.2,
            "local_outlier_factor_score": 0.3,
            "decrease_rate": 0.0,
            "decrease_flag": False,
            "reasons": "",
            "is_filled": False,
            "split": "test",
            "status": "scored",
        }
    )
    return frame[SCORE_COLUMNS]


@dg.asset(metadata={"pandera_model": "AnomalyScores"})
def good_scores() -> pd.DataFrame:
    return _scores("acme")


@dg.asset(metadata={"pandera_model": "AnomalyScores"})
def scores_without_status() -> pd.DataFrame:
    return _scores("acme").drop(columns=["status"])


@dg.asset
def reads_scores(good_scores: pd.DataFrame) -> int:
    assert good_scores["lstm_flag"].dtype == bool
    return len(good_scores)


def test_a_scores_table_is_validated_against_its_pandera_model(tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        good = dg.materialize(
            [good_scores, reads_scores], instance=instance, resources=_io(tmp_path)
        )
        bad = dg.materialize(
            [scores_without_status], instance=instance, resources=_io(tmp_path),
            raise_on_error=False,
        )
    assert good.success and good.output_for_node("reads_scores") == 3
    stored = pd.read_parquet(tmp_path / "storage" / "good_scores.parquet")
    assert stored["lstm_flag"].dtype == bool  # stored as the schema's type, not as produced
    materialization = good.asset_materializations_for_node("good_scores")[0]
    columns = materialization.metadata["dagster/column_schema"].value.columns
    assert [c.name for c in columns][:3] == ["customer_id", "timestamp", "cost"]
    assert not bad.success
    message = _failure(bad)
    assert "AnomalyScores" in message and "status" in message
    assert not (tmp_path / "storage" / "scores_without_status.parquet").exists()
