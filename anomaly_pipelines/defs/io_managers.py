"""Asset storage on the local disk: Parquet for tables, pickle for everything else.

A table that Parquet cannot type (a column of mixed Python objects) is an error naming the
asset, never silently pickled: a pickled table would load back with other types than a Parquet
one, and only in some runs. A table whose asset declares a pandera model (definition metadata
``pandera_model``, a name in ``core.score_schema.TABLE_MODELS``) is validated and coerced to
it when stored and when loaded, so a frame that breaks the contract fails the step that made it.

Storage is one file per asset and partition (``<base_dir>/<asset>/<partition>.parquet``), even
when a single run computes many customer partitions at once: a batch run then leaves exactly
what per-customer runs would have left, so the two kinds of run can be mixed freely, and parallel
per-customer runs never write the same file.

A value produced for several partitions at once is split by partition: a DataFrame by
``customer_key(customer_id)`` of its rows, a dict by its keys (which must be partition keys).
Loading several partitions concatenates (DataFrames) or merges (dicts) what is there and skips
partitions that were never materialized, with a warning: one customer whose run failed must not
block the portfolio export.
"""

import pickle
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from anomaly_pipelines.core.files import atomic_write
from anomaly_pipelines.core.ids import customer_key

PARQUET = ".parquet"
PICKLE = ".pkl"
# Definition metadata naming the pandera model of a stored table (``core.score_schema``).
MODEL_METADATA_KEY = "pandera_model"


class PartitionedStorageIOManager(dg.ConfigurableIOManager):
    """Stores each asset partition as its own file under ``base_dir``."""

    base_dir: str = Field(
        default="data/outputs/storage",
        description="Directory for stored asset values (relative to the working directory).",
    )

    # -- paths ---------------------------------------------------------------------------------

    def root(self) -> Path:
        return Path(self.base_dir)

    def _stem(self, asset_key: dg.AssetKey, partition: str | None) -> Path:
        base = self.root().joinpath(*asset_key.path)
        return base / partition if partition is not None else base

    def _existing(self, asset_key: dg.AssetKey, partition: str | None) -> Path | None:
        stem = self._stem(asset_key, partition)
        for suffix in (PARQUET, PICKLE):
            path = stem.with_name(stem.name + suffix)
            if path.is_file():
                return path
        return None

    # -- output --------------------------------------------------------------------------------

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        asset_key = context.asset_key
        obj = _conform(obj, context.definition_metadata, asset_key)
        if MODEL_METADATA_KEY in (context.definition_metadata or {}):
            context.add_output_metadata({"dagster/column_schema": _column_schema(obj)})
        if not context.has_asset_partitions:
            path = self._write(asset_key, None, obj)
            context.add_output_metadata({"storage_path": dg.MetadataValue.path(str(path))})
            return
        keys = list(context.asset_partition_keys)
        parts = {keys[0]: obj} if len(keys) == 1 else _split(obj, keys, asset_key)
        for key in keys:
            self._write(asset_key, key, parts.get(key, _empty_like(obj)))
        context.add_output_metadata(
            {
                "storage_dir": dg.MetadataValue.path(str(self._stem(asset_key, keys[0]).parent)),
                "stored_partitions": len(keys),
            }
        )

    def store(self, asset_key: dg.AssetKey, partition: str, obj: Any) -> Path:
        """Store one partition's value outside an asset's own output: ``cohort_batch_job`` writes
        each customer's scores where the ``anomaly_scores`` asset would, so the report and the
        UI see a cohort run's customers like any other."""
        return self._write(asset_key, partition, obj)

    def stored(self, asset_key: dg.AssetKey) -> Any:
        """The stored value of an unpartitioned asset, for an op that reads it outside the asset
        graph (``cohort_batch_job`` reads ``validated_usage``)."""
        path = self._existing(asset_key, None)
        if path is None:
            raise FileNotFoundError(
                f"asset {asset_key.to_user_string()!r} has no stored value under "
                f"{self._stem(asset_key, None).parent}; materialize it first"
            )
        return _read(path)

    def _write(self, asset_key: dg.AssetKey, partition: str | None, obj: Any) -> Path:
        stem = self._stem(asset_key, partition)
        stem.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(obj, pd.DataFrame):
            target = stem.with_name(stem.name + PARQUET)
            try:
                atomic_write(target, lambda p: obj.to_parquet(p, index=False))
            except (TypeError, ValueError, NotImplementedError) as exc:  # Arrow's errors
                raise TypeError(
                    f"asset {asset_key.to_user_string()!r}: cannot store this table as Parquet "
                    f"({exc}); give each column one type (e.g. text or numbers, not both)"
                ) from exc
        else:
            target = stem.with_name(stem.name + PICKLE)
            atomic_write(target, lambda p: p.write_bytes(pickle.dumps(obj)))
        # A stale file in the other format would shadow or confuse later loads.
        for suffix in (PARQUET, PICKLE):
            other = stem.with_name(stem.name + suffix)
            if other != target and other.exists():
                other.unlink()
        return target

    # -- input ---------------------------------------------------------------------------------

    def load_input(self, context: dg.InputContext) -> Any:
        asset_key = context.asset_key
        if not context.has_asset_partitions:
            path = self._existing(asset_key, None)
            if path is None:
                raise FileNotFoundError(
                    f"asset {asset_key.to_user_string()!r} has no stored value under "
                    f"{self._stem(asset_key, None).parent}; materialize it first"
                )
            return _conform(_read(path), _upstream_metadata(context), asset_key)
        keys = list(context.asset_partition_keys)
        found: dict[str, Any] = {}
        missing: list[str] = []
        for key in keys:
            path = self._existing(asset_key, key)
            if path is None:
                missing.append(key)
            else:
                found[key] = _read(path)
        if len(keys) == 1:
            if missing:
                raise FileNotFoundError(
                    f"asset {asset_key.to_user_string()!r} partition {keys[0]!r} has no stored "
                    f"value under {self._stem(asset_key, keys[0]).parent}; materialize it first"
                )
            return _conform(found[keys[0]], _upstream_metadata(context), asset_key)
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            context.log.warning(
                f"{asset_key.to_user_string()}: skipping {len(missing)} of {len(keys)} partitions "
                f"that were never materialized: {shown}"
            )
        combined = _combine(list(found.values()), context)
        return _conform(combined, _upstream_metadata(context), asset_key)


