"""SQLite access with forward-only schema migrations.

Each thread keeps one connection. The server, its processing children and the admin CLI
are separate processes writing the same file; WAL mode plus a busy timeout lets them do
so while the daemon runs. Callers on the event loop must use a worker thread; every
method here blocks.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from ingest.config import ConfigError

# Each entry upgrades the schema by one version; never edit a shipped entry, append.
STATE_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE districts (
        name          TEXT PRIMARY KEY,
        password_hash TEXT,
        enabled       INTEGER NOT NULL DEFAULT 1,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL
    );
    CREATE TABLE district_keys (
        district    TEXT NOT NULL REFERENCES districts(name) ON DELETE CASCADE,
        fingerprint TEXT NOT NULL,
        algorithm   TEXT NOT NULL,
        public_key  TEXT NOT NULL,
        comment     TEXT NOT NULL DEFAULT '',
        added_at    TEXT NOT NULL,
        PRIMARY KEY (district, fingerprint)
    );
    """,
    """
    CREATE TABLE epochs (
        district     TEXT NOT NULL,
        name         TEXT NOT NULL,
        state        TEXT NOT NULL,
        origin       TEXT NOT NULL,
        received_at  TEXT NOT NULL,
        claimed_at   TEXT,
        finished_at  TEXT,
        published_at TEXT,
        attempts     INTEGER NOT NULL DEFAULT 0,
        files        TEXT NOT NULL DEFAULT '[]',
        warnings     TEXT NOT NULL DEFAULT '[]',
        outcome      TEXT,
        PRIMARY KEY (district, name)
    );
    CREATE INDEX epochs_by_state ON epochs (state);
    """,
    """
    CREATE TABLE incomplete_uploads (
        path     TEXT PRIMARY KEY,
        district TEXT NOT NULL,
        size     INTEGER NOT NULL,
        at       TEXT NOT NULL
    );
    """,
    """
    ALTER TABLE epochs ADD COLUMN approved INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE district_settings (
        district  TEXT PRIMARY KEY,
        mode      TEXT NOT NULL DEFAULT 'upsert',
        buildings TEXT
    );
    CREATE TABLE accounts (
        district    TEXT NOT NULL,
        email       TEXT NOT NULL,
        first_name  TEXT NOT NULL,
        last_name   TEXT NOT NULL,
        middle_name TEXT NOT NULL DEFAULT '',
        staff_id    TEXT NOT NULL DEFAULT '',
        title       TEXT NOT NULL DEFAULT '',
        assignments TEXT NOT NULL DEFAULT '[]',
        status      TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        deleted_at  TEXT,
        epoch       TEXT NOT NULL,
        PRIMARY KEY (district, email)
    ) WITHOUT ROWID;
    CREATE TABLE account_changes (
        id       INTEGER PRIMARY KEY,
        district TEXT NOT NULL,
        epoch    TEXT NOT NULL,
        email    TEXT NOT NULL,
        action   TEXT NOT NULL,
        before   TEXT,
        after    TEXT,
        at       TEXT NOT NULL
    );
    CREATE INDEX account_changes_by_account ON account_changes (district, email, id);
    """,
    # Role/building assignments in the CSV API's own syntax instead of JSON (building the
    # JSON cost more per row than validating it), and a digest of the values with a
    # covering index, so that an unchanged row is recognised without reading the
    # account (docs/performance.md). Digests start at 0: the first apply refreshes them.
    # char(59) is ';', which this runner cannot take literally (it splits on it).
    """
    ALTER TABLE accounts ADD COLUMN roles TEXT NOT NULL DEFAULT '';
    ALTER TABLE accounts ADD COLUMN buildings TEXT NOT NULL DEFAULT '';
    UPDATE accounts SET
        roles = (SELECT group_concat(json_extract(a.value, '$[0]'), char(59))
                 FROM json_each(accounts.assignments) AS a),
        buildings = (SELECT group_concat(
                        coalesce((SELECT group_concat(b.value, ',')
                                  FROM json_each(a.value, '$[1]') AS b), ''), char(59))
                     FROM json_each(accounts.assignments) AS a)
    WHERE assignments != '[]';
    ALTER TABLE accounts DROP COLUMN assignments;
    ALTER TABLE accounts ADD COLUMN digest INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX accounts_by_digest ON accounts (district, email, digest, status);
    """,
    # Cut-off uploads are recorded by the SFTP layer's upload journal (its own file,
    # ingest/store/journal.py) from here on. The daemon's next start moves the rows left
    # here into it (UploadJournal.adopt) and empties this table.
    """
    ALTER TABLE incomplete_uploads RENAME TO legacy_incomplete_uploads;
    """,
    # Operators' remedies for epoch order (ingest epochs retire / force-apply): a retired
    # epoch no longer counts as the newest applied one; a forced one is applied although
    # a newer one was.
    """
    ALTER TABLE epochs ADD COLUMN retired_at TEXT;
    ALTER TABLE epochs ADD COLUMN forced_at TEXT;
    """,
    # The defender's bans (ingest/store/bans.py), shared by the daemon and `ingest bans`.
    """
    CREATE TABLE bans (
        source     TEXT PRIMARY KEY,
        until      REAL NOT NULL,
        reason     TEXT NOT NULL,
        count      INTEGER NOT NULL DEFAULT 1,
        created_at TEXT NOT NULL
    );
    """,
    # Where a district may log in from: comma-separated CIDR networks, '' = anywhere.
    """
    ALTER TABLE districts ADD COLUMN allowed_sources TEXT NOT NULL DEFAULT '';
    """,
    # Addresses that logged in successfully (ingest/store/sources.py): known after a
    # restart too, so that a flood of strangers does not keep their districts out.
    """
    CREATE TABLE known_sources (
        address    TEXT PRIMARY KEY,
        last_login REAL NOT NULL
    );
    """,
    # Who did what to an epoch, and when (approve, discard, reprocess, retire,
    # force-apply): a JSON list of {"action", "by", "at"}, shown in the epoch's report.
    """
    ALTER TABLE epochs ADD COLUMN actions TEXT NOT NULL DEFAULT '[]';
    """,
    # An epoch's changes, for its changes.csv (ingest/provisioning/changes.py).
    """
    CREATE INDEX account_changes_by_epoch ON account_changes (district, epoch);
    """,
)


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative/path`` or ``sqlite:////absolute/path`` to a Path."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigError(f"database.url: expected sqlite:///path/to/file.db, got {url!r}")
    return Path(url[len(prefix) :])


