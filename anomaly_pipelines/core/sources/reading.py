"""Files to rows of text, each with the line it came from.

Billing exports arrive as CSV (any common delimiter, BOM or not, gzip or not, sometimes UTF-16)
or Parquet. Every value is read as text so nothing is coerced before validation can see it, and
every data line is either a row or a rejected line with a reason: a stray quote costs one line,
not the rest of the file, and a truncated download fails loudly instead of losing its tail.

CSV ``source_line`` is the physical line where the record starts (the header is line 1 when the
file has no leading blank lines); Parquet ``source_line`` is the 1-based row number.
"""

from __future__ import annotations

import csv
import difflib
import glob
import gzip
import hashlib
import io
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from anomaly_pipelines.core.validation import (
    QUARANTINE_COLUMNS,
    RECORD,
    RawRows,
    SourceError,
    quarantine_entry,
)

DATA_SUFFIXES = (".csv", ".tsv", ".txt", ".gz", ".parquet", ".pq")
DELIMITERS = (",", ";", "\t", "|")
_QUOTE = '"'
# A quoted field longer than this many lines is taken for a stray quote, not a multi-line value.
_MAX_RECORD_LINES = 200
_PARQUET_MAGIC = b"PAR1"
_GZIP_MAGIC = b"\x1f\x8b"

# header -> {canonical name: header column}; raises SourceError naming what is missing.
Resolver = Callable[[list[str], str], dict[str, str]]


@dataclass
class FileRows:
    """One file's data rows (text) and the lines rejected while reading it."""

    path: str
    frame: pd.DataFrame  # canonical columns, source_file, source_line (+ _record)
    rejected: list[dict[str, object]] = field(default_factory=list)
    input_rows: int = 0
    columns: dict[str, str] = field(default_factory=dict)  # canonical -> the file's column

    def rejected_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rejected, columns=QUARANTINE_COLUMNS)


def expand_paths(path: str | None, setting: str = "source.path") -> list[Path]:
    """A file, every data file under a folder (recursively, sorted) or a glob's matches."""
    if not path:
        raise SourceError(f"{setting} is not set")
    if any(ch in path for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())
        if not files:
            raise SourceError(f"{path}: no files match ({setting})")
        return files
    target = Path(path)
    if target.is_file():
        return [target]
    if target.is_dir():
        files = sorted(
            p
            for p in target.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(DATA_SUFFIXES)
        )
        if not files:
            raise SourceError(f"{path}: folder has no data files ({', '.join(DATA_SUFFIXES)})")
        return files
    raise SourceError(f"{path}: no such file or folder ({setting})")


def find_column(header: list[str], wanted: str, *, file: str, setting: str) -> str:
    """The header name for ``wanted``: exact, else the one unique case/space-insensitive match."""
    if header.count(wanted) == 1:
        return wanted
    if header.count(wanted) > 1:
        raise SourceError(
            f"{file}: column '{wanted}' appears {header.count(wanted)} times in the header"
        )
    folded = [h for h in header if h.strip().casefold() == wanted.strip().casefold()]
    if len(folded) == 1:
        return folded[0]
    hint = ""
    close = difflib.get_close_matches(wanted, header, n=3, cutoff=0.6)
    if close:
        hint = f" Similar: {close}; set {setting} to the right name."
    elif len(header) == 1:
        found = [d for d in DELIMITERS if d in header[0]]
        if found:
            hint = f" The header looks delimited by {found[0]!r}: set source.delimiter."
    shown = header if len(header) <= 20 else [*header[:20], "..."]
    raise SourceError(
        f"{file}: required column '{wanted}' ({setting}) not found; header: {shown}.{hint}"
    )


def optional_column(header: list[str], *names: str) -> str | None:
    """The first of ``names`` present in the header (exact, then case-insensitive), or None."""
    for name in names:
        if name in header:
            return name
    for name in names:
        folded = [h for h in header if h.strip().casefold() == name.casefold()]
        if len(folded) == 1:
            return folded[0]
    return None


def read_rows(
    path: Path,
    resolve: Resolver,
    *,
    delimiter: str | None,
    encoding: str,
    record_columns: list[str] | bool | None = None,
) -> FileRows:
    """Read one CSV/gzip CSV/Parquet file into text rows of the resolved columns.

    ``record_columns``: True keys each row by its whole record, a list by those header columns,
    None adds no key (used for duplicate detection by sources that need it).
    """
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise SourceError(f"{path}: cannot open: {exc}") from exc
    if not magic:
        raise SourceError(f"{path}: file is empty (no header row)")
    if magic == _PARQUET_MAGIC:
        return _read_parquet(path, resolve, record_columns)
    return _read_csv(path, resolve, delimiter, encoding, record_columns)


