"""The state database's own machinery: background WAL checkpoints."""

from __future__ import annotations

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
