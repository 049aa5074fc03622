"""The state database's own machinery: background WAL checkpoints, the upload journal."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from structlog.testing import capture_logs

from ingest.store.checkpoint import Checkpointer
from ingest.store.db import Database


def test_commits_leave_the_log_to_the_checkpointer(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/state.db", background_checkpoints=True)
    database.migrate()
    other = sqlite3.connect(database.path)  # the daemon always has other connections open
    other.execute("SELECT COUNT(*) FROM sqlite_schema").fetchone()
    size = database.path.stat().st_size
    with database.connect() as conn:  # 12 MB: far beyond SQLite's 1000-page autocheckpoint
        conn.execute("CREATE TABLE blobs (b BLOB)")
        conn.executemany("INSERT INTO blobs VALUES (?)", [(bytes(4000),)] * 3000)
    assert database.path.stat().st_size == size  # committed, in the log only

    checkpointer = Checkpointer(database)
    checkpointer.checkpoint("PASSIVE")
    assert database.path.stat().st_size > size + 3000 * 4000
    checkpointer.stop()  # stopping copies the rest and truncates the log
    wal = database.path.with_name(database.path.name + "-wal")
    assert wal.stat().st_size == 0
    assert other.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 3000
    other.close()


def test_the_admin_cli_keeps_automatic_checkpoints(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/state.db")  # as the CLI opens it
    database.migrate()
    other = sqlite3.connect(database.path)
    other.execute("SELECT COUNT(*) FROM sqlite_schema").fetchone()
    size = database.path.stat().st_size
    with database.connect() as conn:
        conn.execute("CREATE TABLE blobs (b BLOB)")
        conn.executemany("INSERT INTO blobs VALUES (?)", [(bytes(4000),)] * 3000)
    assert database.path.stat().st_size > size + 3000 * 4000
    other.close()


class _Rounds(Database):
    """A database whose checkpoints answer from a script: (busy, log pages, copied)."""

    def __init__(self, rounds: list[tuple[int, int, int]], path: Path) -> None:
        super().__init__(f"sqlite:///{path}")
        self.rounds = rounds

    def checkpoint(self, mode: str = "PASSIVE", wait_ms: int = 30000) -> tuple[int, int, int]:
        return self.rounds.pop(0)


def test_a_busy_round_is_not_counted_as_a_checkpoint(tmp_path: Path) -> None:
    """SQLite answers (1, -1, -1) when another connection is checkpointing; the round
    after it must not log the pages of the round before it again."""
    rounds = [(0, 20_000, 20_000), (1, -1, -1), (0, 20_000, 20_000), (0, 5, 5)]
    checkpointer = Checkpointer(_Rounds(rounds, tmp_path / "state.db"))
    with capture_logs() as logs:
        for _ in range(4):
            checkpointer.checkpoint("PASSIVE")
    assert [(e["event"], e["pages"]) for e in logs] == [("database.checkpoint", 20_000)]


def test_upload_journal_records_what_is_not_whole(tmp_path: Path) -> None:
    from ingest.store.journal import UploadJournal

    root = tmp_path / "districts"
    epoch = root / "d" / "upload" / "20260101-000000"
    epoch.mkdir(parents=True)
    for name in ("users.csv", "staff.csv", "notes.csv.part"):
        (epoch / name).write_bytes(b"x")
    journal = UploadJournal(tmp_path / "uploads.db", root)
    journal.open()
    whole = journal.begin("d", epoch / "users.csv", "s1")
    journal.finished(whole, epoch / "users.csv")  # closed by the client: whole
    cut = journal.begin("d", epoch / "staff.csv", "s1")
    journal.cut(cut, 7)  # the session dropped
    again = journal.begin("d", epoch / "staff.csv", "s2")
    journal.cut(again, 9)  # cut off again: still one row for the file
    left_open = journal.begin("d", epoch / "notes.csv.part", "s3")  # open at the crash
    failed = journal.begin("d", epoch / "other.csv", "s3")
    journal.forget(failed)  # its open failed: nothing was touched
    # A rename in progress keeps the file flagged under both names...
    copies = journal.rename_begin(epoch / "notes.csv.part", epoch / "notes.csv")
    assert len(copies) == 1
    os.rename(epoch / "notes.csv.part", epoch / "notes.csv")
    # ...and once it is done, only under the new one (the open row follows: same id).
    journal.rename_end(epoch / "notes.csv.part", epoch / "notes.csv", copies, True)
    moved = root / "d" / "upload" / "20260102-000000"
    copies = journal.rename_begin(epoch, moved)  # a whole directory
    os.rename(epoch, moved)
    journal.rename_end(epoch, moved, copies, True)
    recovered = {c.virtual: c.size for c in journal.recover()}
    assert recovered == {
        "/upload/20260102-000000/staff.csv": 9,
        "/upload/20260102-000000/notes.csv": None,
    }
    assert {c.path for c in journal.recover()} == {moved / "staff.csv", moved / "notes.csv"}
    journal.finished(left_open, moved / "notes.csv")  # uploaded again, closed
    (moved / "staff.csv").unlink()
    journal.removed(moved / "staff.csv")
    assert journal.recover() == []
