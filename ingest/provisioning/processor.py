"""The provisioning processor: validate users.csv, then apply it to the account store.

Runs in a worker thread inside the epoch layer's transaction (see ``Processor``): either
the whole epoch applies together with its final ledger state, or nothing does.
"""

from __future__ import annotations

import sqlite3

from ingest.config import ProvisioningConfig
from ingest.epochs.handoff import ClaimedEpoch, Finding, Outcome
from ingest.provisioning.accounts import DistrictSettings, get_settings, now
from ingest.provisioning.csvapi import FILE_NAME, Limits, validate_users_csv
from ingest.provisioning.filenames import check_file_names
from ingest.provisioning.staging import Stage

LISTED_DELETIONS = 100


class ProvisioningProcessor:
    name = "provisioning"

    def __init__(self, settings: ProvisioningConfig) -> None:
        self.settings = settings
        self.limits = Limits(
            max_file_bytes=settings.max_file_bytes,
            max_field_length=settings.max_field_length,
            max_bad_row_share=settings.max_bad_row_share,
        )

    def process(self, epoch: ClaimedEpoch, conn: sqlite3.Connection) -> Outcome:
        names = [f.name for f in epoch.files]
        file_errors, warnings = check_file_names(names, {f.name: f.size for f in epoch.files})
        if file_errors:
            return Outcome(
                "rejected",
                {"rows": 0},
                tuple(file_errors),
                tuple(warnings),
                message="the epoch's files do not follow the CSV API; nothing was changed",
            )
        district = get_settings(conn, epoch.district)
        stage = Stage(conn, epoch.district)
        try:
            return self._validate_and_apply(epoch, district, stage, warnings)
        finally:
            stage.release()

    def _validate_and_apply(
        self,
        epoch: ClaimedEpoch,
        district: DistrictSettings,
        stage: Stage,
        warnings: list[Finding],
    ) -> Outcome:
        # One pass: validate, classifying and staging rows in TEMP tables of this connection.
        report = validate_users_csv(
            epoch.directory / FILE_NAME, self.limits, district.buildings, stage
        )
        warnings += report.warnings
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
                    f"{report.unkeyed_bad_rows} row(s) could not be read at all, so accounts "
                    "absent from the file were not deleted this time; fix those rows",
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
                    f"(more than {share:.0%} and more than {minimum}); nothing was applied. An "
                    "operator must approve or discard it (ingest epochs approve|discard).",
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
                message=f"held: it would delete {deleting} accounts",
            )

        counts = stage.apply(epoch.name, now(), full_sync, report.valid_rows)
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