class Database:
    """The state database at ``url``; :meth:`migrate` creates or upgrades it with
    ``migrations`` (the state schema unless another is given, as the upload journal does)."""

    def __init__(
        self,
        url: str,
        *,
        background_checkpoints: bool = False,
        migrations: tuple[str, ...] = STATE_MIGRATIONS,
        busy_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self.migrations = migrations
        # How long a statement waits for another connection's write lock before failing.
        self.busy_timeout = busy_timeout
        # True in the daemon, whose Checkpointer copies the log back (see checkpoint.py)
        self.background_checkpoints = background_checkpoints
        self._local = threading.local()

    def _thread_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # mode=rw: never create the file here (only migrate() does). A database
            # deleted under a running daemon must stay gone, not come back empty.
            conn = sqlite3.connect(
                f"file:{quote(str(self.path))}?mode=rw",
                uri=True,
                timeout=self.busy_timeout,
                isolation_level=None,
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if self.background_checkpoints:
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._local.conn = conn
        return conn

    def close_thread_connection(self) -> None:
        """Close this thread's connection (the next use opens a new one). Its TEMP
        database goes with it in one step: dropping an epoch's million-row TEMP tables
        one page at a time took 0.4-1.1 s."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()

    def checkpoint(self, mode: str = "PASSIVE", wait_ms: int = 30000) -> tuple[int, int, int]:
        """Copy the write-ahead log into the database file: (busy, pages in the log,
        pages copied since the log started over); see ingest/store/checkpoint.py. The
        modes other than PASSIVE wait up to ``wait_ms`` for other connections."""
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise ValueError(f"unknown checkpoint mode {mode!r}")
        conn = self._thread_connection()
        conn.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
        try:
            row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        return int(row[0]), int(row[1]), int(row[2])

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read-only snapshot: a deferred transaction takes no write lock, so logins and
        status queries never wait for a long write (WAL readers see the last commit)."""
        conn = self._thread_connection()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("ROLLBACK")

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A deferred transaction that commits: its reads see one snapshot, and what it
        writes to TEMP tables survives it. It must not write to the main database (that
        would take the write lock, which is what it is for not holding: see
        ``Processor.prepare``)."""
        with self._transaction("BEGIN") as conn:
            yield conn

    @contextmanager
    def connect(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A connection inside one transaction: committed on success, rolled back on error.

        Each thread keeps one open connection to the file (a sqlite3 connection belongs to
        the thread that made it): opening one per transaction cost more than the
        transaction itself on the hot path of the epoch layer.

        ``durable=False``: the commit is not synced to disk before this returns, so a power
        cut (never a crash of the process) may undo it; for writes whose loss errs on the
        safe side (see ingest/store/journal.py), at a fraction of the cost.
        """
        synchronous = "FULL" if durable else "NORMAL"
        with self._transaction("BEGIN IMMEDIATE", synchronous) as conn:
            yield conn

    @contextmanager
    def _transaction(self, begin: str, synchronous: str = "FULL") -> Iterator[sqlite3.Connection]:
        conn = self._thread_connection()
        conn.execute(f"PRAGMA synchronous = {synchronous}")  # outside a transaction only
        conn.execute(begin)
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # also after a failed COMMIT: the connection is reused
                conn.execute("ROLLBACK")
            raise

    def migrate(self, districts_dir: Path | None = None) -> int:
        """Create the file if needed and apply pending migrations; returns the version.

        ``districts_dir``: a state database is only created where no district exists on
        disk yet. Districts without it mean the database was lost (deleted, or a volume
        mounted without it): an empty new one would silently forget every district,
        account and epoch, so that is refused with what to do instead.
        """
        lost = (
            districts_dir is not None
            and not self.path.exists()
            and districts_dir.is_dir()
            and any(entry.is_dir() for entry in districts_dir.iterdir())
        )
        if lost:
            raise ConfigError(
                f"database.url: {self.path} does not exist, but {districts_dir} holds "
                "districts: the state database was lost. Restore it from a backup (see "
                "docs/operations.md); to start anew on purpose, move the districts "
                "directory away first"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            # WAL lets the CLI write while the server reads; it is a property of the file.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(self.migrations):
                conn.execute("ROLLBACK")
                raise ConfigError(
                    f"database.url: {self.path} has schema version {version}, newer than this "
                    f"ingest ({len(self.migrations)}); upgrade ingest"
                )
            for number, script in enumerate(self.migrations[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
            return len(self.migrations)
        finally:
            conn.close()