def _upstream_metadata(context: dg.InputContext) -> Any:
    upstream = context.upstream_output
    return upstream.definition_metadata if upstream is not None else {}


def _conform(obj: Any, metadata: Any, asset_key: dg.AssetKey) -> Any:
    """A table validated against its asset's pandera model, if it declares one."""
    name = (metadata or {}).get(MODEL_METADATA_KEY)
    if name is None or not isinstance(obj, pd.DataFrame):
        return obj
    if obj.columns.empty:  # no partition was ever stored: the reader says what to do about it
        return obj
    from anomaly_pipelines.core.score_schema import TABLE_MODELS, conform

    return conform(obj, TABLE_MODELS[str(name)], f"asset {asset_key.to_user_string()!r}")


def _column_schema(frame: pd.DataFrame) -> dg.TableSchema:
    """The validated table's columns and types, for the asset page in the UI."""
    return dg.TableSchema(
        columns=[dg.TableColumn(str(name), str(dtype)) for name, dtype in frame.dtypes.items()]
    )


def _read(path: Path) -> Any:
    if path.suffix == PARQUET:
        return pd.read_parquet(path)
    with path.open("rb") as handle:
        return pickle.load(handle)


def _split(obj: Any, keys: list[str], asset_key: dg.AssetKey) -> dict[str, Any]:
    if isinstance(obj, pd.DataFrame):
        if "customer_id" not in obj.columns:
            raise ValueError(
                f"asset {asset_key.to_user_string()!r}: a DataFrame for {len(keys)} partitions must "
                "have a customer_id column to be split per partition"
            )
        row_keys = obj["customer_id"].astype(str).map(customer_key)
        return {key: part.reset_index(drop=True) for key, part in obj.groupby(row_keys, sort=False)}
    if isinstance(obj, dict):
        unknown = sorted(set(obj) - set(keys))
        if unknown:
            raise ValueError(
                f"asset {asset_key.to_user_string()!r}: dict keys {unknown[:5]} are not among the "
                "run's partition keys; a multi-partition value must be keyed by partition"
            )
        return {key: {key: value} for key, value in obj.items()}
    raise TypeError(
        f"asset {asset_key.to_user_string()!r}: cannot split a {type(obj).__name__} across "
        f"{len(keys)} partitions; return a DataFrame with customer_id or a dict keyed by partition"
    )


def _empty_like(obj: Any) -> Any:
    if isinstance(obj, pd.DataFrame):
        return obj.iloc[0:0]
    if isinstance(obj, dict):
        return {}
    raise TypeError(f"no empty value for {type(obj).__name__}")


def _combine(values: list[Any], context: dg.InputContext) -> Any:
    if values and all(isinstance(v, pd.DataFrame) for v in values):
        non_empty = [v for v in values if not v.empty]
        return pd.concat(non_empty or values[:1], ignore_index=True)
    if all(isinstance(v, dict) for v in values):
        if not values and _expects_frame(context):
            return pd.DataFrame()
        merged: dict[Any, Any] = {}
        for value in values:
            merged.update(value)
        return merged
    raise TypeError(
        f"asset {context.asset_key.to_user_string()!r}: cannot combine stored partitions of types "
        f"{sorted({type(v).__name__ for v in values})}"
    )


def _expects_frame(context: dg.InputContext) -> bool:
    typing_type = getattr(context.dagster_type, "typing_type", None)
    return typing_type is pd.DataFrame