def _read_parquet(
    path: Path, resolve: Resolver, record_columns: list[str] | bool | None
) -> FileRows:
    import pyarrow.parquet as pq  # imported here: only Parquet sources need it

    try:
        parquet = pq.ParquetFile(path)
        header = list(parquet.schema_arrow.names)
        mapping = resolve(header, str(path))
        keyed = header if record_columns is True else list(record_columns or [])
        wanted = list(dict.fromkeys([*mapping.values(), *keyed]))
        data = parquet.read(columns=wanted).to_pandas()
    except SourceError:
        raise
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise SourceError(f"{path}: not a readable Parquet file: {exc}") from exc
    frame = pd.DataFrame({name: _as_text(data[column]) for name, column in mapping.items()})
    if keyed:
        frame[RECORD] = (
            pd.util.hash_pandas_object(data[keyed], index=False).astype("str").to_numpy()
        )
    frame.insert(0, "source_line", range(1, len(data) + 1))
    frame.insert(0, "source_file", str(path))
    return FileRows(str(path), frame, [], len(data), dict(mapping))


def _as_text(values: pd.Series) -> pd.Series:
    """Parquet values as the text a CSV would hold, exactly (repr round-trips floats)."""
    unique = pd.Series(values.dropna().unique())

    def render(value: object) -> str:
        if isinstance(value, pd.Timestamp):
            return value.isoformat()
        if isinstance(value, float):
            return repr(value)
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        return str(value)

    mapping = dict(zip(unique, unique.map(render), strict=True))
    return values.map(mapping).astype("str")


def _open_text(path: Path, encoding: str) -> tuple[io.TextIOWrapper, BinaryIO]:
    raw: BinaryIO = path.open("rb")
    stream: BinaryIO = raw
    if raw.read(2) == _GZIP_MAGIC:
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
    else:
        raw.seek(0)
    buffered = io.BufferedReader(stream)  # type: ignore[arg-type]
    head = _peek(buffered, path)
    name = encoding.lower().replace("_", "-")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"  # Excel's "Unicode text"; the BOM says so whatever was configured
    elif not name.startswith(("utf-16", "utf16", "utf-32", "utf32")) and (
        bom_less := _utf16_without_bom(head)
    ):
        raw.close()
        raise SourceError(
            f"{path}: the file looks like {bom_less} text without a byte-order mark (every "
            f"other byte is zero), not {encoding}; set source.encoding: "
            f"{bom_less.lower()} (or re-export it as UTF-8)"
        )
    elif name in ("utf-8", "utf8"):
        encoding = "utf-8-sig"  # same decoding, and a leading BOM is not part of the header
    try:
        text = io.TextIOWrapper(buffered, encoding=encoding, errors="replace", newline="")
    except LookupError as exc:
        raw.close()
        raise SourceError(f"{path}: unknown encoding {encoding!r} (source.encoding)") from exc
    return text, raw


def _utf16_without_bom(head: bytes) -> str | None:
    """``UTF-16-LE``/``UTF-16-BE`` when the first characters are ASCII stored in two bytes
    each (a header such as ``Date`` read as ``D\x00a\x00``), else None."""
    if len(head) < 4:
        return None
    if head[1] == 0 and head[3] == 0 and head[0] != 0 and head[2] != 0:
        return "UTF-16-LE"
    if head[0] == 0 and head[2] == 0 and head[1] != 0 and head[3] != 0:
        return "UTF-16-BE"
    return None


def _peek(buffered: io.BufferedReader, path: Path) -> bytes:
    try:
        return buffered.peek(4)[:4]
    except (EOFError, OSError, zlib.error) as exc:
        raise SourceError(
            f"{path}: compressed data is truncated or corrupt at the start: {exc}; re-download the file"
        ) from exc


