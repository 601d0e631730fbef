"""CSV files a person may open in a spreadsheet, safe against formula injection.

Customer ids, services and regions come from billing exports anyone can write to (a tag, an
account name). A cell such as ``=HYPERLINK("http://evil.example","click")`` or
``+cmd|' /C calc'!A0`` written raw to a CSV is run as a formula by Excel, LibreOffice or
Google Sheets when someone opens the file. Following OWASP's CSV-injection rule, every text
cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading
apostrophe, which spreadsheets show as text and never evaluate. Numbers are not text and stay
as they are (a negative cost is still a number); typed copies (Parquet) are never touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: Any) -> Any:
    """``value`` with a leading apostrophe when it is text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells (and column names) cannot start a formula."""
    out = frame.copy()
    for column in out.columns:
        values = out[column]
        if pd.api.types.is_object_dtype(values.dtype) or pd.api.types.is_string_dtype(values.dtype):
            starts = values.map(lambda v: isinstance(v, str) and v.startswith(FORMULA_PREFIXES))
            if starts.any():
                out[column] = values.astype(object).where(~starts, "'" + values[starts].astype(str))
    out.columns = [neutralise_cell(c) if isinstance(c, str) else c for c in out.columns]
    return out


def write_csv(frame: pd.DataFrame, path: str | Path, **kwargs: Any) -> None:
    """``frame.to_csv(path, index=False)`` with every text cell spreadsheet-safe.

    Lines end in CRLF (RFC 4180): Python's CSV writer quotes a field only when it holds a
    character of the line terminator, so with a bare ``\n`` a carriage return inside an id was
    written unquoted and split its row in two for every reader.
    """
    kwargs.setdefault("lineterminator", "\r\n")
    spreadsheet_safe(frame).to_csv(path, index=False, **kwargs)
