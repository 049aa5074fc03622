"""Set-based apply: the validation pass classifies each row once; SQL does the rest.

Rows arrive in batches from the validator, in file order. For each batch one query
compares the rows with the district's accounts on a small covering index (e-mail, digest,
status) and returns only the rows that differ: a row whose digest equals its active
account's is unchanged and goes no further. Only rows that create, update, reactivate or
delete an account are staged with their values. Duplicate e-mails and Staff Ids are found
by :class:`~ingest.provisioning.repeats.RepeatFinder` (a bitmap and an array of hashes,
no per-row set); the e-mails themselves go to SQLite only for a full sync, which must know
every e-mail in the file. The hold check is a few COUNTs; creations are single
INSERT ... SELECT statements in key order; only changed rows come back to Python.

Why this shape (docs/performance.md): staging every row with all its values and joining
1M staged rows against 1M accounts cost 3-4 s per join, because SQLite walked one side
in key order and fetched the other at random.
"""

from __future__ import annotations

import json
import re
import sqlite3
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, NamedTuple

from ingest.provisioning.accounts import FIELDS as _FIELDS
from ingest.provisioning.repeats import RepeatFinder

# Rows per batch from the validator: one comparison query each, which binds two values
# per row (SQLite allows 32,766 per statement). Larger batches probe the index with better
# locality (5,000: 3.8 s per 1M rows, 20,000: 2.8 s); each holds about 12 MB of tuples.
BATCH = 16_000
# (line, email, first_name, last_name, middle_name, staff_id, title, roles, buildings, deleted)
StagedRow = tuple[int, str, str, str, str, str, str, str, str, int]
_COLS = ", ".join(_FIELDS)
_FEW = 10_000  # created accounts below which their change log is not read by a scan
# Page caches while an epoch is processed (KiB); larger ones measured no faster (the
# OS caches the files too) and cost RSS. Both are given back after the epoch, so an idle
# worker thread holds little.
MAIN_CACHE_KIB = 32 * 1024
TEMP_CACHE_KIB = 32 * 1024


def digest(values: tuple[str, ...]) -> int:
    """A 63-bit fingerprint of a row's values as the file has them (CRC-32 and Adler-32
    of their UTF-8), stored with the account: an equal fingerprint means the row changes
    nothing. Two checksums instead of a cryptographic hash because this runs once per
    row (0.3 us against 1.1 us for MD5); a collision would only delay an update to the
    account's next change. Taken before roles and buildings are tidied, so the hot path
    never tidies: the same file always gives the same fingerprint."""
    data = "\x1f".join(values).encode()
    return zlib.crc32(data) << 31 ^ zlib.adler32(data)


def tidy_roles(role: str) -> str:
    """Role names as stored: trimmed around the ``;`` separators."""
    return ";".join(r.strip() for r in role.split(";")) if role else ""


def tidy_buildings(buildings: str) -> str:
    """Building groups as stored: names trimmed, empty names dropped, one group per role."""
    if not buildings:
        return ""
    return ";".join(
        ",".join(name for name in (b.strip() for b in group.split(",")) if name)
        for group in buildings.split(";")
    )


# Anything tidying could change: a separator or a space at either end of a value, or two
# of them side by side (so also ";;" and "a  b", which tidying keeps: those values just
# take the slow way). Values are joined with NUL, which a valid file cannot contain. Two
# patterns that each start with a character class scan 3.5 times faster than one with
# anchors in alternatives.
_UNTIDY_PAIR_OR_END = re.compile(r"[\s,;](?:[\s,;\x00]|$)")
_UNTIDY_START = re.compile(r"\x00[\s,;]")


def all_tidy(values: list[str]) -> bool:
    """True when tidying would change none of ``values`` (roles or buildings): two
    searches over a whole batch instead of splitting and joining every row (that cost
    1.7 s per 1M created accounts; a search per row, 0.7 s; this, 0.2 s)."""
    joined = "\x00".join(values)
    return not (
        joined[:1].isspace()
        or joined[:1] in (",", ";")
        or _UNTIDY_PAIR_OR_END.search(joined)
        or _UNTIDY_START.search(joined)
    )


class Duplicate(NamedTuple):
    """A row whose key (or Staff Id) an earlier row already has: it is skipped."""

    line: int
    code: str  # key_duplicate or staff_id_duplicate
    column: str
    value: str
    first_line: int
    email: str