def _read_csv(
    path: Path,
    resolve: Resolver,
    delimiter: str | None,
    encoding: str,
    record_columns: list[str] | bool | None,
) -> FileRows:
    text, raw = _open_text(path, encoding)
    file = str(path)
    lines = _numbered_lines(text, path)
    try:
        records = _assemble(lines)
        header_record = _first_record(records, file)
        if header_record is None:
            raise SourceError(f"{file}: file is empty (no header row)")
        _, header_text = header_record
        delimiter, header, mapping = _choose_delimiter(header_text, delimiter, resolve, file)
        index = {name: header.index(column) for name, column in mapping.items()}
        if record_columns is True:
            keyed: list[int] | None = None
        elif record_columns:
            keyed = [
                header.index(find_column(header, c, file=file, setting="duplicate_key"))
                for c in record_columns
            ]
        else:
            keyed = []
        reader = _RowCollector(file, header, index, delimiter, keyed)
        reader.consume(records)
    finally:
        text.close()
        raw.close()
    frame = pd.DataFrame(
        {name: pd.Series(values, dtype="str") for name, values in reader.columns.items()}
    )
    if keyed != []:
        frame[RECORD] = pd.Series(reader.records, dtype="str")
    frame.insert(0, "source_line", pd.Series(reader.lines, dtype="int64"))
    frame.insert(0, "source_file", file)
    return FileRows(file, frame, reader.rejected, reader.input_rows, dict(mapping))


def _numbered_lines(text: io.TextIOWrapper, path: Path) -> Iterator[tuple[int, str]]:
    number = 0
    try:
        for number, line in enumerate(text, start=1):
            yield number, line
    except (EOFError, OSError, zlib.error) as exc:
        raise SourceError(
            f"{path}: compressed data is truncated or corrupt after line {number}: {exc}; "
            "re-download the file"
        ) from exc


def _assemble(lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, int, str, bool]]:
    """Group physical lines into records: (first line, last line, text, quotes balanced).

    A record continues while its quote count is odd (a quoted newline). If no closing quote
    comes within ``_MAX_RECORD_LINES`` (or before the end), the first line alone is returned as
    unbalanced and the following lines are read again as records of their own.
    """
    pending: deque[tuple[int, str]] = deque()

    def next_line() -> tuple[int, str] | None:
        return pending.popleft() if pending else next(lines, None)

    while (item := next_line()) is not None:
        start, text = item
        if text.count(_QUOTE) % 2 == 0:
            yield start, start, text, True
            continue
        buffer = [item]
        quotes = text.count(_QUOTE)
        closed = False
        while len(buffer) < _MAX_RECORD_LINES:
            following = next_line()
            if following is None:
                break
            buffer.append(following)
            quotes += following[1].count(_QUOTE)
            if quotes % 2 == 0:
                closed = True
                break
        if closed:
            yield start, buffer[-1][0], "".join(t for _, t in buffer), True
        else:
            yield start, start, text, False
            pending.extendleft(reversed(buffer[1:]))


def _first_record(
    records: Iterator[tuple[int, int, str, bool]], file: str
) -> tuple[int, str] | None:
    for first, _last, text, balanced in records:
        if not text.strip():
            continue
        if not balanced:
            raise SourceError(f"{file}, line {first}: the header has an unbalanced quote")
        return first, text
    return None


def _split(text: str, delimiter: str) -> list[str] | None:
    """Fields of one record, or None when the csv module cannot parse it."""
    try:
        return next(csv.reader([text], delimiter=delimiter, quotechar=_QUOTE), [])
    except csv.Error:
        return None


def _too_long(text: str, delimiter: str) -> bool:
    """The csv module refused the record because a field exceeds its size limit (not because
    of its quoting)."""
    try:
        next(csv.reader([text], delimiter=delimiter, quotechar=_QUOTE), [])
    except csv.Error as exc:
        return "field larger than field limit" in str(exc)
    return False


def _choose_delimiter(
    header_text: str, configured: str | None, resolve: Resolver, file: str
) -> tuple[str, list[str], dict[str, str]]:
    """The configured delimiter, or the candidate with which the header has the needed columns."""
    if configured is not None:
        header = _header(header_text, configured, file)
        try:
            return configured, header, resolve(header, file)
        except SourceError as exc:
            for other in DELIMITERS:
                if other != configured and _resolves(header_text, other, resolve, file):
                    raise SourceError(
                        f"{exc} With delimiter {other!r} the header fits: set source.delimiter."
                    ) from exc
            raise
    ranked = sorted(DELIMITERS, key=lambda d: -header_text.count(d))
    for candidate in ranked:
        if _resolves(header_text, candidate, resolve, file):
            header = _header(header_text, candidate, file)
            return candidate, header, resolve(header, file)
    header = _header(header_text, ranked[0], file)
    return ranked[0], header, resolve(header, file)  # raises, naming what is missing


