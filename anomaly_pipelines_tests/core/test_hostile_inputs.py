"""Inputs a careless or hostile user sent that used to crash a load, mislead or lose a day.

Every case writes real files to a temporary folder and loads them through ``load_usage``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.sources import LoadedUsage, SourceError, load_usage

HEADER = "Date,TotalCost,customer_id"
FILLER = [f"2024-01-{d:02d},{d}.5,acme" for d in range(1, 29)]  # keeps one bad line under 5%


def _load(path: Path, **source: Any) -> LoadedUsage:
    config = PipelineConfig.model_validate(
        {"source": {"kind": "notebook_csv", "path": str(path), **source}}
    )
    return load_usage(config.source, config.preprocess)


def _write(path: Path, lines: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def _entries(loaded: LoadedUsage) -> set[tuple[int, str]]:
    return set(zip(loaded.quarantine["source_line"], loaded.quarantine["check"], strict=True))


def _accounted(loaded: LoadedUsage) -> None:
    fates = loaded.accounting()
    assert not fates.duplicated(["source_file", "source_line"]).any()
    assert len(fates) == loaded.input_rows


@pytest.mark.parametrize("day", ["0001-01-01", "1500-06-30", "9999-12-31"])
def test_a_date_outside_the_nanosecond_range_is_quarantined_not_fatal(tmp_path: Path, day: str) -> None:
    loaded = _load(_write(tmp_path / "in.csv", [*FILLER, f"{day},2,acme"]))
    check = "min_timestamp" if day < "2000" else "not_in_future"
    assert _entries(loaded) == {(30, check)}
    assert len(loaded.usage) == len(FILLER)
    _accounted(loaded)


def test_a_huge_field_is_quarantined_as_too_long_not_as_a_quote(tmp_path: Path) -> None:
    loaded = _load(_write(tmp_path / "in.csv", [*FILLER, "2024-02-01,1," + "x" * 140_000]))
    assert _entries(loaded) == {(30, "field_size")}
    reason = loaded.quarantine["reason"].iloc[0]
    assert "longer than 131,072 characters" in reason and "quote" not in reason
    _accounted(loaded)


def test_dst_times_name_the_real_problem(tmp_path: Path) -> None:
    lines = [f"2024-01-{d:02d} 10:00:00,{d},acme" for d in range(1, 29)]
    lines += ["2024-11-03 01:30:00,1,acme", "2024-03-10 02:30:00,1,acme"]
    lines += [f"2024-02-{d:02d} 10:00:00,{d},acme" for d in range(1, 20)]
    loaded = _load(_write(tmp_path / "in.csv", lines), timezone="America/New_York")
    assert _entries(loaded) == {(30, "dst_ambiguous"), (31, "dst_nonexistent")}
    reasons = dict(zip(loaded.quarantine["check"], loaded.quarantine["reason"], strict=True))
    assert "exists twice" in reasons["dst_ambiguous"]
    assert "does not exist" in reasons["dst_nonexistent"]
    _accounted(loaded)


@pytest.mark.parametrize("section", ["source", "orchestration"])
def test_a_bad_time_zone_fails_when_the_settings_load(section: str) -> None:
    with pytest.raises(ValidationError, match=r"'Mars/Olympus' is not a time zone name"):
        PipelineConfig.model_validate({section: {"timezone": "Mars/Olympus"}})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"source": {"validation": {"min_timestamp": "yesterday-ish"}}}, "is not a date"),
        ({"orchestration": {"daily_start_date": "not a date"}}, "is not a date"),
        ({"source": {"timestamp_format": "%Y-%Q"}}, r"unknown directive\(s\) %Q"),
        ({"source": {"daily": {"date_regex": "("}}}, "not a valid regular expression"),
        ({"source": {"daily": {"date_regex": r"\d{8}"}}}, "has no group"),
        ({"source": {"encoding": "klingon"}}, "not a known text encoding"),
        ({"source": {"delimiter": ""}}, "is not one character"),
        ({"orchestration": {"ingest_cron": "0 0 5 * * *"}}, "is not a cron schedule"),
        ({"hybrid": {"peak_window": "half a day"}}, "'half a day' is not a duration"),
        ({"hybrid": {"quiet_period": "-1D"}}, "'-1D' is not a duration"),
        ({"preprocess": {"frequency": "daily"}}, "'daily' is not a duration"),
    ],
    ids=[
        "min_timestamp",
        "daily_start_date",
        "format",
        "regex",
        "regex-group",
        "encoding",
        "delimiter",
        "ingest_cron",
        "peak_window",
        "quiet_period",
        "frequency",
    ],
)
def test_unusable_settings_fail_when_they_load(settings: dict[str, Any], message: str) -> None:
    """Each used to fail only when the first file was read, with a traceback from deep inside
    (``DateParseError``, ``re.error``, ``IndexError: no such group``, ``TypeError``)."""
    with pytest.raises(ValidationError, match=message):
        PipelineConfig.model_validate(settings)


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_says_the_encoding_is_wrong(tmp_path: Path, codec: str) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(("\n".join([HEADER, *FILLER]) + "\n").encode(codec))
    with pytest.raises(SourceError, match=rf"looks like {codec.upper()} text without a byte-order mark"):
        _load(path)
    assert len(_load(path, encoding=codec).usage) == len(FILLER)  # and the advice works


def _daily(folder: Path, name: str, lines: list[str], mtime: int) -> None:
    path = _write(folder / name, lines)
    os.utime(path, (mtime, mtime))


def _daily_load(folder: Path, **daily: Any) -> LoadedUsage:
    return _load(folder, kind="daily_folder", daily={"format": "notebook_csv", **daily})


def test_a_date_less_daily_file_name_says_so(tmp_path: Path) -> None:
    _daily(tmp_path, "usage_03-25-2024.csv", ["2024-03-25,1,acme"], 1_700_000_000)
    with pytest.raises(SourceError, match=r"1 file\(s\) match '\*' \(usage_03-25-2024.csv\) but none has a day"):
        _daily_load(tmp_path)


@pytest.fixture
def redelivered(tmp_path: Path) -> Path:
    _daily(tmp_path, "usage_2024-03-24.csv", ["2024-03-24,4,acme", "2024-03-24,2,beta"], 1_700_000_000)
    _daily(tmp_path, "usage_2024-03-25.csv", ["2024-03-25,5,acme", "2024-03-25,3,beta"], 1_700_000_000)
    _daily(tmp_path, "usage_2024-03-25_redo.csv", [], 1_700_000_500)  # header only, newer
    return tmp_path


def test_an_empty_redelivery_keeps_the_day_and_says_so(redelivered: Path) -> None:
    loaded = _daily_load(redelivered)
    assert sorted(loaded.usage["timestamp"].dt.strftime("%Y-%m-%d").unique()) == ["2024-03-24", "2024-03-25"]
    assert len(loaded.usage) == 4
    (notice,) = loaded.notices
    assert "usage_2024-03-25_redo.csv" in notice and "no data rows" in notice and "kept" in notice


def test_an_empty_redelivery_may_replace_the_day_with_a_notice(redelivered: Path) -> None:
    loaded = _daily_load(redelivered, empty_redelivery="replace")
    assert set(loaded.usage["timestamp"].dt.strftime("%Y-%m-%d")) == {"2024-03-24"}
    (notice,) = loaded.notices
    assert "the day is now empty" in notice


def test_an_empty_redelivery_can_be_refused(redelivered: Path) -> None:
    with pytest.raises(SourceError, match=r"refusing to empty the day"):
        _daily_load(redelivered, empty_redelivery="fail")


def test_timed_rows_of_a_daily_source_fall_on_their_days_in_source_timezone(tmp_path: Path) -> None:
    """00:30 in Berlin is 23:30 UTC the day before; the notebook format floors rows to days,
    which must be Berlin's days, labelled like the date-only rows of the same day."""
    lines = ["2024-03-05 00:30:00,1,acme", "2024-03-05 23:30:00,2,acme", "2024-03-06,4,acme"]
    lines += ["2024-07-01 00:15:00,8,acme"]  # summer time: UTC+2
    loaded = _load(_write(tmp_path / "in.csv", lines), timezone="Europe/Berlin")
    days = loaded.usage.set_index(loaded.usage["timestamp"].dt.strftime("%Y-%m-%d"))["cost"]
    assert days.to_dict() == {"2024-03-05": 3.0, "2024-03-06": 4.0, "2024-07-01": 8.0}
    _accounted(loaded)
