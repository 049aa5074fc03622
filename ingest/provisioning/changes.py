"""``changes.csv`` beside an applied epoch's report: who was created, updated, deleted and
reactivated, read back from the account store's change log.

The epoch layer publishes it as one more report file (``Processor.reports``); it knows
nothing of accounts. It is rendered in the daemon, so it is bounded twice: at most
``MAX_LISTED`` rows and ``MAX_BYTES`` of text, each value cut to ``MAX_VALUE`` characters;
past a bound, its last row says how many changes were left out and where to find them.
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
MAX_BYTES = 8 * 1024 * 1024  # characters, checked per row
MAX_VALUE = 200
# The account store's fields as the CSV API names its columns.
COLUMN_NAMES = {
    "first_name": "First Name",
    "last_name": "Last Name",
    "middle_name": "Middle Name",
    "staff_id": "Staff Id",
    "title": "Title",
    "roles": "Role",
    "buildings": "Buildings",
}


def _cell(value: object) -> str:
    text = printable(str(value))
    text = text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"
    return formula_safe(text)


def render_changes_csv(database: Database, record: EpochRecord) -> dict[str, str | None]:
    """{"changes.csv": text} for an applied epoch that changed accounts, {"changes.csv":
    None} (no such file) otherwise. Only this processing's changes: the processor stamps
    them with the claim's time (a reprocessed epoch has a claim of its own)."""
    if record.state != "applied" or record.claimed_at is None:
        return {CHANGES_CSV: None}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    listed = 0
    where = "WHERE district = ? AND epoch = ? AND at = ?"
    args = (record.district, record.name, record.claimed_at)
    with database.read() as conn:
        cursor = conn.execute(
            f"SELECT email, action, before, after FROM account_changes {where} ORDER BY id", args
        )
        for email, action, before, after in cursor:
            if listed == MAX_LISTED or out.tell() >= MAX_BYTES:
                break
            old, new = json.loads(before or "{}"), json.loads(after or "{}")
            changed = [k for k in old if k in COLUMN_NAMES] if action != "deleted" else []
            writer.writerow(
                [
                    _cell(email),
                    _cell(action),
                    "; ".join(COLUMN_NAMES[k] for k in changed),
                    _cell("; ".join(f"{COLUMN_NAMES[k]}: {old[k]}" for k in changed)),
                    _cell("; ".join(f"{COLUMN_NAMES[k]}: {new[k]}" for k in changed)),
                ]
            )
            listed += 1
        cursor.close()
        if not listed:
            return {CHANGES_CSV: None}
        total = conn.execute(f"SELECT COUNT(*) FROM account_changes {where}", args).fetchone()[0]
    if total > listed:
        writer.writerow(
            [
                f"... and {total - listed} more changes, not listed to keep this file small: "
                "your operator has them all (ingest accounts history)"
            ]
        )
    header = f"{UTF8_BOM}email,change,columns,before,after\r\n"  # the BOM: Excel reads UTF-8
    return {CHANGES_CSV: header + out.getvalue()}