@lru_cache(maxsize=16)
def _comparison(rows: int) -> str:
    """The query that returns the rows of a batch that change something: no account
    (status NULL), another digest, or a deleted account; with each row's digest, so that
    two rows with one e-mail are told apart. Rows come sorted by e-mail, so SQLite walks
    the index in order (1.8 s per 1M rows against 2.4 s in file order). Padding rows
    (NULL) fill a batch up to one of a few sizes (``_padded``)."""
    return (
        "WITH v (email, digest) AS (VALUES "
        + ", ".join(["(?, ?)"] * rows)
        + ") SELECT v.email, v.digest, a.status FROM v LEFT JOIN accounts a INDEXED BY"
        " accounts_by_digest ON a.district = ? AND a.email = v.email"
        " WHERE v.email IS NOT NULL AND (a.digest IS NOT v.digest OR a.status IS NOT 'active')"
    )


def _padded(rows: int) -> int:
    """The comparison's size for a batch of ``rows``: BATCH, or a power of two. Each
    distinct size is another compiled statement of up to a few MB in the connection's
    statement cache, which lives as long as the connection (a worker thread's, for
    small epochs); with any size, every row count of every file would add one."""
    if rows > BATCH // 2:
        return BATCH
    return max(16, 1 << (rows - 1).bit_length())


