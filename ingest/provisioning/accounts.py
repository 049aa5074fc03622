"""The account store: districts' staff accounts, their change log, and per-district settings.

Every function takes the caller's connection: the processor applies a whole epoch inside the
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

MODES = ("upsert", "full-sync")
# The account's columns a users.csv row sets (besides the key, ``email``). Roles and
# buildings are kept in the CSV API's own syntax, tidied: ``Role`` "A;B" and
# ``Buildings`` "x,y;z", one group per role.
FIELDS = ("first_name", "last_name", "middle_name", "staff_id", "title", "roles", "buildings")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


def export_rows(conn: sqlite3.Connection, district: str) -> Iterator[dict[str, str]]:
    """Active accounts as users.csv rows (the export round-trips through the CSV API)."""
    for row in conn.execute(
        "SELECT * FROM accounts WHERE district = ? AND status = 'active' ORDER BY email",
        (district,),
    ):
        yield {
            "Email": row["email"],
            "First Name": row["first_name"],
            "Last Name": row["last_name"],
            "Middle Name": row["middle_name"],
            "Staff Id": row["staff_id"],
            "Title": row["title"],
            "Role": row["roles"],
            "Buildings": row["buildings"],
            "Deleted": "",
        }


def history(conn: sqlite3.Connection, district: str, email: str) -> list[dict[str, Any]]:
    """The account's change log, oldest first. A creation's after-image is not stored
    (it was most of the log's size and a third of a large first apply's writes): it is
    the account's current values with every later change undone, from their before-images."""
    email = email.lower()
    changes = [
        {
            "epoch": r["epoch"],
            "action": r["action"],
            "at": r["at"],
            "before": json.loads(r["before"]) if r["before"] else None,
            "after": json.loads(r["after"]) if r["after"] else None,
        }
        for r in conn.execute(
            "SELECT * FROM account_changes WHERE district = ? AND email = ? ORDER BY id",
            (district, email),
        )
    ]
    account = conn.execute(
        f"SELECT {', '.join(FIELDS)} FROM accounts WHERE district = ? AND email = ?",
        (district, email),
    ).fetchone()
    if account is not None:
        values = dict(zip(FIELDS, account, strict=True))
        for change in reversed(changes):
            if change["action"] == "created" and change["after"] is None:
                change["after"] = dict(values)
            elif change["before"]:
                values.update((k, v) for k, v in change["before"].items() if k in values)
    return changes
