"""``changes.csv`` beside an applied epoch's report: who was created, updated, deleted and
reactivated, read back from the account store's change log.

The epoch layer publishes it as one more report file (``EpochPipeline``'s
``extra_reports``); it knows nothing of accounts. One line per changed account, so its
size follows the upload's own; past ``MAX_LISTED`` lines the file says how many more
there are and where to find them.
"""

from __future__ import annotations

import csv
import io
import json

from ingest.epochs.ledger import EpochRecord
from ingest.epochs.reports import CHANGES_CSV, UTF8_BOM
from ingest.store.db import Database
from ingest.text import formula_safe, printable

MAX_LISTED = 100_000
# The account store's fields as the CSV API names its columns.
COLUMN_NAMES = {
    "first_name": "First Name",
    "last_name": "Last Name",
    "middle_name": "Middle Name",
    "staff_id": "Staff Id",
    "title": "Title",
    "roles": "Role",
    "buildings": "Buildings",
    "status": "Deleted",
}


def render_changes_csv(database: Database, record: EpochRecord) -> dict[str, str | None]:
    """{"changes.csv": text} for an applied epoch that changed accounts, {"changes.csv":
    None} (no such file) otherwise. Only this processing's changes: a reprocessed epoch
    logs its own again."""
    if record.state != "applied" or record.claimed_at is None:
        return {CHANGES_CSV: None}
    with database.read() as conn:
        rows = conn.execute(
            "SELECT email, action, before, after FROM account_changes"
            " WHERE district = ? AND epoch = ? AND at >= ? ORDER BY id LIMIT ?",
            (record.district, record.name, record.claimed_at, MAX_LISTED + 1),
        ).fetchall()
        more = 0
        if len(rows) > MAX_LISTED:
            more = (
                conn.execute(
                    "SELECT COUNT(*) FROM account_changes WHERE district = ? AND epoch = ?"
                    " AND at >= ?",
                    (record.district, record.name, record.claimed_at),
                ).fetchone()[0]
                - MAX_LISTED
            )
            rows = rows[:MAX_LISTED]
    if not rows:
        return {CHANGES_CSV: None}
    out = io.StringIO()
    out.write(UTF8_BOM)  # Excel reads it as UTF-8
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["email", "change", "columns", "before", "after"])
    for email, action, before, after in rows:
        old, new = json.loads(before or "{}"), json.loads(after or "{}")
        changed = [k for k in old if k != "status"] if action != "deleted" else []
        writer.writerow(
            [
                formula_safe(printable(value))
                for value in (
                    email,
                    action,
                    "; ".join(COLUMN_NAMES.get(k, k) for k in changed),
                    "; ".join(f"{COLUMN_NAMES.get(k, k)}: {old[k]}" for k in changed),
                    "; ".join(f"{COLUMN_NAMES.get(k, k)}: {new[k]}" for k in changed),
                )
            ]
        )
    if more:
        writer.writerow(
            [f"... and {more} more changes: ask your operator (ingest accounts history)"]
        )
    return {CHANGES_CSV: out.getvalue()}
