"""The ledger: every epoch the server has accepted, its state and its outcome.

States: ``received`` (ready, recorded, waiting for its turn) -> ``processing`` (claimed)
-> one of ``applied``, ``rejected``, ``held``, ``superseded``, ``failed``. ``published_at``
records that the epoch's directory and reports are in ``/upload-processed/``. Every
transition is one SQL statement guarded by the expected current state, so two workers (or
a worker and a restart) can never both claim or finish the same epoch.

Order: an epoch that sorts before the district's newest applied epoch is ``superseded``
(an older snapshot never rolls accounts back). An operator can take a bogus epoch out of
that order (``retired_at``) and apply a superseded one all the same (``forced_at``).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ingest.epochs.handoff import FileInfo, Finding, Outcome
from ingest.epochs.names import UTC_NAME_COMMANDS, describe_gap, parse_epoch_name
from ingest.store.db import Database

STATES = ("received", "processing", "applied", "rejected", "held", "superseded", "failed")
FINAL_STATES = ("applied", "rejected", "held", "superseded", "failed")
_FINAL = ", ".join(f"'{state}'" for state in FINAL_STATES)  # for SQL: state IN (...)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class OperatorAction:
    """An operator's decision about an epoch: ``action`` is approve, discard, reprocess,
    retire or force-apply; ``by`` who (``--by``, or the operator's login name)."""

    action: str
    by: str
    at: str

    def describe(self) -> str:
        verb = _ACTION_VERBS.get(self.action, self.action)
        return f"{self.at}: {self.by} {verb}"


_ACTION_VERBS = {
    "approve": "approved it",
    "discard": "discarded it",
    "reprocess": "had it processed again",
    "retire": "took it out of the epoch order",
    "force-apply": "had it applied although a newer upload was",
}


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
    retired_at: str | None = None  # an operator took it out of the epoch order
    forced_at: str | None = None  # an operator had it applied although superseded
    actions: tuple[OperatorAction, ...] = ()  # what operators did to it, oldest first

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
            retired_at=row["retired_at"],
            forced_at=row["forced_at"],
            actions=tuple(OperatorAction(**a) for a in json.loads(row["actions"])),
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
            "retired_at": self.retired_at,
            "forced_at": self.forced_at,
            "actions": [vars(a) for a in self.actions],
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

    def claim(self, district: str, name: str, max_clock_skew: float) -> str | None:
        """Move a received epoch to ``processing`` or ``superseded``; returns the new state,
        or None when it was not waiting (claimed elsewhere, or already final)."""
        with self.db.connect() as conn:
            row = conn.execute(
                "SELECT state, forced_at FROM epochs WHERE district = ? AND name = ?",
                (district, name),
            ).fetchone()
            if row is None or row["state"] != "received":
                return None
            latest = self._latest_applied(conn, district)
            if latest is not None and name < latest and row["forced_at"] is None:
                outcome = superseded(district, name, latest, datetime.now(UTC), max_clock_skew)
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

    # --- operators' actions: each is recorded with who and when (EpochRecord.actions) ---

    def _act(
        self,
        district: str,
        name: str,
        action: str,
        by: str,
        changes: str,
        condition: str,
        *change_args: str,
    ) -> bool:
        """One operator action: ``changes`` is the UPDATE's SET list (its ``?`` take
        ``change_args``), ``condition`` the state the epoch must be in (no parameters).
        The action is appended to the epoch's record in the same statement, so it is
        recorded exactly when it took effect."""
        done = json.dumps({"action": action, "by": by, "at": now()})
        with self.db.connect() as conn:
            return (
                conn.execute(
                    f"UPDATE epochs SET {changes},"
                    " actions = json_insert(actions, '$[#]', json(?))"
                    f" WHERE district = ? AND name = ? AND ({condition})",
                    (*change_args, done, district, name),
                ).rowcount
                == 1
            )

    def requeue(self, district: str, name: str, by: str) -> bool:
        """For ``ingest epochs reprocess``: a finished epoch goes back to ``received``."""
        return self._act(
            district,
            name,
            "reprocess",
            by,
            "state = 'received', claimed_at = NULL, finished_at = NULL, published_at = NULL,"
            " outcome = NULL",
            f"state IN ({_FINAL})",
        )

    def approve(self, district: str, name: str, by: str) -> bool:
        """A held epoch goes back to ``received``, approved: the threshold is lifted."""
        return self._act(
            district,
            name,
            "approve",
            by,
            "state = 'received', approved = 1, claimed_at = NULL, finished_at = NULL,"
            " published_at = NULL, outcome = NULL",
            "state = 'held'",
        )

    def discard(self, district: str, name: str, by: str) -> bool:
        """A held epoch is rejected for good; its report is rewritten (published again)."""
        outcome = Outcome(
            "rejected",
            errors=(
                Finding(
                    "epoch_discarded",
                    f"an operator ({by}) discarded this upload after it was held; nothing "
                    "was changed. If its data is still wanted, upload a corrected file as a "
                    "new epoch.",
                ),
            ),
            message="discarded by an operator",
        )
        return self._act(
            district,
            name,
            "discard",
            by,
            "state = 'rejected', finished_at = ?, published_at = NULL, outcome = ?",
            "state = 'held'",
            now(),
            json.dumps(outcome.to_json()),
        )

    def retire(self, district: str, name: str, by: str) -> bool:
        """Take a finished epoch out of the epoch order for good (its report is rewritten
        to say so): a bogus name no longer supersedes the district's correct uploads."""
        return self._act(
            district,
            name,
            "retire",
            by,
            "retired_at = ?, published_at = NULL",
            f"retired_at IS NULL AND state IN ({_FINAL})",
            now(),
        )

    def force(self, district: str, name: str, by: str) -> bool:
        """A superseded epoch goes back to ``received`` and is applied although a newer one
        was (an operator's decision: it rolls accounts back to this snapshot)."""
        return self._act(
            district,
            name,
            "force-apply",
            by,
            "state = 'received', forced_at = ?, claimed_at = NULL, finished_at = NULL,"
            " published_at = NULL, outcome = NULL",
            "state = 'superseded'",
            now(),
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

    def latest_name(self, district: str) -> str | None:
        """The district's last epoch in name order that was not retired: a server-named
        epoch must sort after it."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT MAX(name) AS name FROM epochs WHERE district = ? AND retired_at IS NULL",
                (district,),
            ).fetchone()
        return row["name"] if row else None

    def last_applied(self, district: str) -> EpochRecord | None:
        """The district's newest applied epoch (the status files show it)."""
        with self.db.read() as conn:
            name = self._latest_applied(conn, district)
        return self.get(district, name) if name else None

    @staticmethod
    def _latest_applied(conn: sqlite3.Connection, district: str) -> str | None:
        row = conn.execute(
            "SELECT MAX(name) AS name FROM epochs WHERE district = ? AND state = 'applied'"
            " AND retired_at IS NULL",
            (district,),
        ).fetchone()
        return row["name"] if row else None


def superseded(
    district: str, name: str, latest: str, at: datetime, max_clock_skew: float
) -> Outcome:
    """The outcome of an epoch that sorts before the newest applied one, saying why in
    numbers and what the district (or its operator) can do."""
    newest, this = parse_epoch_name(latest), parse_epoch_name(name)
    newest_at = newest.latest if newest else None
    this_at = this.latest if this else None
    ahead = (newest_at - at).total_seconds() if newest_at else None
    if newest_at is None or (ahead is not None and ahead > max_clock_skew):
        where = f"{describe_gap(ahead)} ahead of" if ahead is not None else "not a real time on"
        advice = (
            f"Epoch {latest}, already applied, is named {where} the server's clock (now "
            f"{at:%Y%m%d-%H%M%S} UTC): no correctly named upload can follow it. Nothing was "
            "changed. Ask your operator to take it out of the order (ingest epochs retire "
            f"{district} {latest}), then to reprocess this epoch."
        )
    else:
        gap = (newest_at - this_at).total_seconds() if this_at else None
        behind = f"{describe_gap(gap)} behind" if gap else "older than"
        local = (
            f" Are you naming epochs with local time? Epoch names are UTC: {UTC_NAME_COMMANDS}."
            if gap is not None and 15 * 60 <= gap <= 14 * 3600
            else ""
        )
        advice = (
            f"Your epoch name is {behind} the newest applied one ({latest}); applying this "
            f"older snapshot would roll accounts back, so nothing was changed.{local} If this "
            "data is still wanted, upload it again as a new epoch named with the current UTC "
            f"time (the server's time was {at:%Y%m%d-%H%M%S} UTC)."
        )
    return Outcome(
        "superseded",
        errors=(Finding("epoch_superseded", advice),),
        message=f"superseded by {latest}, which was already applied",
    )