def _resolves(header_text: str, delimiter: str, resolve: Resolver, file: str) -> bool:
    try:
        resolve(_header(header_text, delimiter, file), file)
    except SourceError:
        return False
    return True


def _header(header_text: str, delimiter: str, file: str) -> list[str]:
    names = _split(header_text, delimiter)
    if names is None:
        raise SourceError(f"{file}: the header line cannot be parsed as CSV")
    return [name.strip().lstrip("\ufeff").strip() for name in names]


class _RowCollector:
    """Turns records into column lists, rejecting lines with broken quoting or field counts."""

    def __init__(
        self,
        file: str,
        header: list[str],
        index: dict[str, int],
        delimiter: str,
        keyed: list[int] | None,
    ) -> None:
        self.file = file
        self.width = len(header)
        self.index = index
        self.delimiter = delimiter
        self.keyed = keyed
        self.columns: dict[str, list[str]] = {name: [] for name in index}
        self.lines: list[int] = []
        self.records: list[str] = []
        self.rejected: list[dict[str, object]] = []
        self.input_rows = 0

    def consume(self, records: Iterator[tuple[int, int, str, bool]]) -> None:
        for first, last, text, balanced in records:
            if balanced and not text.strip():
                continue  # blank lines hold no data
            self.input_rows += 1
            if not balanced:
                self._reject(
                    first, "quote", text, "unbalanced quote: no closing quote for this field"
                )
                continue
            fields = _split(text, self.delimiter)
            while fields is not None and len(fields) > self.width and fields[-1] == "":
                fields.pop()  # trailing delimiters (spreadsheet exports) add empty fields
            if fields is not None and len(fields) == self.width:
                self._accept(first, text, fields)
            elif last > first:
                # Balanced but malformed across lines: most likely two stray quotes. Reject the
                # first line and read the others again, so they are not lost inside it.
                self.input_rows -= 1
                self._split_and_retry(text, first)
            elif fields is None and _too_long(text, self.delimiter):
                self._reject(
                    first,
                    "field_size",
                    text,
                    f"a field is longer than {csv.field_size_limit():,} characters (the CSV "
                    "reader's limit); no billing value is that long",
                )
            elif fields is None:
                self._reject(first, "quote", text, "misplaced quote: the line is not valid CSV")
            else:
                self._reject(
                    first,
                    "field_count",
                    text,
                    f"{len(fields)} fields, the header has {self.width} "
                    f"(delimiter {self.delimiter!r})",
                )

    def _split_and_retry(self, text: str, first: int) -> None:
        physical = text.splitlines(keepends=True)
        self.input_rows += 1
        self._reject(
            first, "quote", physical[0], "unbalanced quote: no closing quote for this field"
        )
        rest = iter((first + i, line) for i, line in enumerate(physical[1:], start=1))
        self.consume(_assemble(rest))

    def _accept(self, line: int, text: str, fields: list[str]) -> None:
        for name, position in self.index.items():
            self.columns[name].append(fields[position])
        self.lines.append(line)
        if self.keyed is None:
            self.records.append(_digest(text.rstrip("\r\n")))
        elif self.keyed:
            self.records.append(_digest("\x1f".join(fields[i] for i in self.keyed)))

    def _reject(self, line: int, check: str, text: str, reason: str) -> None:
        self.rejected.append(
            quarantine_entry(self.file, line, "(row)", check, text.rstrip("\r\n"), reason)
        )


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=12).hexdigest()


def combine(
    parts: list[FileRows],
    *,
    floor: str | None,
    duplicate_key: list[str],
    reasons: dict[tuple[str, str], str] | None = None,
) -> RawRows:
    """Many files' rows as one ``RawRows`` (files keep their order: it decides ``last``)."""
    frames = [p.frame for p in parts if not p.frame.empty]
    frame = pd.concat(frames, ignore_index=True) if frames else parts[0].frame.iloc[0:0]
    rejected = [entry for p in parts for entry in p.rejected]
    return RawRows(
        frame=frame,
        rejected=pd.DataFrame(rejected, columns=QUARANTINE_COLUMNS),
        rows_per_file={p.path: p.input_rows for p in parts},
        floor=floor,
        duplicate_key=duplicate_key,
        reasons=dict(reasons or {}),
        column_names={p.path: p.columns for p in parts},
    )
