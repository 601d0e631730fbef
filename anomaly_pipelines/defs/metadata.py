"""Small, readable materialization metadata: Markdown tables and embedded plot thumbnails.

Metadata lives in the Dagster event log (SQLite by default), so tables are capped in rows and
images are shrunk to thumbnails before being embedded; the full plots stay on disk.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from anomaly_pipelines.core.ids import visible

MAX_TABLE_ROWS = 20
THUMBNAIL_WIDTH = 640


def markdown_table(frame: pd.DataFrame, max_rows: int = MAX_TABLE_ROWS, digits: int = 3) -> str:
    """A pipe table of the first ``max_rows`` rows (no optional dependency such as tabulate)."""
    if frame.empty:
        return "_(no rows)_"
    shown = frame.head(max_rows)
    # Column names are the project's own; only what could break the table is escaped.
    header = "| " + " | ".join(html.escape(str(c)).replace("|", "\\|") for c in shown.columns) + " |"
    rule = "|" + "|".join(" --- " for _ in shown.columns) + "|"
    rows = [
        "| " + " | ".join(_cell(v, digits) for v in row) + " |"
        for row in shown.itertuples(index=False, name=None)
    ]
    more = [f"\n_{len(frame) - max_rows} more rows not shown_"] if len(frame) > max_rows else []
    return "\n".join([header, rule, *rows, *more])


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return ""
        return f"{value:.{digits}g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d") if value == value.normalize() else value.isoformat()
    return markdown_text(value)


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]#!|~$<>])")


def markdown_text(value: Any) -> str:
    """Data text (customer ids, reasons, file names) for a Markdown metadata value: one line,
    invisible and direction-changing characters shown as ``<U+XXXX>``, HTML special characters
    as entities and Markdown punctuation backslash-escaped. Ids come from billing files anyone
    can write to; whether or not the UI sanitises ``<script>``, ``<img onerror>`` or a
    ``[link](javascript:...)``, they reach it as plain text."""
    text = " ".join(visible(value).split())
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=True))


def image_markdown(paths: list[Path], titles: list[str] | None = None, limit: int = 3) -> str:
    """Markdown embedding up to ``limit`` PNGs as base64 thumbnails, plus the file paths."""
    titles = titles or [p.stem for p in paths]
    parts = []
    for path, title in list(zip(paths, titles, strict=True))[:limit]:
        title = markdown_text(title)
        parts.append(f"**{title}**\n\n![{title}](data:image/png;base64,{thumbnail_base64(path)})")
    if len(paths) > limit:
        parts.append(f"_{len(paths) - limit} more plots on disk, see `plot_paths`._")
    return "\n\n".join(parts)


def thumbnail_base64(path: Path, width: int = THUMBNAIL_WIDTH) -> str:
    from PIL import Image  # matplotlib's own dependency; imported here to keep loading fast

    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.width > width:
            image = image.resize((width, max(1, round(image.height * width / image.width))))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def table_schema(frame: pd.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name=str(c), type=str(t)) for c, t in frame.dtypes.items()]
    )


def md(text: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(text)


def add_partition_metadata(
    context: dg.AssetExecutionContext,
    per_key: dict[str, dict[str, Any]],
    asset_key: str | None = None,
) -> None:
    """Attach each customer's own numbers to its partition's materialization, so the UI shows a
    customer's thresholds and counts even when a batch run materialized hundreds at once (the
    run-wide totals go on every partition)."""
    keys = set(context.partition_keys)
    for key, metadata in per_key.items():
        if key in keys and metadata:
            context.add_asset_metadata(metadata, asset_key=asset_key, partition_key=key)
