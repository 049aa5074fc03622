"""Set-based apply: one validation pass stages the valid rows, SQL does the rest.

Validating twice (once to decide a hold before anything is written, once to apply) and
one SELECT per row made a 1M-row apply take ~47 s (docs/performance.md). Here the rows go
once into a TEMP table in batches; the hold check is a few COUNTs; creations and
deletions are single INSERT ... SELECT / UPDATE statements; only rows that really change
come back to Python. Same semantics as the per-row ``Applier``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from ingest.provisioning.accounts import FIELDS as _FIELDS
from ingest.provisioning.accounts import row_values
from ingest.provisioning.csvapi import UserRow

BATCH = 5000
_COLS = ", ".join(_FIELDS)
_CHANGED = " OR ".join(f"a.{f} IS NOT s.{f}" for f in _FIELDS)
_AFTER = "json_object(" + ", ".join(f"'{f}', s.{f}" for f in _FIELDS) + ")"


class Stage:
    """The epoch's valid rows in a TEMP table of this connection, plus skipped e-mails."""

    def __init__(self, conn: sqlite3.Connection, district: str) -> None:
        self.conn = conn
        self.district = district
        self._batch: list[tuple[object, ...]] = []
        conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS staged (email TEXT PRIMARY KEY, {_COLS},"
            " deleted INTEGER NOT NULL) WITHOUT ROWID"
        )
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS kept (email TEXT PRIMARY KEY) WITHOUT ROWID")
        conn.execute("DELETE FROM staged")
        conn.execute("DELETE FROM kept")

    def add(self, row: UserRow) -> None:
        self._batch.append((row.email, *row_values(row).values(), int(row.deleted)))
        if len(self._batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self._batch:
            marks = ", ".join("?" for _ in range(len(_FIELDS) + 2))
            self.conn.executemany(f"INSERT INTO staged VALUES ({marks})", self._batch)
            self._batch.clear()

    def keep(self, emails: Iterable[str]) -> None:
        """E-mails of rows skipped for errors: a full sync must not delete them."""
        self.conn.executemany("INSERT OR IGNORE INTO kept VALUES (?)", [(e,) for e in emails])

    # --- the hold check ---------------------------------------------------------------

    def active_count(self) -> int:
        return int(
            self.conn.execute(
                "SELECT COUNT(*) FROM accounts WHERE district = ? AND status = 'active'",
                (self.district,),
            ).fetchone()[0]
        )

    def _deleting_query(self, full_sync: bool) -> str:
        marked = (
            "SELECT a.email FROM staged s JOIN accounts a ON a.district = :d AND"
            " a.email = s.email WHERE s.deleted = 1 AND a.status = 'active'"
        )
        if not full_sync:
            return marked
        return marked + (
            " UNION SELECT a.email FROM accounts a WHERE a.district = :d AND"
            " a.status = 'active' AND a.email NOT IN (SELECT email FROM staged)"
            " AND a.email NOT IN (SELECT email FROM kept)"
        )

    def deleting(self, full_sync: bool, limit: int | None = None) -> tuple[int, list[str]]:
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

    def apply(self, epoch: str, now: str, full_sync: bool) -> dict[str, int]:
        conn, d = self.conn, self.district
        counts = {"created": 0, "updated": 0, "deleted": 0, "reactivated": 0, "unchanged": 0}
        staged_live = conn.execute("SELECT COUNT(*) FROM staged WHERE deleted = 0").fetchone()[0]
        staged_marked = conn.execute("SELECT COUNT(*) FROM staged WHERE deleted = 1").fetchone()[0]
        marked_active, _ = self.deleting(full_sync=False)  # rows marked Deleted that delete
        # Deletions first, while "active" still means before this epoch.
        deleting = self._deleting_query(full_sync)
        conn.execute(
            "INSERT INTO account_changes (district, epoch, email, action, before, after, at)"
            f" SELECT :d, :e, email, 'deleted', '{{\"status\": \"active\"}}',"
            f' \'{{"status": "deleted"}}\', :now FROM ({deleting})',
            {"d": d, "e": epoch, "now": now},
        )
        counts["deleted"] = conn.execute(
            "UPDATE accounts SET status = 'deleted', deleted_at = :now, updated_at = :now,"
            f" epoch = :e WHERE district = :d AND email IN ({deleting})",
            {"d": d, "e": epoch, "now": now},
        ).rowcount
        # Rows that change an existing account: few, so diffed in Python.
        changed = conn.execute(
            f"SELECT s.email, a.status, {', '.join('a.' + f for f in _FIELDS)},"
            f" {', '.join('s.' + f for f in _FIELDS)} FROM staged s JOIN accounts a"
            f" ON a.district = ? AND a.email = s.email WHERE s.deleted = 0"
            f" AND (a.status = 'deleted' OR {_CHANGED})",
            (d,),
        ).fetchall()
        n = len(_FIELDS)
        logs, updates = [], []
        for row in changed:
            old = dict(zip(_FIELDS, row[2 : 2 + n], strict=True))
            new = dict(zip(_FIELDS, row[2 + n :], strict=True))
            action = "reactivated" if row[1] == "deleted" else "updated"
            diff_old = {k: v for k, v in old.items() if new[k] != v}
            logs.append(
                (
                    d,
                    epoch,
                    row[0],
                    action,
                    json.dumps(diff_old),
                    json.dumps({k: new[k] for k in diff_old}),
                    now,
                )
            )
            updates.append((*new.values(), now, epoch, d, row[0]))
            counts[action] += 1
        conn.executemany(
            "INSERT INTO account_changes (district, epoch, email, action, before, after, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            logs,
        )
        conn.executemany(
            "UPDATE accounts SET first_name = ?, last_name = ?, middle_name = ?, staff_id = ?,"
            " title = ?, assignments = ?, status = 'active', deleted_at = NULL,"
            " updated_at = ?, epoch = ? WHERE district = ? AND email = ?",
            updates,
        )
        # New accounts, in key order so the B-tree grows at its end.
        new_rows = (
            "FROM staged s WHERE s.deleted = 0 AND NOT EXISTS (SELECT 1 FROM accounts"
            " a WHERE a.district = :d AND a.email = s.email)"
        )
        conn.execute(
            "INSERT INTO account_changes (district, epoch, email, action, before, after, at)"
            f" SELECT :d, :e, s.email, 'created', NULL, {_AFTER}, :now {new_rows}"
            " ORDER BY s.email",
            {"d": d, "e": epoch, "now": now},
        )
        counts["created"] = conn.execute(
            f"INSERT INTO accounts (district, email, {_COLS}, status, created_at, updated_at,"
            f" epoch) SELECT :d, s.email, {', '.join('s.' + f for f in _FIELDS)}, 'active',"
            f" :now, :now, :e {new_rows} ORDER BY s.email",
            {"d": d, "e": epoch, "now": now},
        ).rowcount
        counts["unchanged"] = (
            staged_live - counts["created"] - counts["updated"] - counts["reactivated"]
        ) + (staged_marked - marked_active)
        return counts
