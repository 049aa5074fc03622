"""The provisioning processor: validate users.csv, then apply it to the account store.

Two steps (see ``Processor``): ``prepare`` validates and stages without the write lock;
``process`` decides and applies inside the epoch layer's write transaction, so either the
whole epoch applies together with its final ledger state, or nothing does.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ingest.config import ProvisioningConfig
from ingest.epochs.handoff import ClaimedEpoch, Finding, Outcome
from ingest.epochs.ledger import EpochRecord
from ingest.provisioning.accounts import DistrictSettings, get_settings, now
from ingest.provisioning.changes import render_changes_csv
from ingest.provisioning.csvapi import FILE_NAME, Limits, ValidationReport, validate_users_csv
from ingest.provisioning.filenames import check_file_names, stand_in
from ingest.provisioning.staging import Stage
from ingest.store.db import Database

LISTED_DELETIONS = 100
CLOSE_AFTER_BYTES = 1 << 20


def validation_limits(settings: ProvisioningConfig) -> Limits:
    """The CSV API's limits as configured: the server's, ``ingest validate``'s and those
    built into the districts' validator."""
    return Limits(
        max_file_bytes=settings.max_file_bytes,
        max_field_length=settings.max_field_length,
        max_bad_row_share=settings.max_bad_row_share,
        max_bad_rows_min=settings.max_bad_rows_min,
    )


@dataclass
class Prepared:
    """What ``prepare`` found, for ``process``: either a final outcome already (the file
    names are wrong) or the validated, staged file."""

    outcome: Outcome | None = None
    district: DistrictSettings = field(default_factory=DistrictSettings)
    stage: Stage | None = None
    report: ValidationReport = field(default_factory=ValidationReport)
    warnings: list[Finding] = field(default_factory=list)


