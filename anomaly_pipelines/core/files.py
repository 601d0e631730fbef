"""Output files appear whole or not at all.

A plot, report or export written in place is truncated when the disk fills up, the process is
killed or another run rewrites it at the same moment, and the truncated file then looks like a
real one. Every output is written to a temporary name in the same folder and renamed over the
target (``os.replace`` is atomic on one file system): a reader sees the old file or the new one,
and a failed write leaves the old file untouched and no temporary file behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(target: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(temporary_path)``, then rename the result to ``target``. The folder is
    created when missing; on any error the temporary file is removed and ``target`` kept."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: Path, text: str, encoding: str = "utf-8") -> None:
    """``target.write_text(text)``, atomically (see ``atomic_write``)."""
    atomic_write(target, lambda path: path.write_text(text, encoding=encoding))
