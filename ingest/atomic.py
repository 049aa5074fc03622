"""Files the server writes for districts to read: replaced whole, never seen half-written."""

from __future__ import annotations

import os
import threading
from pathlib import Path

FILE_MODE = 0o640


def replace_text(path: Path, text: str) -> None:
    """:func:`replace_bytes` of ``text`` in UTF-8, newlines as given."""
    replace_bytes(path, text.encode("utf-8"))


def replace_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, then rename it over ``path``: a
    reader sees the old file or the new one. The temporary name is the writer's own (the
    CLI and the daemon may write the same file at once)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