class ProvisioningProcessor:
    name = "provisioning"

    def __init__(self, settings: ProvisioningConfig) -> None:
        self.settings = settings
        self.limits = validation_limits(settings)

    @contextmanager
    def prepare(self, epoch: ClaimedEpoch, database: Database) -> Iterator[Prepared]:
        """The file names, then one pass over users.csv that validates it and stages its
        rows in TEMP tables, in a read snapshot: the pass over a large file takes seconds,
        and holding the write lock meanwhile would stop every other district's epochs
        (and the ledger) for as long."""
        sizes = {f.name: f.size for f in epoch.files}
        file_errors, warnings = check_file_names(list(sizes), sizes)
        if file_errors:
            yield Prepared(self._wrong_files(epoch, database, sizes, file_errors, warnings))
            return
        stage = None
        try:
            with database.snapshot() as conn:
                district = get_settings(conn, epoch.district)
                stage = Stage(
                    conn,
                    epoch.district,
                    size_hint=sizes[FILE_NAME],
                    full_sync=district.mode == "full-sync",
                )
                report = validate_users_csv(
                    epoch.directory / FILE_NAME, self.limits, district.buildings, stage
                )
            yield Prepared(None, district, stage, report, [*warnings, *report.warnings])
        finally:
            # After a large file, closing the connection drops its TEMP tables in one
            # step (dropping a million-row table page by page took 0.4-1.1 s); a small
            # epoch keeps the thread's connection, as reopening it would cost more than
            # the epoch (bench/latency.py).
            if sizes[FILE_NAME] >= CLOSE_AFTER_BYTES:
                database.close_thread_connection()
            elif stage is not None:
                stage.release()

    def _wrong_files(
        self,
        epoch: ClaimedEpoch,
        database: Database,
        sizes: dict[str, int],
        errors: list[Finding],
        warnings: list[Finding],
    ) -> Outcome:
        """The rejection of an epoch whose file names are wrong. A file meant to be
        users.csv (``Users.csv``) is validated all the same, on a private stage: the
        district then fixes its content in the same round trip as its name."""
        summary = {"rows": 0}
        name = stand_in(list(sizes), sizes, FILE_NAME)
        if name is not None:
            with database.snapshot() as conn:
                buildings = get_settings(conn, epoch.district).buildings
            content = validate_users_csv(epoch.directory / name, self.limits, buildings)
            summary = {"rows": content.rows, "skipped": content.bad_rows}
            errors = [*errors, *content.errors]
            warnings = [*warnings, *content.warnings]
        return Outcome(
            "rejected",
            summary,
            tuple(errors),
            tuple(warnings),
            message="the epoch's files do not follow the CSV API; nothing was changed"
            + (f" (the content of {name} was checked too)" if name else ""),
        )

    def reports(self, database: Database, record: EpochRecord) -> dict[str, str | None]:
        """changes.csv: the accounts an applied epoch created, updated, deleted or
        reactivated."""
        return render_changes_csv(database, record)

    def process(self, epoch: ClaimedEpoch, conn: sqlite3.Connection, prepared: Prepared) -> Outcome:
        """Inside the write transaction: reject, hold or apply what ``prepare`` staged."""
        if prepared.outcome is not None:
            return prepared.outcome
        stage, report, district = prepared.stage, prepared.report, prepared.district
        assert stage is not None  # prepare stages whenever it has no outcome yet
        warnings = list(prepared.warnings)
        summary = {"rows": report.rows, "skipped": report.bad_rows}
        if report.rejected:
            return Outcome(
                "rejected",
                summary,
                tuple(report.errors),
                tuple(warnings),
                message="users.csv has file-level errors; nothing was changed",
            )
        # A full sync deletes what the file leaves out, but never the account of a row
        # that was only skipped for an error; if a skipped row's e-mail is unreadable,
        # absence proves nothing and the sync deletes only rows marked Deleted.
        full_sync = district.mode == "full-sync"
        if full_sync and report.unkeyed_bad_rows:
            full_sync = False
            warnings.append(
                Finding(
                    "full_sync_skipped",
                    f"{report.unkeyed_bad_rows} skipped row(s) have no valid e-mail address, so "
                    "whose accounts they are is unknown: accounts absent from the file were "
                    "not deleted this time; fix those rows",
                    FILE_NAME,
                )
            )
        active = stage.active_count()
        deleting, _ = stage.deleting(full_sync)
        share, minimum = self.settings.deletion_share, self.settings.deletion_min
        if not epoch.approved and deleting > share * active and deleting > minimum:
            _, listed = stage.deleting(full_sync, LISTED_DELETIONS)
            held = [
                Finding(
                    "deletion_threshold",
                    f"this upload would delete {deleting} of {active} active accounts "
                    f"(more than {share:.0%} and more than {minimum}): your district is in "
                    "full-sync mode, where every active account missing from users.csv is "
                    "deleted. Nothing was applied. If the file is complete and correct, ask "
                    "your operator to approve it; if rows are missing, upload a complete "
                    "file as a new epoch instead (the accounts are listed below).",
                )
            ]
            held += [
                Finding("would_delete", f"{email} would be deleted", FILE_NAME) for email in listed
            ]
            return Outcome(
                "held",
                {**summary, "would_delete": deleting, "active": active},
                tuple(held),
                tuple(warnings),
                message=f"held: it would delete {deleting} of {active} accounts "
                "(full-sync mode); see the first error for what you can do",
            )

        # Stamped with the claim's time: changes.csv finds this processing's changes by it.
        counts = stage.apply(epoch.name, epoch.claimed_at or now(), full_sync, report.valid_rows)
        return Outcome(
            "applied",
            {**summary, **counts},
            tuple(report.row_errors),
            tuple(warnings),
            message=f"{counts['created']} created, {counts['updated']} updated, "
            f"{counts['deleted']} deleted, {counts['reactivated']} reactivated, "
            f"{counts['unchanged']} unchanged, {report.bad_rows} rows skipped "
            "for errors",
        )
