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
small transaction (about 0.4 ms with its fsync on this project's test machine); only the
daemon writes here, so a lock is never held for long, and one held anyway (someone's
``sqlite3`` shell) fails an upload after ``BUSY_TIMEOUT`` instead of stalling the SFTP
layer's I/O threads for half a minute.

Only two writes must reach the disk before the daemon goes on, and only they pay for a
synced commit: ``begin`` (a file must never be touched before its row is durable) and
``rename_begin`` (a cut-off file must never reach its new name without its row). Every
other write only ever takes a row away or marks one cut off; if a power cut undoes it,
the file is flagged as not whole and the district uploads it again, which is safe. (A
``kill -9`` loses nothing either way: committed is committed for the next process.) The
close deletes its row only after the file's data is synced (``fs.py``), so a deletion
that survives a power cut never speaks for bytes that did not.

A close clears what was cut off at its path only if it was cut off before the closing
handle was opened (``cut_mark``, the highest row id when the cut was recorded, is below
the handle's id): a cut by another handle while this one was open leaves the file not
whole.

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
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        district   TEXT NOT NULL,
        path       TEXT NOT NULL,
        session_id TEXT NOT NULL,
        opened_at  TEXT NOT NULL,
        cut_at     TEXT,
        cut_mark   INTEGER,
        size       INTEGER
    );
    CREATE INDEX uploads_by_path ON uploads (path);
    """,
)

# Rows for a path or anything below it, with the index: '0' sorts right after '/'.
_UNDER = "(path = ? OR (path >= ? AND path < ?))"
# The highest row id ever given: a cut is recorded with it (see the module docstring).
_LAST_ID = "(SELECT seq FROM sqlite_sequence WHERE name = 'uploads')"
BUSY_TIMEOUT = 2.0  # seconds


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
        self.database = Database(
            f"sqlite:///{path}", migrations=JOURNAL_MIGRATIONS, busy_timeout=BUSY_TIMEOUT
        )
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
        including after earlier uploads of it that were cut off before it opened."""
        with self.database.connect(durable=False) as conn:
            conn.execute(
                "DELETE FROM uploads WHERE id = ?"
                " OR (path = ? AND cut_at IS NOT NULL AND cut_mark < ?)",
                (intent, self._key(path), intent),
            )

    def cut(self, intent: int, size: int) -> None:
        """The handle ended without a close request; one cut row per path is enough."""
        with self.database.connect(durable=False) as conn:
            conn.execute(
                f"UPDATE uploads SET cut_at = ?, cut_mark = {_LAST_ID}, size = ? WHERE id = ?",
                (_now(), size, intent),
            )
            conn.execute(
                "DELETE FROM uploads WHERE cut_at IS NOT NULL AND id != ?"
                " AND path = (SELECT path FROM uploads WHERE id = ?)",
                (intent, intent),
            )

    def forget(self, intent: int) -> None:
        """The open failed: the file was not touched."""
        with self.database.connect(durable=False) as conn:
            conn.execute("DELETE FROM uploads WHERE id = ?", (intent,))

    def rename_begin(self, old: Path, new: Path) -> list[int]:
        """Before renaming ``old`` to ``new``: copies of its rows under the new name."""
        with self.database.connect() as conn:
            rows = conn.execute(
                "INSERT INTO uploads"
                " (district, path, session_id, opened_at, cut_at, cut_mark, size)"
                " SELECT district, ? || substr(path, ?), session_id, opened_at, cut_at,"
                f" cut_mark, size FROM uploads WHERE {_UNDER} RETURNING id",
                (self._key(new), len(self._key(old)) + 1, *_under(self._key(old))),
            ).fetchall()
        return [row[0] for row in rows]

    def rename_end(self, old: Path, new: Path, copies: list[int], done: bool) -> None:
        """After the rename: when it was ``done``, what was cut off at ``new`` was replaced
        and the rows under ``old`` move to ``new``; either way the copies go."""
        marks = ", ".join("?" for _ in copies) or "NULL"
        with self.database.connect(durable=False) as conn:
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
        with self.database.connect(durable=False) as conn:
            conn.execute(
                "DELETE FROM uploads WHERE path = ? AND cut_at IS NOT NULL", (self._key(path),)
            )

    def recover(self) -> list[CutUpload]:
        """At startup, before any session: every row is a file that is not whole (one still
        open was cut off by the server's end). Rows of files that no longer exist go."""
        with self.database.connect() as conn:
            conn.execute(
                f"UPDATE uploads SET cut_at = ?, cut_mark = {_LAST_ID} WHERE cut_at IS NULL",
                (_now(),),
            )
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

    def adopt(self, state: Database) -> int:
        """Once, after the upgrade that introduced this journal: the cut-off files the
        state database recorded before (its ``legacy_incomplete_uploads`` table) become
        rows here, then leave that table. Returns how many."""
        with state.read() as conn:
            exists = conn.execute(
                "SELECT 1 FROM sqlite_schema WHERE name = 'legacy_incomplete_uploads'"
            ).fetchone()
            rows = (
                conn.execute(
                    "SELECT path, district, size FROM legacy_incomplete_uploads"
                ).fetchall()
                if exists
                else []
            )
        adopted = [
            (row["district"], self._key(Path(row["path"])), row["size"])
            for row in rows
            if Path(row["path"]).is_relative_to(self.root)
        ]
        if adopted:
            with self.database.connect() as conn:
                now = _now()
                for district, key, size in adopted:
                    cursor = conn.execute(
                        "INSERT INTO uploads (district, path, session_id, opened_at, cut_at,"
                        " size) VALUES (?, ?, '', ?, ?, ?)",
                        (district, key, now, now, size),
                    )
                    conn.execute(
                        "UPDATE uploads SET cut_mark = id WHERE id = ?", (cursor.lastrowid,)
                    )
        if rows:  # a crash before this only adopts them once more
            with state.connect() as conn:
                conn.execute("DELETE FROM legacy_incomplete_uploads")
        return len(adopted)
