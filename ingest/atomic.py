"""Files the server writes for districts to read: replaced whole, never seen half-written."""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o640


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to a temporary name beside ``path``, then
    rename it over ``path``: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)
