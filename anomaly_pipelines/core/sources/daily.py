"""A folder of daily export files feeding daily partitions.

Each file holds one day (named in its file name) in one of the other formats. A day can be
delivered more than once (a late or corrected export): the newest delivery (latest modification
time, then the later name) is that day's data and earlier ones are ignored, so a redelivery
replaces the day instead of doubling it. Rows dated on another day than their file's are
quarantined, because replacing a day would otherwise silently drop or duplicate them.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
from pathlib import Path

import pandas as pd

from anomaly_pipelines.core.config import SourceConfig
from anomaly_pipelines.core.sources.focus import focus_rows
from anomaly_pipelines.core.sources.tabular import notebook_rows, table_rows
from anomaly_pipelines.core.validation import RawRows, SourceError

log = logging.getLogger(__name__)

FORMAT_READERS = {"notebook_csv": notebook_rows, "focus": focus_rows, "table": table_rows}
_DAY_FORMATS = ("%Y-%m-%d", "%Y%m%d")


def parse_day(text: str, where: str) -> str:
    """``YYYY-MM-DD`` for a day written as ``YYYY-MM-DD`` or ``YYYYMMDD``; SourceError otherwise."""
    for fmt in _DAY_FORMATS:
        try:
            return pd.to_datetime(text, format=fmt).strftime("%Y-%m-%d")
        except (ValueError, TypeError):
            continue
    raise SourceError(f"{where}: '{text}' is not a valid day (YYYY-MM-DD)")


def daily_files(source: SourceConfig) -> dict[str, Path]:
    """The file that holds each day's data, after redeliveries: {"YYYY-MM-DD": path}."""
    files, notices = daily_deliveries(source)
    for notice in notices:
        log.warning("%s", notice)
    return files


def daily_deliveries(source: SourceConfig) -> tuple[dict[str, Path], list[str]]:
    """``daily_files`` plus a notice for each day whose newest delivery holds no data rows.

    A header-only re-delivery is more often a broken export than a day without costs, and
    taking it silently would wipe the day: ``source.daily.empty_redelivery`` decides (keep the
    earlier delivery, replace the day with nothing, or fail) and the notice says what happened.
    """
    if not source.path:
        raise SourceError("source.path is not set (daily_folder needs the folder of daily files)")
    folder = Path(source.path)
    pattern = re.compile(source.daily.date_regex)
    if folder.is_file():
        match = pattern.search(folder.name)
        if match is None:
            raise SourceError(
                f"{folder}: no day in the file name matches source.daily.date_regex "
                f"{source.daily.date_regex!r}; name the file with its day (YYYY-MM-DD) or set "
                "the regex to the file names' date format"
            )
        return {parse_day(match.group(1), str(folder)): folder}, []
    if not folder.is_dir():
        raise SourceError(f"{folder}: no such folder (source.path)")
    deliveries: dict[str, list[Path]] = {}
    for path in sorted(folder.glob(source.daily.pattern)):
        if not path.is_file() or path.name.startswith("."):
            continue
        match = pattern.search(path.name)
        if match is None:
            log.warning("%s: no day in the file name (source.daily.date_regex); file ignored", path)
            continue
        deliveries.setdefault(parse_day(match.group(1), str(path)), []).append(path)
    winners: dict[str, Path] = {}
    notices: list[str] = []
    policy = source.daily.empty_redelivery
    for day, paths in sorted(deliveries.items()):
        newest_first = sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
        winners[day] = newest_first[0]
        if len(newest_first) > 1 and not has_data_rows(newest_first[0]):
            previous = next((p for p in newest_first[1:] if has_data_rows(p)), None)
            if previous is not None:
                what = (
                    f"{newest_first[0]}: the newest delivery of {day} has no data rows (header "
                    f"only or empty) while the earlier delivery {previous} has rows"
                )
                if policy == "fail":
                    raise SourceError(
                        f"{what}; refusing to empty the day (source.daily.empty_redelivery = "
                        "fail): remove the empty file or set the policy to keep_previous/replace"
                    )
                if policy == "keep_previous":
                    winners[day] = previous
                    notices.append(
                        f"{what}; the earlier delivery is kept (source.daily.empty_redelivery = "
                        "keep_previous)"
                    )
                else:
                    notices.append(
                        f"{what}; the day is now empty (source.daily.empty_redelivery = replace)"
                    )
        for older in paths:
            if older != winners[day]:
                log.info("%s: superseded by the later delivery %s", older, winners[day])
    return winners, notices


