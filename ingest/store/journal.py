"""The upload journal: which files may not be whole, kept durably for the next start.

The SFTP layer writes a row *before* a handle opened for writing touches the file, and
deletes it in the explicit close that makes the file whole, before the client gets its
answer. A handle that ends any other way (the session dropped, the server stopped it)
leaves its row marked cut off; after a crash every row still open is cut off too. So at
startup every file with a row is known not to be whole, whatever its age, and is never
processed as it is (:meth:`UploadJournal.recover`). A later upload of the same path that
ends with a close deletes the row again.

A file of its own beside the state database (``<data_dir>/state/uploads.db``), not a table
in it: SQLite has one writer at a time, and an epoch's apply holds the state database's
write lock for seconds (a million-row first apply about 5 s). An upload's open waits for
its journal row, and must not wait for another district's apply. Each write here is one
small transaction (about 0.4 ms with its fsync on this project's test machine).

Rows follow renames of their file (or of a directory holding it); while a rename runs,
its rows exist under both names, so a crash at any point leaves the file flagged wherever
it is. Paths are stored relative to the districts directory, so that the data volume may
be mounted elsewhere after a restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ingest.store.db import Database

JOURNAL_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE uploads (
        id         INTEGER PRIMARY KEY,
        district   TEXT NOT NULL,
        path       TEXT NOT NULL,
        session_id TEXT NOT NULL,
        opened_at  TEXT NOT NULL,
        cut_at     TEXT,
        size       INTEGER
    );
    CREATE INDEX uploads_by_path ON uploads (path);
    """,
)

# Rows for a path or anything below it, with the index: '0' sorts right after '/'.
_UNDER = "(path = ? OR (path >= ? AND path < ?))"


def _under(key: str) -> tuple[str, str, str]:
    return key, key + "/", key + "0"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class CutUpload:
    """A file whose last upload did not end with a close request."""

    district: str
    path: Path
    virtual: str  # as the district sees it
    size: int | None  # bytes its last handle wrote; None when the server died meanwhile


class UploadJournal:
    """Blocking; call from worker threads. :meth:`open` creates or upgrades the file."""

    def __init__(self, path: Path, districts_dir: Path) -> None:
        self.database = Database(f"sqlite:///{path}", migrations=JOURNAL_MIGRATIONS)
        # Resolved like the SFTP layer's chroots, whose real paths come in here.
        self.root = Path(os.path.realpath(districts_dir))

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def open(self) -> None:
        self.database.migrate()

    def begin(self, district: str, path: Path, session_id: str) -> int:
        with self.database.connect() as conn:
            cursor = conn.execute(
                "INSERT INTO uploads (district, path, session_id, opened_at) VALUES (?, ?, ?, ?)",
                (district, self._key(path), session_id, _now()),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def finished(self, intent: int, path: Path) -> None:
        """The handle was closed by the client with every byte written: the file is whole,
        including after earlier uploads of it that were cut off."""
        with self.database.connect() as conn:
            conn.execute(
                "DELETE FROM uploads WHERE id = ? OR (path = ? AND cut_at IS NOT NULL)",
                (intent, self._key(path)),
            )

    def cut(self, intent: int, size: int) -> None:
        """The handle ended without a close request; one cut row per path is enough."""
        with self.database.connect() as conn:
            conn.execute(
                "UPDATE uploads SET cut_at = ?, size = ? WHERE id = ?", (_now(), size, intent)
            )
            conn.execute(
                "DELETE FROM uploads WHERE cut_at IS NOT NULL AND id != ?"
                " AND path = (SELECT path FROM uploads WHERE id = ?)",
                (intent, intent),
            )

    def forget(self, intent: int) -> None:
        """The open failed: the file was not touched."""
        with self.database.connect() as conn:
            conn.execute("DELETE FROM uploads WHERE id = ?", (intent,))

    def rename_begin(self, old: Path, new: Path) -> list[int]:
        """Before renaming ``old`` to ``new``: copies of its rows under the new name."""
        with self.database.connect() as conn:
            rows = conn.execute(
                "INSERT INTO uploads (district, path, session_id, opened_at, cut_at, size)"
                " SELECT district, ? || substr(path, ?), session_id, opened_at, cut_at, size"
                f" FROM uploads WHERE {_UNDER} RETURNING id",
                (self._key(new), len(self._key(old)) + 1, *_under(self._key(old))),
            ).fetchall()
        return [row[0] for row in rows]

    def rename_end(self, old: Path, new: Path, copies: list[int], done: bool) -> None:
        """After the rename: when it was ``done``, what was cut off at ``new`` was replaced
        and the rows under ``old`` move to ``new``; either way the copies go."""
        marks = ", ".join("?" for _ in copies) or "NULL"
        with self.database.connect() as conn:
            conn.execute(f"DELETE FROM uploads WHERE id IN ({marks})", copies)
            if done:
                conn.execute(
                    f"DELETE FROM uploads WHERE cut_at IS NOT NULL AND {_UNDER}",
                    _under(self._key(new)),
                )
                conn.execute(
                    f"UPDATE uploads SET path = ? || substr(path, ?) WHERE {_UNDER}",
                    (self._key(new), len(self._key(old)) + 1, *_under(self._key(old))),
                )

    def removed(self, path: Path) -> None:
        with self.database.connect() as conn:
            conn.execute(
                "DELETE FROM uploads WHERE path = ? AND cut_at IS NOT NULL", (self._key(path),)
            )

    def recover(self) -> list[CutUpload]:
        """At startup, before any session: every row is a file that is not whole (one still
        open was cut off by the server's end). Rows of files that no longer exist go."""
        with self.database.connect() as conn:
            conn.execute("UPDATE uploads SET cut_at = ? WHERE cut_at IS NULL", (_now(),))
            rows = conn.execute("SELECT id, district, path, size FROM uploads ORDER BY id")
            found: dict[str, CutUpload] = {}
            gone = []
            for row in rows.fetchall():
                path = self.root / row["path"]
                if not path.exists():
                    gone.append((row["id"],))
                    continue
                virtual = "/" + row["path"].split("/", 1)[-1]
                found[row["path"]] = CutUpload(row["district"], path, virtual, row["size"])
            conn.executemany("DELETE FROM uploads WHERE id = ?", gone)
        return list(found.values())
