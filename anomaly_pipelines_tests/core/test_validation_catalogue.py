"""Catalogue of bad billing inputs: each gives a clear error or exact quarantine entries, and
every good row of the same file still arrives with its cost.

Each case writes real files to a temporary folder and loads them through ``load_usage``; the
expected quarantine is written down as (line, column, check) so a case fails if a bad row slips
through, if a good row is quarantined, or if a line is counted twice or not at all.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.sources import LoadedUsage, SourceError, load_usage

HEADER = "Date,TotalCost,customer_id"
GOOD = ["2024-01-01,10.5,acme", "2024-01-02,11.25,acme", "2024-01-01,3,Globex"]
FOCUS_HEADER = (
    "BilledCost,EffectiveCost,BillingCurrency,ChargeCategory,ChargeClass,ChargePeriodStart,"
    "ServiceName,RegionId,SubAccountId,Tags"
)
FOCUS_GOOD = [
    '1.5,1.2,USD,Usage,NULL,2024-09-01 03:00:00,Compute,us-east-1,111,"{""team"": ""a""}"',
    '2.5,2.0,USD,Usage,NULL,2024-09-01 15:00:00,Storage,us-east-1,111,"{""team"": ""a""}"',
    "4.0,3.0,USD,Usage,NULL,2024-09-02 03:00:00,Compute,eu-west-1,222,NULL",
]


@dataclass
class Case:
    """One bad input. ``good`` lists the data lines expected in usage (or signals)."""

    name: str
    write: Callable[[Path], None]
    error: str | None = None  # regex the SourceError message must match
    quarantine: set[tuple[int, str, str]] = field(default_factory=set)
    good: set[int] = field(default_factory=set)
    config: dict[str, Any] = field(default_factory=dict)
    kind: str = "notebook_csv"
    file_name: str = "input.csv"


def text_file(
    lines: list[str], header: str = HEADER, *, encoding: str = "utf-8"
) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_bytes(("\n".join([header, *lines]) + "\n").encode(encoding))

    return write


def raw_bytes(content: bytes) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_bytes(content)

    return write


def lines_of(*positions: int) -> set[int]:
    """Data rows are numbered from 1 under the header; the file line is one more."""
    return {p + 1 for p in positions}


def gzip_truncated(path: Path) -> None:
    body = ("\n".join([HEADER, *GOOD * 200]) + "\n").encode()
    packed = gzip.compress(body)
    path.write_bytes(packed[: len(packed) // 2])


def gzip_corrupt(path: Path) -> None:
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)


def parquet_file(frame: pd.DataFrame) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        frame.to_parquet(path, index=False)

    return write


def fake_parquet(path: Path) -> None:
    path.write_bytes(b"PAR1" + b"\x00garbage" * 10)


def daily_folder(files: dict[str, list[str]]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        folder = path.parent / "daily"
        folder.mkdir()
        for name, lines in files.items():
            text_file(lines)(folder / name)

    return write


CASES = [
    Case("empty_file", raw_bytes(b""), error=r"input\.csv: file is empty"),
    Case("only_blank_lines", raw_bytes(b"\n\n  \n"), error=r"input\.csv: file is empty"),
    Case("header_only", text_file([]), error=r"input\.csv: no data rows"),
    Case(
        "missing_cost_column",
        text_file(["2024-01-01,acme"], header="Date,customer_id"),
        error=r"input\.csv: required column 'TotalCost' \(source\.cost_column\) not found",
    ),
    Case(
        "renamed_cost_column",
        text_file(GOOD, header="Date,Cost,customer_id"),
        error=r"'TotalCost'.*Similar: \['Cost'\]",
    ),
    Case(
        "wrong_delimiter_configured",
        text_file([line.replace(",", ";") for line in GOOD], header=HEADER.replace(",", ";")),
        error=r"input\.csv.*With delimiter ';' the header fits",
        config={"source": {"delimiter": ","}},
    ),
    Case(
        "undetectable_delimiter",
        text_file([line.replace(",", " ") for line in GOOD], header=HEADER.replace(",", " ")),
        error=r"input\.csv: required column",
    ),
    Case(
        "duplicate_header_column",
        text_file(["2024-01-01,1,2,acme"], header="Date,TotalCost,TotalCost,customer_id"),
        error=r"input\.csv: column 'TotalCost' appears 2 times",
    ),
    Case(
        "non_utf8_customer_id",
        raw_bytes(("\n".join([HEADER, *GOOD]) + "\n").encode() + b"2024-01-03,4,M\xfcller\n"),
        quarantine={(5, "customer_id", "readable_text")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "control_character_in_id",
        text_file([*GOOD, "2024-01-03,4,ac\x07me"]),
        quarantine={(5, "customer_id", "readable_text")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "unparseable_date",
        text_file([*GOOD, "yesterday,4,acme"]),
        quarantine={(5, "Date", "timestamp_format")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "mixed_date_formats",
        text_file([*GOOD, "01/15/2024,4,acme"]),
        quarantine={(5, "Date", "timestamp_format")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "ambiguous_day_month_dates",
        text_file(["01/02/2024,1,acme", "03/04/2024,2,acme"]),
        error=r"input\.csv: column timestamp: dates such as '.*' read differently",
    ),
    Case(
        "impossible_calendar_date",
        text_file([*GOOD, "2024-02-30,4,acme"]),
        quarantine={(5, "Date", "timestamp_format")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "nonexistent_local_time_dst",
        text_file(
            [
                "2024-03-30 12:00:00,1,acme",
                "2024-03-31 02:30:00,2,acme",
                "2024-04-01 12:00:00,3,acme",
            ]
        ),
        quarantine={(3, "Date", "dst_nonexistent")},  # the skipped hour, named as such
        good=lines_of(1, 3),
        config={"source": {"timezone": "Europe/Berlin"}},
    ),
    Case(
        "missing_date",
        text_file([*GOOD, ",4,acme"]),
        quarantine={(5, "Date", "not_nullable")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "future_date",
        text_file([*GOOD, "2999-01-01,4,acme"]),
        quarantine={(5, "Date", "not_in_future")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "ancient_date",
        text_file([*GOOD, "1900-01-01,4,acme"]),
        quarantine={(5, "Date", "min_timestamp")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "nan_cost",
        text_file([*GOOD, "2024-01-03,NaN,acme"]),
        quarantine={(5, "TotalCost", "not_nullable")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "null_token_cost",
        text_file([*GOOD, "2024-01-03,NULL,acme"]),
        quarantine={(5, "TotalCost", "not_nullable")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "infinite_cost",
        text_file([*GOOD, "2024-01-03,-inf,acme"]),
        quarantine={
            (5, "TotalCost", "finite"),
            (5, "TotalCost", "max_abs_cost"),
            (5, "TotalCost", "non_negative"),
        },
        good=lines_of(1, 2, 3),
    ),
    Case(
        "negative_cost",
        text_file([*GOOD, "2024-01-03,-4.5,acme"]),
        quarantine={(5, "TotalCost", "non_negative")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "absurdly_large_cost",
        text_file([*GOOD, "2024-01-03,1e15,acme"]),
        quarantine={(5, "TotalCost", "max_abs_cost")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "cost_with_thousands_separator",
        text_file([*GOOD, '2024-01-03,"1,250.00",acme']),
        quarantine={(5, "TotalCost", "is_number")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "cost_is_text",
        text_file([*GOOD, "2024-01-03,twelve,acme"]),
        quarantine={(5, "TotalCost", "is_number")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "missing_customer_id",
        text_file([*GOOD, "2024-01-03,4,"]),
        quarantine={(5, "customer_id", "not_nullable")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "customer_id_too_long",
        text_file([*GOOD, "2024-01-03,4," + "x" * 600]),
        quarantine={(5, "customer_id", "max_customer_id_length")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "too_many_fields",
        text_file([*GOOD, "2024-01-03,4,acme,extra"]),
        quarantine={(5, "(row)", "field_count")},
        good=lines_of(1, 2, 3),
    ),
    Case(
        "too_few_fields",
        text_file(["2024-01-03,4", *GOOD]),
        quarantine={(2, "(row)", "field_count")},
        good=lines_of(2, 3, 4),
    ),
    Case(
        "unbalanced_quote_keeps_following_rows",
        text_file(['2024-01-03,"4,acme', *GOOD]),
        quarantine={(2, "(row)", "quote")},
        good=lines_of(2, 3, 4),
    ),
    Case(
        "two_stray_quotes_across_lines",
        text_file(['2024-01-03,4",acme', GOOD[0], '2024-01-04,5",acme', GOOD[1], GOOD[2]]),
        quarantine={(2, "(row)", "quote"), (4, "(row)", "quote")},
        good=lines_of(2, 4, 5),
    ),
    Case(
        "duplicate_rows_rejected",
        text_file([*GOOD, GOOD[0]]),
        quarantine={(2, "customer_id,Date", "duplicate"), (5, "customer_id,Date", "duplicate")},
        good=lines_of(2, 3),
        config={"preprocess": {"duplicates": "reject"}},
    ),
    Case(
        "same_day_written_two_ways_rejected",
        text_file([*GOOD, "2024-01-01T00:00:00Z,7,acme"]),
        quarantine={(2, "customer_id,Date", "duplicate"), (5, "customer_id,Date", "duplicate")},
        good=lines_of(2, 3),
        config={"preprocess": {"duplicates": "reject"}},
    ),
    Case(
        "truncated_gzip",
        gzip_truncated,
        error=r"input\.csv\.gz: compressed data is truncated or corrupt",
        file_name="input.csv.gz",
    ),
    Case(
        "corrupt_gzip",
        gzip_corrupt,
        error=r"input\.csv\.gz: compressed data is (truncated or )?corrupt",
        file_name="input.csv.gz",
    ),
    Case(
        "not_really_parquet",
        fake_parquet,
        error=r"input\.parquet: not a readable Parquet file",
        file_name="input.parquet",
    ),
    Case(
        "parquet_wrong_types",
        parquet_file(
            pd.DataFrame(
                {
                    "Date": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"], utc=True),
                    "TotalCost": [True, False, True],
                    "customer_id": ["a", "b", "c"],
                }
            )
        ),
        quarantine={
            (1, "TotalCost", "is_number"),
            (2, "TotalCost", "is_number"),
            (3, "TotalCost", "is_number"),
        },
        config={"preprocess": {"max_failure_rate": 1.0}},
        file_name="input.parquet",
    ),
    Case(
        "parquet_numeric_ids_and_a_null_cost",
        parquet_file(
            pd.DataFrame(
                {
                    "Date": ["2024-01-01", "2024-01-02", "2024-01-03"],
                    "TotalCost": [1.5, None, 2.25],
                    "customer_id": [101, 101, 102],
                }
            )
        ),
        quarantine={(2, "TotalCost", "not_nullable")},
        good={1, 3},
        file_name="input.parquet",
    ),
    Case(
        "mixed_currencies_unconfigured",
        text_file(
            ["2024-01-01,10,acme,USD", "2024-01-02,9,acme,EUR"],
            header="Date,TotalCost,customer_id,cur",
        ),
        error=r"column currency: customer 'acme' has costs in \['EUR', 'USD'\].*line 3: EUR",
        kind="table",
        config={"source": {"table": {"columns": {"currency": "cur"}}}},
    ),
    Case(
        "currency_without_rate",
        text_file(
            ["2024-01-01,10,acme,USD", "2024-01-02,9,acme,GBP", "2024-01-03,8,acme,usd"],
            header="Date,TotalCost,customer_id,cur",
        ),
        quarantine={(3, "cur", "accepted_currency")},
        good=lines_of(1, 3),
        kind="table",
        config={"source": {"currency": "USD", "table": {"columns": {"currency": "cur"}}}},
    ),
    Case(
        "currency_not_a_code",
        text_file(
            ["2024-01-01,10,acme,USD", "2024-01-02,9,acme,US Dollar"],
            header="Date,TotalCost,customer_id,cur",
        ),
        quarantine={(3, "cur", "currency_code")},
        good=lines_of(1),
        kind="table",
        config={"source": {"table": {"columns": {"currency": "cur"}}}},
    ),
    Case(
        "unknown_charge_category",
        text_file(
            ["2024-01-01,10,acme,Usage", "2024-01-02,9,acme,Bogus"],
            header="Date,TotalCost,customer_id,cat",
        ),
        quarantine={(3, "cat", "known_charge_category")},
        good=lines_of(1),
        kind="table",
        config={"source": {"table": {"columns": {"charge_category": "cat"}}}},
    ),
    Case(
        "focus_null_cost_and_bad_category",
        text_file(
            [
                *FOCUS_GOOD,
                "NULL,1,USD,Usage,NULL,2024-09-02 04:00:00,Compute,us-east-1,111,NULL",
                "1,1,USD,Rebate,NULL,2024-09-02 05:00:00,Compute,us-east-1,111,NULL",
            ],
            header=FOCUS_HEADER,
        ),
        quarantine={
            (5, "BilledCost", "not_nullable"),
            (6, "ChargeCategory", "known_charge_category"),
        },
        good=lines_of(1, 2, 3),
        kind="focus",
    ),
    Case(
        "focus_tags_not_json",
        text_file(
            [*FOCUS_GOOD, "1,1,USD,Usage,NULL,2024-09-02 04:00:00,Compute,us-east-1,111,{team: a}"],
            header=FOCUS_HEADER,
        ),
        quarantine={(5, "Tags", "tags_json")},
        good=lines_of(1, 2, 3),
        kind="focus",
        config={"source": {"focus": {"customer_key": "tag:team"}}},
    ),
    Case(
        "focus_untagged_quarantined_when_asked",
        text_file(FOCUS_GOOD, header=FOCUS_HEADER),
        quarantine={(4, "Tags", "not_nullable")},
        good=lines_of(1, 2),
        kind="focus",
        config={"source": {"focus": {"customer_key": "tag:team", "untagged_customer": None}}},
    ),
    Case(
        "focus_wrong_cost_column",
        text_file(FOCUS_GOOD, header=FOCUS_HEADER),
        error=r"input\.csv: required column 'BilledCosts' \(source\.focus\.cost_column\).*Similar: \['BilledCost'\]",
        kind="focus",
        config={"source": {"focus": {"cost_column": "BilledCosts"}}},
    ),
    Case(
        "daily_row_on_another_day",
        daily_folder({"usage_2024-01-01.csv": ["2024-01-01,1,acme", "2024-01-02,2,acme"]}),
        quarantine={(3, "Date", "file_day")},
        good=lines_of(1),
        kind="daily_folder",
    ),
    Case(
        "daily_impossible_day_in_file_name",
        daily_folder({"usage_2024-13-45.csv": ["2024-01-01,1,acme"]}),
        error=r"usage_2024-13-45\.csv: '2024-13-45' is not a valid day",
        kind="daily_folder",
    ),
    Case(
        "failure_rate_above_limit",
        text_file([*GOOD, "2024-01-03,x,acme", "2024-01-04,y,acme"]),
        error=r"input\.csv: 2 of 5 rows \(40\.0%\) failed validation.*\n  line 5, column TotalCost \(is_number\)",
        config={"preprocess": {"max_failure_rate": 0.25}},
    ),
    Case("missing_path", lambda path: None, error=r"input\.csv: no such file or folder"),
]


def load(case: Case, tmp_path: Path) -> LoadedUsage:
    path = tmp_path / case.file_name
    case.write(path)
    source: dict[str, Any] = {"kind": case.kind, "path": str(path)}
    if case.kind == "daily_folder":
        source["path"] = str(tmp_path / "daily")
    if case.kind == "table":
        source.update(
            customer_column="customer_id", timestamp_column="Date", cost_column="TotalCost"
        )
    overrides = {"source": source, "preprocess": {"max_failure_rate": 0.5}}
    config = PipelineConfig().merged(overrides).merged(case.config)
    return load_usage(config.source, config.preprocess)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    if case.error is not None:
        with pytest.raises(SourceError, match=case.error):
            load(case, tmp_path)
        return
    loaded = load(case, tmp_path)
    found = set(
        zip(
            loaded.quarantine["source_line"],
            loaded.quarantine["column"],
            loaded.quarantine["check"],
            strict=True,
        )
    )
    assert found == case.quarantine
    assert set(loaded.quarantine["reason"]) and "" not in set(loaded.quarantine["reason"])
    arrived = (
        set(loaded.usage["source_line"])
        | set(loaded.signals["source_line"])
        | set(loaded.duplicates["source_line"])
    )
    assert arrived == case.good
    assert_accounted(loaded)


def assert_accounted(loaded: LoadedUsage) -> None:
    """Every input line is in exactly one place and the counts agree."""
    accounting = loaded.accounting()
    assert not accounting.duplicated(["source_file", "source_line"]).any()
    assert len(accounting) == loaded.input_rows
    summary = loaded.summary()
    assert summary["input_rows"] == summary["valid_rows"] + summary["quarantined_rows"]


def test_catalogue_is_large_and_distinct() -> None:
    bad = [c for c in CASES if c.error is not None or c.quarantine]
    assert len(bad) >= 25
    assert len({c.name for c in CASES}) == len(CASES)


def test_good_rows_keep_their_values(tmp_path: Path) -> None:
    """The good rows of a messy file arrive with exactly the cost and day written in it."""
    rows = [*GOOD, "2024-01-03,abc,acme", "2024-01-04,7.125,acme", "2999-01-01,1,acme"]
    case = Case("mixed", text_file(rows), config={"preprocess": {"max_failure_rate": 1.0}})
    loaded = load(case, tmp_path)
    expected = {}
    for number, row in enumerate(rows, start=2):
        date, cost, customer = row.split(",")
        if number in (5, 7):
            continue
        expected[number] = (customer, pd.Timestamp(date, tz="UTC"), float(cost))
    got = {
        int(r.source_line): (r.customer_id, r.timestamp, r.cost) for r in loaded.usage.itertuples()
    }
    assert got == expected
    assert_accounted(loaded)


@pytest.mark.parametrize("policy", ["sum", "last"])
def test_duplicate_policies_merge_and_report(policy: str, tmp_path: Path) -> None:
    rows = ["2024-01-01,10,acme", "2024-01-01,2.5,acme", "2024-01-02,4,acme", "2024-01-01,1,acme"]
    case = Case("dups", text_file(rows), config={"preprocess": {"duplicates": policy}})
    loaded = load(case, tmp_path)
    day1 = loaded.usage[loaded.usage["timestamp"] == pd.Timestamp("2024-01-01", tz="UTC")]
    assert len(day1) == 1
    if policy == "sum":
        assert day1["cost"].iloc[0] == pytest.approx(13.5)
        assert day1["source_line"].iloc[0] == 2
        assert set(loaded.duplicates["source_line"]) == {3, 5}
        assert set(loaded.duplicates["action"]) == {"summed"}
    else:
        assert day1["cost"].iloc[0] == pytest.approx(1.0)
        assert day1["source_line"].iloc[0] == 5
        assert set(loaded.duplicates["source_line"]) == {2, 3}
        assert set(loaded.duplicates["action"]) == {"superseded"}
    assert set(loaded.duplicates["kept_line"]) == {int(day1["source_line"].iloc[0])}
    assert loaded.summary()["duplicate_rows"] == 2
    assert_accounted(loaded)


def test_failure_rate_message_names_rows(tmp_path: Path) -> None:
    case = Case(
        "rate",
        text_file(["2024-01-01,x,acme", "2024-01-02,1,acme"]),
        config={"preprocess": {"max_failure_rate": 0.05}},
    )
    with pytest.raises(SourceError) as info:
        load(case, tmp_path)
    message = str(info.value)
    assert str(tmp_path / "input.csv") in message
    assert "line 2, column TotalCost (is_number): cost 'x' is not a number" in message


def test_each_file_is_held_to_the_rate(tmp_path: Path) -> None:
    """A bad file is not excused by good neighbours in the same folder."""
    folder = tmp_path / "many"
    folder.mkdir()
    text_file(GOOD * 10)(folder / "a.csv")
    text_file(["2024-01-05,x,acme", "2024-01-06,1,acme"])(folder / "b.csv")
    config = PipelineConfig().merged(
        {
            "source": {"kind": "notebook_csv", "path": str(folder)},
            "preprocess": {"duplicates": "sum"},
        }
    )
    with pytest.raises(SourceError, match=r"b\.csv: 1 of 2 rows"):
        load_usage(config.source, config.preprocess)


def test_truncated_gzip_never_returns_partial_data(tmp_path: Path) -> None:
    path = tmp_path / "input.csv.gz"
    gzip_truncated(path)
    assert os.path.getsize(path) > 0
    config = PipelineConfig().merged({"source": {"kind": "notebook_csv", "path": str(path)}})
    with pytest.raises(SourceError, match="re-download"):
        load_usage(config.source, config.preprocess)


def test_gzip_truncated_mid_stream_names_the_line(tmp_path: Path) -> None:
    """A download cut off after many lines fails too; the rows before the cut are not used."""
    import numpy as np

    rng = np.random.default_rng(3)
    rows = [f"2024-01-{1 + i % 28:02d},{rng.uniform(0, 1000):.6f},c{i}" for i in range(30_000)]
    packed = gzip.compress(("\n".join([HEADER, *rows]) + "\n").encode())
    path = tmp_path / "input.csv.gz"
    path.write_bytes(packed[: len(packed) * 3 // 4])
    config = PipelineConfig().merged({"source": {"kind": "notebook_csv", "path": str(path)}})
    with pytest.raises(
        SourceError, match=r"input\.csv\.gz: compressed data is truncated or corrupt after line \d+"
    ):
        load_usage(config.source, config.preprocess)


def test_iso_variants_the_pattern_accepts_are_parsed() -> None:
    from anomaly_pipelines.core.validation import parse_timestamps

    parsed, fmt = parse_timestamps(
        pd.Series(["2024-01-05T10:00:00z", "2024-01-05T10:00:00,5Z", "2024-01-05 10:00:00 UTC"]),
        None,
        "UTC",
        "usage.csv",
    )
    assert fmt == "ISO 8601" and parsed.notna().all()
    assert parsed.tolist() == [
        pd.Timestamp("2024-01-05T10:00:00", tz="UTC"),
        pd.Timestamp("2024-01-05T10:00:00.5", tz="UTC"),
        pd.Timestamp("2024-01-05T10:00:00", tz="UTC"),
    ]


def test_parsed_timestamps_keep_each_rows_place_index_and_missing_values() -> None:
    # Parsed once per distinct text and spread back to the rows as integers: every row gets
    # its own text's time, missing and unreadable texts NaT, under the input's own index.
    from anomaly_pipelines.core.validation import parse_timestamps

    texts = ["2024-01-02", None, "2024-01-01 10:30", "not a date", "2024-01-02", "9999-01-01"]
    values = pd.Series(texts, index=[7, 3, 11, 0, 5, 2], dtype="str")
    parsed, fmt = parse_timestamps(values, None, "Europe/Berlin", "usage.csv")
    assert fmt == "ISO 8601" and str(parsed.dtype) == "datetime64[ns, UTC]"
    assert parsed.index.equals(values.index)
    plain = [
        pd.Timestamp("2024-01-02", tz="UTC"),
        pd.NaT,
        pd.Timestamp("2024-01-01 10:30", tz="Europe/Berlin").tz_convert("UTC"),
        pd.NaT,
        pd.Timestamp("2024-01-02", tz="UTC"),
        pd.Timestamp.max.floor("us").tz_localize("UTC"),  # pinned to the bound, then range-checked
    ]
    assert parsed.tolist() == plain
