"""The account store: districts' staff accounts, their change log, and per-district settings.

Every method takes the caller's connection: the processor applies a whole epoch inside the
epoch layer's transaction, so accounts, change log and ledger state commit together.
Nothing is ever hard-deleted by an upload: deletion sets ``status = 'deleted'``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ingest.provisioning.csvapi import UserRow

MODES = ("upsert", "full-sync")
_FIELDS = ("first_name", "last_name", "middle_name", "staff_id", "title", "assignments")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def row_values(row: UserRow) -> dict[str, str]:
    return {
        "first_name": row.first_name,
        "last_name": row.last_name,
        "middle_name": row.middle_name,
        "staff_id": row.staff_id,
        "title": row.title,
        "assignments": json.dumps([[role, list(b)] for role, b in row.assignments]),
    }


@dataclass(frozen=True)
class DistrictSettings:
    mode: str = "upsert"
    buildings: frozenset[str] | None = None


def get_settings(conn: sqlite3.Connection, district: str) -> DistrictSettings:
    row = conn.execute(
        "SELECT mode, buildings FROM district_settings WHERE district = ?", (district,)
    ).fetchone()
    if row is None:
        return DistrictSettings()
    buildings = frozenset(json.loads(row["buildings"])) if row["buildings"] else None
    return DistrictSettings(row["mode"], buildings)


def set_mode(conn: sqlite3.Connection, district: str, mode: str) -> None:
    conn.execute(
        "INSERT INTO district_settings (district, mode) VALUES (?, ?)"
        " ON CONFLICT (district) DO UPDATE SET mode = excluded.mode",
        (district, mode),
    )


def set_buildings(conn: sqlite3.Connection, district: str, buildings: list[str] | None) -> None:
    value = json.dumps(sorted(set(buildings))) if buildings is not None else None
    conn.execute(
        "INSERT INTO district_settings (district, buildings) VALUES (?, ?)"
        " ON CONFLICT (district) DO UPDATE SET buildings = excluded.buildings",
        (district, value),
    )


class Applier:
    """Applies one epoch's rows to one district, counting what it did."""

    def __init__(self, conn: sqlite3.Connection, district: str, epoch: str) -> None:
        self.conn = conn
        self.district = district
        self.epoch = epoch
        self.now = _now()
        self.counts = {"created": 0, "updated": 0, "deleted": 0, "reactivated": 0, "unchanged": 0}

    def _log(
        self, email: str, action: str, before: dict[str, Any] | None, after: dict[str, Any] | None
    ) -> None:
        self.conn.execute(
            "INSERT INTO account_changes (district, epoch, email, action, before, after, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                self.district,
                self.epoch,
                email,
                action,
                json.dumps(before) if before is not None else None,
                json.dumps(after) if after is not None else None,
                self.now,
            ),
        )

    def apply(self, row: UserRow) -> None:
        existing = self.conn.execute(
            "SELECT * FROM accounts WHERE district = ? AND email = ?", (self.district, row.email)
        ).fetchone()
        if row.deleted:
            if existing is not None and existing["status"] == "active":
                self._delete(row.email, existing)
            else:
                self.counts["unchanged"] += 1
            return
        new = row_values(row)
        if existing is None:
            self.conn.execute(
                "INSERT INTO accounts (district, email, first_name, last_name, middle_name,"
                " staff_id, title, assignments, status, created_at, updated_at, epoch)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?)",
                (self.district, row.email, *new.values(), self.now, self.now, self.epoch),
            )
            self._log(row.email, "created", None, new)
            self.counts["created"] += 1
            return
        old = {k: existing[k] for k in _FIELDS}
        reactivated = existing["status"] == "deleted"
        if old == new and not reactivated:
            self.counts["unchanged"] += 1
            return
        self.conn.execute(
            "UPDATE accounts SET first_name = ?, last_name = ?, middle_name = ?, staff_id = ?,"
            " title = ?, assignments = ?, status = 'active', deleted_at = NULL,"
            " updated_at = ?, epoch = ? WHERE district = ? AND email = ?",
            (*new.values(), self.now, self.epoch, self.district, row.email),
        )
        changed_old = {k: v for k, v in old.items() if new[k] != v}
        changed_new = {k: new[k] for k in changed_old}
        action = "reactivated" if reactivated else "updated"
        self._log(row.email, action, changed_old, changed_new)
        self.counts[action] += 1

    def _delete(self, email: str, existing: sqlite3.Row) -> None:
        self.conn.execute(
            "UPDATE accounts SET status = 'deleted', deleted_at = ?, updated_at = ?, epoch = ?"
            " WHERE district = ? AND email = ?",
            (self.now, self.now, self.epoch, self.district, email),
        )
        self._log(email, "deleted", {"status": "active"}, {"status": "deleted"})
        self.counts["deleted"] += 1

    def delete_missing(self, present: set[str]) -> None:
        """full-sync: active accounts absent from the file are deleted."""
        for row in self.conn.execute(
            "SELECT * FROM accounts WHERE district = ? AND status = 'active'", (self.district,)
        ).fetchall():
            if row["email"] not in present:
                self._delete(row["email"], row)


def active_emails(conn: sqlite3.Connection, district: str) -> set[str]:
    return {
        r["email"]
        for r in conn.execute(
            "SELECT email FROM accounts WHERE district = ? AND status = 'active'", (district,)
        )
    }


def export_rows(conn: sqlite3.Connection, district: str) -> Iterator[dict[str, str]]:
    """Active accounts as users.csv rows (the export round-trips through the CSV API)."""
    for row in conn.execute(
        "SELECT * FROM accounts WHERE district = ? AND status = 'active' ORDER BY email",
        (district,),
    ):
        assignments = json.loads(row["assignments"])
        yield {
            "Email": row["email"],
            "First Name": row["first_name"],
            "Last Name": row["last_name"],
            "Middle Name": row["middle_name"],
            "Staff Id": row["staff_id"],
            "Title": row["title"],
            "Role": ";".join(role for role, _ in assignments),
            "Buildings": ";".join(",".join(b) for _, b in assignments),
            "Deleted": "",
        }


def history(conn: sqlite3.Connection, district: str, email: str) -> list[dict[str, Any]]:
    return [
        {
            "epoch": r["epoch"],
            "action": r["action"],
            "at": r["at"],
            "before": json.loads(r["before"]) if r["before"] else None,
            "after": json.loads(r["after"]) if r["after"] else None,
        }
        for r in conn.execute(
            "SELECT * FROM account_changes WHERE district = ? AND email = ? ORDER BY id",
            (district, email.lower()),
        )
    ]
