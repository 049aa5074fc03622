"""WAL checkpoints in a background thread of the daemon, not inside a commit.

By default SQLite copies the write-ahead log back into the database file (a checkpoint)
inside the COMMIT that makes the log exceed 1000 pages. After a large epoch that COMMIT
then also copied the ~750 MB a million-row first apply writes: 3.7 s of its 4-5 s
(docs/performance.md), in the epoch's time, while the accounts were already durable in
the log. The daemon's connections (``Database(..., background_checkpoints=True)``, also
in processing children) therefore never checkpoint; this thread does, every
``interval`` seconds, in PASSIVE mode: it copies what it can without waiting for or
blocking readers and writers, and the log is reused from its start once a checkpoint
has caught up. The admin CLI keeps SQLite's automatic checkpoints (a CLI process has no
such thread), so an admin command that writes right after a large epoch may do that
checkpoint in its own COMMIT; this thread's next round then finds nothing to do.
"""

from __future__ import annotations

import threading
import time

from ingest.logging import get_logger
from ingest.store.db import Database

# A checkpoint that copies at least this many pages (4 KiB each) is logged.
LOGGED_PAGES = 10_000


class Checkpointer:
    def __init__(self, database: Database, interval: float = 1.0) -> None:
        self.database = database
        self.interval = interval
        self.log = get_logger("ingest.store")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = (0, 0)  # the log's pages and the pages copied, at the last round

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then checkpoint once more so that the log is copied in full
        and truncated before the daemon exits; an admin command holding the database
        for more than 2 s leaves that to the next start (nothing is lost either way)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.checkpoint("TRUNCATE", wait_ms=2000)
        self.database.close_thread_connection()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self.checkpoint("PASSIVE")
        finally:
            self.database.close_thread_connection()

    def checkpoint(self, mode: str, wait_ms: int = 0) -> None:
        start = time.monotonic()
        try:
            busy, log_pages, done = self.database.checkpoint(mode, wait_ms)
        except Exception as exc:  # the thread must go on: nothing else checkpoints
            self.log.warning("database.checkpoint_failed", mode=mode, error=repr(exc))
            return
        if log_pages < 0:  # another connection was checkpointing: nothing was done
            return
        # SQLite counts the pages copied since the log last started over.
        last_log, last_done = self._last
        copied = done - last_done if log_pages >= last_log and done >= last_done else done
        self._last = (log_pages, done)
        if copied >= LOGGED_PAGES:
            self.log.info(
                "database.checkpoint",
                mode=mode,
                pages=copied,
                log_pages=log_pages,
                busy=bool(busy),
                duration=round(time.monotonic() - start, 3),
            )