def has_data_rows(path: Path) -> bool:
    """Whether a daily file holds more than a header. Unreadable files count as having rows:
    the reader then reports what is wrong with them instead of this check hiding them."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
        if magic == b"PAR1":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows > 0
        opener = gzip.open if magic[:2] == b"\x1f\x8b" else open
        lines = 0
        with opener(path, "rb") as handle:
            for line in handle:
                if line.strip(b" \t\r\n\x00\xef\xbb\xbf\xff\xfe"):
                    lines += 1
                    if lines >= 2:
                        return True
    except Exception:  # any read problem is the reader's to report
        return True
    return False


def list_daily_partitions(source: SourceConfig) -> list[str]:
    """Days (YYYY-MM-DD) for which a file exists, oldest first."""
    return sorted(daily_files(source))


def stage_daily_file(source: SourceConfig, day: str, staging_dir: Path) -> Path | None:
    """Copy the day's newest delivery to ``staging_dir/<day><suffix>``, replacing earlier ones.

    The copy is written next to its target and renamed into place, so a reader never sees a
    half-written day. Returns None when no file exists for ``day``.
    """
    day = parse_day(day, "day")
    source_file = daily_files(source).get(day)
    if source_file is None:
        return None
    staging_dir = Path(staging_dir)
    staging_dir.mkdir(parents=True, exist_ok=True)
    target = staging_dir / f"{day}{_suffix(source_file)}"
    temporary = staging_dir / f".{target.name}.{os.getpid()}.tmp"
    shutil.copyfile(source_file, temporary)
    os.replace(temporary, target)
    for earlier in staging_dir.glob(f"{day}.*"):
        if earlier != target and earlier.is_file():
            earlier.unlink()
    return target


def daily_rows(
    source: SourceConfig, files: dict[str, Path], notices: list[str] | None = None
) -> RawRows:
    """Rows of the given day files, each row bound to its file's day."""
    if not files:
        raise SourceError(_no_daily_files(source))
    reader = FORMAT_READERS[source.daily.format]
    rows = reader(source, list(files.values()))
    rows.file_days = {str(path): pd.Timestamp(day, tz="UTC") for day, path in files.items()}
    rows.notices = [*rows.notices, *(notices or [])]
    return rows


def _no_daily_files(source: SourceConfig) -> str:
    """Why no day was found: no file at all, or files whose names carry no recognised day."""
    folder = Path(str(source.path))
    candidates = (
        sorted(p.name for p in folder.glob(source.daily.pattern) if p.is_file() and not p.name.startswith("."))
        if folder.is_dir()
        else []
    )
    if not candidates:
        return f"{source.path}: no daily files match {source.daily.pattern!r} (source.daily.pattern)"
    shown = ", ".join(candidates[:3]) + (", ..." if len(candidates) > 3 else "")
    return (
        f"{source.path}: {len(candidates)} file(s) match {source.daily.pattern!r} ({shown}) but "
        f"none has a day in its name matching source.daily.date_regex {source.daily.date_regex!r}; "
        "set the regex to the names' date format (its first group must read YYYY-MM-DD or YYYYMMDD)"
    )


def _suffix(path: Path) -> str:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic == b"PAR1":
        return ".parquet"
    if magic[:2] == b"\x1f\x8b":
        return ".csv.gz"
    return ".csv"
