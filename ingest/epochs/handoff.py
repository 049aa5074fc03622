"""The hand-off between the epoch layer and whatever processes an epoch.

The epoch layer passes a :class:`ClaimedEpoch` (an immutable copy of the files plus
metadata) and receives an :class:`Outcome`. It knows nothing of CSV columns; the processor
knows nothing of SFTP, watchers or readiness.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from ingest.epochs.ledger import EpochRecord
    from ingest.store.db import Database

# Final states. A processor returns applied, rejected, held or failed; the epoch layer
# itself decides superseded (and failed, when a processor raises).
OutcomeStatus = Literal["applied", "rejected", "held", "superseded", "failed"]


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Finding:
    """One error or warning, with a stable ``code`` and a message that says what to do."""

    code: str
    message: str
    file: str | None = None
    line: int | None = None
    column: str | None = None
    value: str | None = None
    email: str | None = None  # the row's e-mail address, when it has a valid one

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        return cls(**data)


@dataclass(frozen=True)
class ClaimedEpoch:
    """An epoch claimed for processing; ``directory`` holds files that cannot change."""

    district: str
    name: str
    directory: Path
    files: tuple[FileInfo, ...]
    origin: Literal["upload", "auto"]
    warnings: tuple[Finding, ...] = ()  # found by the epoch layer (e.g. marker_not_empty)
    approved: bool = False  # an operator approved it after it was held
    # When this processing began (the ledger's claim): the processor stamps the changes
    # it makes with it, so that one processing's changes are told from another's
    # without trusting the clock to move forward in between.
    claimed_at: str | None = None


@dataclass(frozen=True)
class Outcome:
    status: OutcomeStatus
    summary: dict[str, int] = field(default_factory=dict)
    errors: tuple[Finding, ...] = ()
    warnings: tuple[Finding, ...] = ()
    message: str = ""  # one sentence for the report's headline

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "message": self.message,
            "summary": self.summary,
            "errors": [f.to_json() for f in self.errors],
            "warnings": [f.to_json() for f in self.warnings],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            status=data["status"],
            summary=dict(data.get("summary", {})),
            errors=tuple(Finding.from_json(f) for f in data.get("errors", [])),
            warnings=tuple(Finding.from_json(f) for f in data.get("warnings", [])),
            message=data.get("message", ""),
        )


class Processor(Protocol):
    """Turns a claimed epoch into an outcome, in two steps. Runs in a worker thread (or a
    child process), never on the loop.

    ``prepare`` comes first, outside the write transaction: through ``database.snapshot()``
    it may read the state database and fill TEMP tables, e.g. validate a large file,
    without holding the write lock that every other district's epochs and the ledger
    need. It is a context manager: what it yields lives until the epoch is done.

    ``process`` then runs in an open write transaction (``conn``). Everything it writes
    commits atomically with the epoch's final state in the ledger, or not at all: that is
    what makes processing exactly-once across crashes. It must not commit. The epoch
    layer processes one epoch of a district at a time, so what ``prepare`` read of the
    district is still true in ``process``.
    """

    name: str

    def prepare(self, epoch: ClaimedEpoch, database: Database) -> AbstractContextManager[Any]: ...

    def process(self, epoch: ClaimedEpoch, conn: sqlite3.Connection, prepared: Any) -> Outcome: ...

    def reports(self, database: Database, record: EpochRecord) -> dict[str, str | None]:
        """Report files of its own beside report.json, by name (None: this outcome has
        none, and one left from an earlier processing goes). Called in the daemon when
        the finished epoch is published, from the state ``process`` committed."""
        ...
