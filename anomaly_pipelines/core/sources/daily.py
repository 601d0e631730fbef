"""A folder of daily export files feeding daily partitions.

Each file holds one day (named in its file name) in one of the other formats. A day can be
delivered more than once (a late or corrected export): the newest delivery (latest modification
time, then the later name) is that day's data and earlier ones are ignored, so a redelivery
replaces the day instead of doubling it. Rows dated on another day than their file's are
quarantined, because replacing a day would otherwise silently drop or duplicate them.
"""

from __future__ import annotations

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
    if not source.path:
        raise SourceError("source.path is not set (daily_folder needs the folder of daily files)")
    folder = Path(source.path)
    pattern = re.compile(source.daily.date_regex)
    if folder.is_file():
        match = pattern.search(folder.name)
        if match is None:
            raise SourceError(f"{folder}: no day in the file name (source.daily.date_regex)")
        return {parse_day(match.group(1), str(folder)): folder}
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
    winners = {}
    for day, paths in sorted(deliveries.items()):
        winners[day] = max(paths, key=lambda p: (p.stat().st_mtime_ns, p.name))
        for older in paths:
            if older != winners[day]:
                log.info("%s: superseded by the later delivery %s", older, winners[day])
    return winners


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


def daily_rows(source: SourceConfig, files: dict[str, Path]) -> RawRows:
    """Rows of the given day files, each row bound to its file's day."""
    if not files:
        raise SourceError(f"{source.path}: no daily files match {source.daily.pattern!r}")
    reader = FORMAT_READERS[source.daily.format]
    rows = reader(source, list(files.values()))
    rows.file_days = {str(path): pd.Timestamp(day, tz="UTC") for day, path in files.items()}
    return rows


def _suffix(path: Path) -> str:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic == b"PAR1":
        return ".parquet"
    if magic[:2] == b"\x1f\x8b":
        return ".csv.gz"
    return ".csv"
