"""The ledger: every epoch the server has accepted, its state and its outcome.

States: ``received`` (ready, recorded, waiting for its turn) -> ``processing`` (claimed)
-> one of ``applied``, ``rejected``, ``held``, ``superseded``, ``failed``. ``published_at``
records that the epoch's directory and reports are in ``/upload-processed/``. Every
transition is one SQL statement guarded by the expected current state, so two workers (or
a worker and a restart) can never both claim or finish the same epoch.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ingest.epochs.handoff import FileInfo, Finding, Outcome
from ingest.store.db import Database

STATES = ("received", "processing", "applied", "rejected", "held", "superseded", "failed")
FINAL_STATES = ("applied", "rejected", "held", "superseded", "failed")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class EpochRecord:
    district: str
    name: str
    state: str
    origin: str
    received_at: str
    claimed_at: str | None
    finished_at: str | None
    published_at: str | None
    attempts: int
    approved: bool
    files: tuple[FileInfo, ...]
    warnings: tuple[Finding, ...]
    outcome: Outcome | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> EpochRecord:
        outcome = json.loads(row["outcome"]) if row["outcome"] else None
        return cls(
            district=row["district"],
            name=row["name"],
            state=row["state"],
            origin=row["origin"],
            received_at=row["received_at"],
            claimed_at=row["claimed_at"],
            finished_at=row["finished_at"],
            published_at=row["published_at"],
            attempts=row["attempts"],
            approved=bool(row["approved"]),
            files=tuple(FileInfo(**f) for f in json.loads(row["files"])),
            warnings=tuple(Finding.from_json(w) for w in json.loads(row["warnings"])),
            outcome=Outcome.from_json(outcome) if outcome else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "district": self.district,
            "epoch": self.name,
            "state": self.state,
            "origin": self.origin,
            "received_at": self.received_at,
            "claimed_at": self.claimed_at,
            "finished_at": self.finished_at,
            "published_at": self.published_at,
            "attempts": self.attempts,
            "approved": self.approved,
            "files": [vars(f) for f in self.files],
            "warnings": [w.to_json() for w in self.warnings],
            "outcome": self.outcome.to_json() if self.outcome else None,
        }


class Ledger:
    """Blocking ledger operations; call them from a worker thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def receive(
        self, district: str, name: str, origin: str, files: list[FileInfo], warnings: list[Finding]
    ) -> bool:
        """Record a ready epoch; False when it is already in the ledger."""
        with self.db.connect() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO epochs (district, name, state, origin, received_at,"
                " files, warnings) VALUES (?, ?, 'received', ?, ?, ?, ?)",
                (
                    district,
                    name,
                    origin,
                    now(),
                    json.dumps([vars(f) for f in files]),
                    json.dumps([w.to_json() for w in warnings]),
                ),
            )
            return cursor.rowcount == 1

    def claim(self, district: str, name: str) -> str | None:
        """Move a received epoch to ``processing`` or ``superseded``; returns the new state,
        or None when it was not waiting (claimed elsewhere, or already final)."""
        with self.db.connect() as conn:
            row = conn.execute(
                "SELECT state FROM epochs WHERE district = ? AND name = ?", (district, name)
            ).fetchone()
            if row is None or row["state"] != "received":
                return None
            latest = self._latest_applied(conn, district)
            if latest is not None and name < latest:
                outcome = Outcome(
                    "superseded",
                    errors=(
                        Finding(
                            "epoch_superseded",
                            f"epoch {latest} was already applied and is newer; applying this "
                            "older one would roll accounts back. Nothing was changed: upload "
                            "a new epoch (with the current time) if this data is still wanted.",
                        ),
                    ),
                    message=f"superseded by {latest}, which was already applied",
                )
                conn.execute(
                    "UPDATE epochs SET state = 'superseded', finished_at = ?, outcome = ?"
                    " WHERE district = ? AND name = ? AND state = 'received'",
                    (now(), json.dumps(outcome.to_json()), district, name),
                )
                return "superseded"
            conn.execute(
                "UPDATE epochs SET state = 'processing', claimed_at = ?, attempts = attempts + 1"
                " WHERE district = ? AND name = ? AND state = 'received'",
                (now(), district, name),
            )
            return "processing"

    def finish(self, conn: sqlite3.Connection, district: str, name: str, outcome: Outcome) -> None:
        """Inside the processor's transaction: record the final state and outcome."""
        updated = conn.execute(
            "UPDATE epochs SET state = ?, finished_at = ?, outcome = ?"
            " WHERE district = ? AND name = ? AND state = 'processing'",
            (outcome.status, now(), json.dumps(outcome.to_json()), district, name),
        ).rowcount
        if updated != 1:
            raise RuntimeError(f"epoch {district}/{name} is not being processed")

    def fail(self, district: str, name: str, outcome: Outcome) -> None:
        """Record a processor crash (exception) as ``failed``; nothing it did was kept."""
        with self.db.connect() as conn:
            self.finish(conn, district, name, outcome)

    def mark_published(self, district: str, name: str) -> None:
        with self.db.connect() as conn:
            conn.execute(
                "UPDATE epochs SET published_at = ? WHERE district = ? AND name = ?",
                (now(), district, name),
            )

    def recover(self) -> int:
        """At startup: epochs a crash left in ``processing`` go back to ``received``.

        Nothing a processor did survives without its final state (they commit together),
        so redoing the epoch from the start is exact.
        """
        with self.db.connect() as conn:
            return conn.execute(
                "UPDATE epochs SET state = 'received' WHERE state = 'processing'"
            ).rowcount

    def requeue(self, district: str, name: str) -> bool:
        """For ``ingest epochs reprocess``: a finished epoch goes back to ``received``."""
        placeholders = ", ".join("?" for _ in FINAL_STATES)
        with self.db.connect() as conn:
            return (
                conn.execute(
                    "UPDATE epochs SET state = 'received', claimed_at = NULL, finished_at = NULL,"
                    " published_at = NULL, outcome = NULL"
                    f" WHERE district = ? AND name = ? AND state IN ({placeholders})",
                    (district, name, *FINAL_STATES),
                ).rowcount
                == 1
            )

    def approve(self, district: str, name: str) -> bool:
        """A held epoch goes back to ``received``, approved: the threshold is lifted."""
        with self.db.connect() as conn:
            return (
                conn.execute(
                    "UPDATE epochs SET state = 'received', approved = 1, claimed_at = NULL,"
                    " finished_at = NULL, published_at = NULL, outcome = NULL"
                    " WHERE district = ? AND name = ? AND state = 'held'",
                    (district, name),
                ).rowcount
                == 1
            )

    def discard(self, district: str, name: str) -> bool:
        """A held epoch is rejected for good; its report is rewritten (published again)."""
        outcome = Outcome(
            "rejected",
            errors=(
                Finding(
                    "epoch_discarded",
                    "an operator discarded this upload after it was held; nothing was changed",
                ),
            ),
            message="discarded by an operator",
        )
        with self.db.connect() as conn:
            return (
                conn.execute(
                    "UPDATE epochs SET state = 'rejected', finished_at = ?, published_at = NULL,"
                    " outcome = ? WHERE district = ? AND name = ? AND state = 'held'",
                    (now(), json.dumps(outcome.to_json()), district, name),
                ).rowcount
                == 1
            )

    def get(self, district: str, name: str) -> EpochRecord | None:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT * FROM epochs WHERE district = ? AND name = ?", (district, name)
            ).fetchone()
        return EpochRecord.from_row(row) if row else None

    def list_epochs(
        self, district: str | None = None, state: str | None = None
    ) -> list[EpochRecord]:
        query = "SELECT * FROM epochs WHERE 1 = 1"
        args: list[str] = []
        if district:
            query += " AND district = ?"
            args.append(district)
        if state:
            query += " AND state = ?"
            args.append(state)
        with self.db.read() as conn:
            rows = conn.execute(query + " ORDER BY district, name", args).fetchall()
        return [EpochRecord.from_row(r) for r in rows]

    def pending(self) -> list[EpochRecord]:
        """Epochs a restart must finish: not final yet, or final but not published."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT * FROM epochs WHERE state IN ('received', 'processing')"
                " OR published_at IS NULL ORDER BY district, name"
            ).fetchall()
        return [EpochRecord.from_row(r) for r in rows]

    def known_names(self, district: str) -> set[str]:
        with self.db.read() as conn:
            rows = conn.execute("SELECT name FROM epochs WHERE district = ?", (district,))
            return {r["name"] for r in rows}

    @staticmethod
    def _latest_applied(conn: sqlite3.Connection, district: str) -> str | None:
        row = conn.execute(
            "SELECT MAX(name) AS name FROM epochs WHERE district = ? AND state = 'applied'",
            (district,),
        ).fetchone()
        return row["name"] if row else None
