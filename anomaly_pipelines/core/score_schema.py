"""pandera models of the scores table: the contract between the detector and everything after it.

The detector writes it, Dagster stores it (the IO manager validates on the way in and out), the
explainers read it and the asset checks verify the export against it. One model instead of a
column list repeated in each of those places: a change of column or type is made here once and
every reader fails loudly on a frame that does not match.

``IncidentInput`` is the part the explainers need, so a notebook user can explain a frame of
their own that carries just those columns; ``AnomalyScores`` is the whole table as
``core.detector`` produces it (columns in this order); ``DailyScores`` adds the day of the daily
run that scored the row.
"""

from __future__ import annotations

import pandas as pd
import pandera.errors
import pandera.pandas as pa
from pandera.typing import Series

from anomaly_pipelines.core.schemas import UtcTimestamp


class IncidentInput(pa.DataFrameModel):
    """What ``core.explain`` needs of a scored frame to merge flagged steps into incidents."""

    customer_id: Series[str] = pa.Field(nullable=False)
    timestamp: Series[UtcTimestamp] = pa.Field(nullable=False)
    cost: Series[float] = pa.Field(nullable=True)
    expected_cost: Series[float] = pa.Field(nullable=True)  # none before the first cycle
    hybrid_score: Series[float] = pa.Field(nullable=True)  # none where nothing was scored
    is_anomaly: Series[bool] = pa.Field(nullable=False)

    class Config:
        coerce = True
        strict = False  # a user's frame may carry more


class AnomalyScores(IncidentInput):
    """One row per customer and step, as ``core.detector.score_series`` returns it."""

    is_repeat: Series[bool] = pa.Field(nullable=False)
    residual_score: Series[float] = pa.Field(nullable=True)
    lstm_error: Series[float] = pa.Field(nullable=True)
    lstm_threshold: Series[float] = pa.Field(nullable=True)
    lstm_flag: Series[bool] = pa.Field(nullable=False)
    isolation_forest_score: Series[float] = pa.Field(nullable=True)
    local_outlier_factor_score: Series[float] = pa.Field(nullable=True)
    decrease_rate: Series[float] = pa.Field(nullable=True)
    decrease_flag: Series[bool] = pa.Field(nullable=False)
    reasons: Series[str] = pa.Field(nullable=False)
    is_filled: Series[bool] = pa.Field(nullable=False)
    split: Series[str] = pa.Field(nullable=False, isin=["train", "test", "none"])
    status: Series[str] = pa.Field(nullable=False)

    class Config:
        coerce = True
        strict = True
        ordered = True


class DailyScores(AnomalyScores):
    """The daily run's rows: the scores of each customer's newest step as of ``as_of``."""

    as_of: Series[str] = pa.Field(nullable=False)


SCORE_COLUMNS: list[str] = list(AnomalyScores.to_schema().columns)
INCIDENT_INPUT_COLUMNS: list[str] = list(IncidentInput.to_schema().columns)
# By name, for stored tables that declare their model in metadata (see defs.io_managers).
TABLE_MODELS: dict[str, type[pa.DataFrameModel]] = {
    model.__name__: model for model in (AnomalyScores, DailyScores)
}


def conform(frame: pd.DataFrame, model: type[pa.DataFrameModel], what: str) -> pd.DataFrame:
    """``frame`` validated (lazily: every failing column and check at once) and coerced to
    ``model``'s types; a frame that does not fit raises ``ValueError`` naming ``what`` and the
    first failures, instead of travelling on with the wrong columns or types."""
    try:
        return model.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        shown = cases[["column", "check", "failure_case"]].head(5).to_dict("records")
        raise ValueError(
            f"{what} does not match the {model.__name__} schema "
            f"({len(cases)} failure(s)); first: {shown}"
        ) from exc
