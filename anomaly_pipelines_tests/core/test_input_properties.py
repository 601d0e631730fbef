"""Property tests of the readers, validation and ``detect()``'s input checks (Hypothesis).

Invariants, for any input: no exception other than the documented one (``SourceError`` for a
file that cannot be used, ``ValueError`` for a frame ``detect()`` refuses), and every data line
of a file that loads is accounted for exactly once (usage, signal, duplicate or quarantine).
Few examples per property keep the suite fast; each run explores new ones. For a deeper
search: ``HYPOTHESIS_EXAMPLES=500 pytest anomaly_pipelines_tests/core/test_input_properties.py``
(passed with 500 each when written).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomaly_pipelines.core.api import coerce, observations
from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.sources import LoadedUsage, SourceError, load_usage

FAST = settings(
    max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "50")), deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
HEADER = ["Date", "TotalCost", "customer_id"]


def _load(content: bytes) -> LoadedUsage | None:
    """Load ``content`` as a notebook CSV (any failure rate allowed, so every bad line is
    quarantined rather than failing the file); None when the file is refused."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.csv"
        path.write_bytes(content)
        config = PipelineConfig.model_validate(
            {"source": {"kind": "notebook_csv", "path": str(path)}, "preprocess": {"max_failure_rate": 1.0}}
        )
        try:
            return load_usage(config.source, config.preprocess)
        except SourceError:
            return None


def _accounted_once(loaded: LoadedUsage) -> set[int]:
    fates = loaded.accounting()
    assert not fates.duplicated(["source_file", "source_line"]).any(), fates
    assert len(fates) == loaded.input_rows
    summary = loaded.summary()
    assert summary["input_rows"] == summary["valid_rows"] + summary["quarantined_rows"]
    return set(fates["source_line"].astype(int))


@FAST
@given(st.binary(max_size=600))
def test_random_bytes_load_or_fail_cleanly(content: bytes) -> None:
    loaded = _load(b"Date,TotalCost,customer_id\n" + content)
    if loaded is not None:
        _accounted_once(loaded)


# One record per physical line (multi-line quoted fields are the random-bytes test's business).
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12)
_DATES = st.one_of(
    st.dates(min_value=pd.Timestamp("1990-01-01").date(), max_value=pd.Timestamp("2025-12-31").date()).map(str),
    st.sampled_from(["", "NULL", "0001-01-01", "9999-12-31", "2024-02-30", "31/12/2024", "2024-13-01"]),
    _TEXT,
)
_COSTS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**12, 10**12).map(str),
    st.sampled_from(["", "1,5", "1e309", "-0", "$3", "True"]),
    _TEXT,
)
_IDS = st.one_of(
    st.sampled_from(["acme", "Acme", " acme ", "=1+1", "", "NULL", '"quoted"', "a,b;c|d\te"]),
    _TEXT,
)


@FAST
@given(
    rows=st.lists(st.tuples(_DATES, _COSTS, _IDS), min_size=1, max_size=15),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    newline=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
)
def test_any_csv_dialect_accounts_for_every_line(
    rows: list[tuple[str, str, str]], delimiter: str, quoting: int, newline: str, bom: bool
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, quoting=quoting, lineterminator=newline)
    writer.writerow(HEADER)
    writer.writerows(rows)
    text = buffer.getvalue()
    loaded = _load(("\ufeff" if bom else "").encode() + text.encode("utf-8", "surrogatepass"))
    if loaded is None:
        return
    lines = _accounted_once(loaded)
    # One record per physical line: data lines are 2..n+1, blank records excepted.
    written = {i + 2 for i, row in enumerate(rows) if delimiter.join(row).strip() or quoting != csv.QUOTE_MINIMAL}
    assert written <= lines <= set(range(2, len(rows) + 2))
    assert loaded.usage["cost"].map(np.isfinite).all()


_CELLS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.just(pd.NaT), st.datetimes().map(pd.Timestamp),
)


@FAST
@given(st.lists(st.tuples(_CELLS, _CELLS, _CELLS), min_size=1, max_size=12))
def test_detect_input_checks_accept_or_refuse_with_a_value_error(
    rows: list[tuple[object, object, object]],
) -> None:
    frame = pd.DataFrame(rows, columns=["customer_id", "timestamp", "cost"], dtype=object)
    try:
        typed = coerce(frame)
    except ValueError:
        return
    assert len(typed) == len(frame)
    assert typed["customer_id"].map(lambda v: isinstance(v, str)).all()
    assert typed["timestamp"].notna().all() and typed["cost"].dtype == float
    observed, left_out = observations(typed)  # NaN, infinite, negative: left out with a reason
    assert np.isfinite(observed["cost"].to_numpy()).all() and (observed["cost"] >= 0).all()
    assert left_out["reasons"].str.len().gt(0).all()