class Stage:
    """One epoch's rows in TEMP tables of ``conn``. TEMP tables belong to the
    connection, so stages on different connections (the worker threads' own) never see
    each other. With ``district=None`` (offline validation) rows are only checked for
    duplicates: there is no account store to compare them with. ``size_hint`` is the
    file's size (it sizes the duplicate finders); ``full_sync`` keeps every e-mail of the
    file, which only a full sync needs."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        district: str | None,
        *,
        size_hint: int = 0,
        full_sync: bool = False,
    ) -> None:
        self.conn = conn
        self.district = district
        self.full_sync = full_sync
        self.emails = RepeatFinder(conn, "email_keys", size_hint)
        self.staff_ids = RepeatFinder(conn, "staff_id_keys", size_hint)
        self._kept: list[tuple[str]] = []
        conn.execute(f"PRAGMA main.cache_size = -{MAIN_CACHE_KIB}")
        conn.execute(f"PRAGMA temp.cache_size = -{TEMP_CACHE_KIB}")
        for table in ("seen", "staged", "kept"):
            conn.execute(f"DROP TABLE IF EXISTS temp.{table}")
        conn.execute("CREATE TEMP TABLE seen (email TEXT NOT NULL)")  # full sync only
        # action: create, update (also reactivates a deleted account) or delete
        conn.execute(
            "CREATE TEMP TABLE staged (line INTEGER PRIMARY KEY, email TEXT NOT NULL,"
            f" action TEXT NOT NULL, {_COLS}, digest INTEGER NOT NULL)"
        )
        conn.execute("CREATE TEMP TABLE kept (email TEXT PRIMARY KEY) WITHOUT ROWID")
        # A district's first epoch has nothing to compare with (a district's epochs are
        # processed one at a time, so none can add accounts meanwhile): every row is a
        # creation.
        self._has_accounts = district is not None and bool(
            conn.execute(
                "SELECT EXISTS (SELECT 1 FROM accounts WHERE district = ?)", (district,)
            ).fetchone()[0]
        )

    @classmethod
    @contextmanager
    def private(cls, size_hint: int = 0) -> Iterator[Stage]:
        """A stage on a throwaway temporary database (offline validation)."""
        conn = sqlite3.connect("", isolation_level=None)
        try:
            conn.execute("BEGIN")
            yield cls(conn, None, size_hint=size_hint)
        finally:
            conn.close()

    def release(self) -> None:
        """Give back the TEMP tables and page caches, keeping the connection (see
        ``ProvisioningProcessor.prepare`` for when it is closed instead)."""
        for table in ("seen", "staged", "kept", "updates", "email_keys", "staff_id_keys"):
            self.conn.execute(f"DROP TABLE IF EXISTS temp.{table}")
        self.conn.execute("PRAGMA main.cache_size = -2000")
        self.conn.execute("PRAGMA temp.cache_size = -2000")
        self.conn.execute("PRAGMA shrink_memory")

    # --- rows ----------------------------------------------------------------------------

    def add_many(self, rows: list[StagedRow]) -> None:
        """Valid rows, in file order, at most BATCH: keys always; values only when they
        change an account."""
        if not rows:
            return
        if len(rows) > BATCH:
            raise ValueError(f"at most {BATCH} rows at a time, not {len(rows)}")
        lines = [r[0] for r in rows]
        emails = [r[1] for r in rows]
        self.emails.add(zip(lines, emails, emails, strict=True))
        self.staff_ids.add(zip(lines, [r[5] for r in rows], emails, strict=True))
        if self.district is None:
            return
        conn = self.conn
        if self.full_sync:
            conn.executemany("INSERT INTO seen VALUES (?)", [(e,) for e in emails])
        # A row marked Deleted has no digest (-1 matches none): it deletes an active
        # account, else changes nothing.
        digests = [-1 if r[9] else digest(r[2:9]) for r in rows]
        if self._has_accounts:
            order = sorted(range(len(rows)), key=emails.__getitem__)
            size = _padded(len(rows))
            params: list[object] = [None] * (2 * size)
            params[0 : 2 * len(rows) : 2] = [emails[i] for i in order]
            params[1 : 2 * len(rows) : 2] = [digests[i] for i in order]
            params.append(self.district)
            changing = {
                (email, fingerprint): status
                for email, fingerprint, status in conn.execute(_comparison(size), params)
            }
        else:
            changing = dict.fromkeys(zip(emails, digests, strict=True))
        if not changing:
            return
        staged = []
        for row, fingerprint in zip(rows, digests, strict=True):
            key = (row[1], fingerprint)
            if key not in changing:
                continue
            status = changing[key]
            if row[9]:
                if status == "active":
                    staged.append((row[0], row[1], "delete", *row[2:7], "", "", 0))
                continue
            action = "create" if status is None else "update"
            staged.append((row[0], row[1], action, *row[2:9], fingerprint))
        roles, buildings = [r[8] for r in staged], [r[9] for r in staged]
        if not (all_tidy(roles) and all_tidy(buildings)):
            staged = [(*r[:8], tidy_roles(r[8]), tidy_buildings(r[9]), r[10]) for r in staged]
        if staged:
            marks = ", ".join("?" * (len(_FIELDS) + 4))
            conn.executemany(f"INSERT INTO staged VALUES ({marks})", staged)

    def keep(self, email: str) -> None:
        """The e-mail of a row skipped for errors: a full sync must not delete it."""
        self._kept.append((email,))
        if len(self._kept) >= BATCH:
            self._flush_kept()

    def _flush_kept(self) -> None:
        self.conn.executemany("INSERT OR IGNORE INTO kept VALUES (?)", self._kept)
        self._kept.clear()

    def duplicates(self) -> list[Duplicate]:
        """The rows whose e-mail, then whose Staff Id, an earlier row has (the earlier
        row stays), unstaged; called once, after the last row. A row skipped for its
        e-mail does not count for the Staff Id check."""
        found = [
            Duplicate(r.line, "key_duplicate", "Email", r.key, r.first_line, r.tag)
            for r in self.emails.repeats()
        ]
        found += [
            Duplicate(r.line, "staff_id_duplicate", "Staff Id", r.key, r.first_line, r.tag)
            for r in self.staff_ids.repeats(ignore={d.line for d in found})
        ]
        self.conn.executemany("DELETE FROM staged WHERE line = ?", [(d.line,) for d in found])
        return sorted(found)

    # --- the hold check ---------------------------------------------------------------

    def active_count(self) -> int:
        return int(
            self.conn.execute(
                "SELECT COUNT(*) FROM accounts WHERE district = ? AND status = 'active'",
                (self.district,),
            ).fetchone()[0]
        )

    def _deleting_query(self, full_sync: bool) -> str:
        marked = "SELECT email FROM staged WHERE action = 'delete'"
        if not full_sync:
            return marked
        if not self.full_sync:
            raise RuntimeError("this stage did not keep the file's e-mails for a full sync")
        return marked + (
            " UNION ALL SELECT a.email FROM accounts a WHERE a.district = :d AND"
            " a.status = 'active' AND a.email NOT IN (SELECT email FROM seen)"
            " AND a.email NOT IN (SELECT email FROM kept)"
        )

    def deleting(self, full_sync: bool, limit: int | None = None) -> tuple[int, list[str]]:
        """How many active accounts this epoch deletes, and the first ``limit`` of them."""
        self._flush_kept()
        query = self._deleting_query(full_sync)
        count = self.conn.execute(
            f"SELECT COUNT(*) FROM ({query})", {"d": self.district}
        ).fetchone()[0]
        listed = (
            []
            if limit is None
            else [
                r[0]
                for r in self.conn.execute(
                    f"{query} ORDER BY 1 LIMIT {int(limit)}", {"d": self.district}
                )
            ]
        )
        return int(count), listed

    # --- applying -----------------------------------------------------------------------

    def _update(
        self, changed: list[tuple[Any, ...]], params: dict[str, Any], counts: dict[str, int]
    ) -> None:
        """Update the accounts of ``changed`` rows (rowid, email, status, the account's
        fields, the row's fields, digest) and log what changed."""
        n = len(_FIELDS)
        d, epoch, now = params["d"], params["e"], params["now"]
        logs, updates = [], []
        for row in changed:
            old = dict(zip(_FIELDS, row[3 : 3 + n], strict=True))
            new = dict(zip(_FIELDS, row[3 + n : 3 + 2 * n], strict=True))
            diff_old = {k: v for k, v in old.items() if new[k] != v}
            action = "reactivated" if row[2] == "deleted" else "updated" if diff_old else ""
            if action:  # else only the stored digest was stale (an account from before it)
                logs.append(
                    (
                        d,
                        epoch,
                        row[1],
                        action,
                        json.dumps(diff_old),
                        json.dumps({k: new[k] for k in diff_old}),
                        now,
                    )
                )
                counts[action] += 1
            updates.append((*new.values(), row[-1], now, epoch, d, row[1]))
        self.conn.executemany(
            "INSERT INTO account_changes (district, epoch, email, action, before, after, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            logs,
        )
        self.conn.executemany(
            f"UPDATE accounts SET {', '.join(f + ' = ?' for f in _FIELDS)}, digest = ?,"
            " status = 'active', deleted_at = NULL, updated_at = ?, epoch = ?"
            " WHERE district = ? AND email = ?",
            updates,
        )

    def apply(self, epoch: str, now: str, full_sync: bool, valid_rows: int) -> dict[str, int]:
        """Apply the staged rows (and, for a full sync, the absences); returns the counts.
        ``valid_rows`` is the number of rows that were not skipped."""
        conn, d = self.conn, self.district
        params = {"d": d, "e": epoch, "now": now}
        counts = {"created": 0, "updated": 0, "deleted": 0, "reactivated": 0, "unchanged": 0}
        # Deletions first, while "active" still means before this epoch.
        deleting = self._deleting_query(full_sync)
        marked = conn.execute("SELECT COUNT(*) FROM staged WHERE action = 'delete'").fetchone()[0]
        conn.execute(
            "INSERT INTO account_changes (district, epoch, email, action, before, after, at)"
            f" SELECT :d, :e, email, 'deleted', '{{\"status\": \"active\"}}',"
            f' \'{{"status": "deleted"}}\', :now FROM ({deleting})',
            params,
        )
        counts["deleted"] = conn.execute(
            "UPDATE accounts SET status = 'deleted', deleted_at = :now, updated_at = :now,"
            f" epoch = :e WHERE district = :d AND email IN ({deleting})",
            params,
        ).rowcount
        # Rows that change an existing account, diffed in Python BATCH rows at a time, so
        # that a file that changes every account does not bring them all into memory.
        # First copied in key order, so that reading the accounts, updating them and
        # logging the changes all walk their B-trees in order: in file order, a file that
        # changed 1M accounts took 45 s here.
        conn.execute("DROP TABLE IF EXISTS temp.updates")
        conn.execute(
            f"CREATE TEMP TABLE updates AS SELECT email, {_COLS}, digest FROM staged"
            " WHERE action = 'update' ORDER BY email"
        )
        after = 0
        while True:
            changed = conn.execute(
                f"SELECT u.rowid, u.email, a.status, {', '.join('a.' + f for f in _FIELDS)},"
                f" {', '.join('u.' + f for f in _FIELDS)}, u.digest FROM updates u JOIN"
                " accounts a ON a.district = :d AND a.email = u.email"
                f" WHERE u.rowid > :after ORDER BY u.rowid LIMIT {BATCH}",
                {**params, "after": after},
            ).fetchall()
            if not changed:
                break
            after = changed[-1][0]
            self._update(changed, params, counts)
        # New accounts, in key order so the B-trees grow at their ends; then their
        # change-log rows, read back in key order from the accounts just created: a scan
        # of the district when there are many (cheaper than sorting the staged rows a
        # second time), a lookup per account when there are few. A creation's log row
        # has no after-image: accounts.history derives it (it was 200 MB per 1M rows).
        counts["created"] = conn.execute(
            f"INSERT INTO accounts (district, email, {_COLS}, digest, status, created_at,"
            f" updated_at, epoch) SELECT :d, s.email, {', '.join('s.' + f for f in _FIELDS)},"
            " s.digest, 'active', :now, :now, :e FROM staged s WHERE s.action = 'create'"
            " ORDER BY s.email",
            params,
        ).rowcount
        if counts["created"]:
            conn.execute(
                "INSERT INTO account_changes (district, epoch, email, action, before, after,"
                " at) SELECT :d, :e, s.email, 'created', NULL, NULL, :now FROM accounts s"
                " WHERE s.district = :d AND s.epoch = :e AND s.created_at = :now"
                + (
                    ""
                    if counts["created"] > _FEW
                    else " AND s.email IN (SELECT email FROM staged WHERE action = 'create')"
                ),
                params,
            )
        counts["unchanged"] = (
            valid_rows - counts["created"] - counts["updated"] - counts["reactivated"] - marked
        )
        return counts
