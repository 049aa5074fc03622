"""The epoch contract enforced at the SFTP door, so districts learn of mistakes at once.

Implements :class:`ingest.sftp.UploadPolicy`. Everything here is in memory and runs on
the event loop: it decides from names and from :class:`EpochRegistry`, which the epoch
service keeps current.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from ingest.epochs.names import (
    EPOCH_FORMAT,
    MARKER,
    UTC_NAME_COMMANDS,
    auto_target,
    describe_gap,
    epoch_name_for,
    is_misnamed_marker,
    is_temp_name,
    parse_epoch_name,
)
from ingest.epochs.reports import REPORT_NAMES
from ingest.sftp import Denied

EXAMPLE_EPOCH = "20260131-020000"

HOW_TO_UPLOAD = (
    f"create /upload/{EPOCH_FORMAT}/ (the UTC upload time, e.g. /upload/{EXAMPLE_EPOCH}/), "
    f"upload the CSV files into it, then an empty file named {MARKER}; or, if your client "
    "cannot create directories, upload /upload/users_auto.csv and the server makes the "
    "epoch for you"
)


def _reserved(name: str, becomes: str | None) -> str:
    """Why a file may not take the name of a report the server writes into the epoch's
    folder (it would be overwritten in /upload-processed/)."""
    became = "" if name == becomes else f" (it would become {becomes} in its epoch)"
    return (
        f"{name}{became} is the name of a report the server writes beside your files; "
        "yours would be overwritten. Name it otherwise: only users.csv is read"
    )


class EpochRegistry:
    """Per district: epoch names the ledger knows, epochs that may no longer change,
    ``_auto.csv`` files uploaded whole and waiting to become an epoch, and those being
    moved into a new epoch right now."""

    def __init__(self) -> None:
        self.known: defaultdict[str, set[str]] = defaultdict(set)
        self.submitted: defaultdict[str, set[str]] = defaultdict(set)
        self.waiting_auto: defaultdict[str, set[str]] = defaultdict(set)
        self.promoting: defaultdict[str, set[str]] = defaultdict(set)

    def is_submitted(self, district: str, name: str) -> bool:
        return name in self.submitted[district]


class EpochPolicy:
    def __init__(
        self, registry: EpochRegistry, loose_files: str, max_clock_skew: float, log: Any
    ) -> None:
        self.registry = registry
        self.loose_files = loose_files
        # Epochs are ordered by name: one named after the server's clock would make every
        # correct upload after it look older, and so superseded.
        self.max_clock_skew = timedelta(seconds=max_clock_skew)
        self.log = log

    def check(self, district: str, operation: str, path: str) -> None:
        parts = path.strip("/").split("/")
        if parts[0] != "upload" or len(parts) < 2:
            return  # the chroot's zones already decide outside /upload/
        if len(parts) == 2:
            self._check_top(district, operation, parts[1])
        else:
            self._check_inside(district, operation, parts[1], parts[2:])

    def _check_top(self, district: str, operation: str, name: str) -> None:
        if name in self.registry.promoting[district]:
            raise Denied(
                "auto_promoting",
                f"{name} is being moved into a new epoch right now; upload again in a few "
                "seconds (it becomes an epoch of its own)",
            )
        if operation in ("mkdir", "rename_target_dir"):  # a directory appears here
            self._check_new_epoch(district, name)
            return
        if operation in ("rmdir", "rename_source") and self.registry.is_submitted(district, name):
            raise Denied(
                "epoch_submitted",
                f"epoch {name} is complete and was submitted for processing; it cannot change",
            )
        if operation in ("open", "rename_target"):  # a file appears here
            if auto_target(name) is not None and name in self.registry.waiting_auto[district]:
                # A second one would replace the first before it became an epoch: the
                # first would never be processed, nor reported.
                raise Denied(
                    "auto_waiting",
                    f"the {name} uploaded a moment ago is waiting to become an epoch (a few "
                    "seconds); upload this one again after that, so that neither is lost",
                )
            if auto_target(name) in REPORT_NAMES:
                raise Denied("report_name_reserved", _reserved(name, auto_target(name)))
            if is_temp_name(name) or auto_target(name) is not None:
                return
            if self.loose_files == "report":
                self.log.warning(
                    "epoch.notice",
                    district=district,
                    path=f"/upload/{name}",
                    code="epoch_missing",
                    message="file outside an epoch accepted"
                    " (epochs.loose_files = report); it will not be processed",
                )
                return
            raise Denied(
                "epoch_missing", f"{name} cannot go directly into /upload/: {HOW_TO_UPLOAD}"
            )

    def _check_new_epoch(self, district: str, name: str) -> None:
        """A directory made in, or renamed into, /upload/: an epoch name the district has
        not used, whose time has already come (give or take the clock skew allowed)."""
        parsed = parse_epoch_name(name)
        if parsed is None:
            raise Denied(
                "epoch_name_invalid",
                f"{name!r} is not an epoch name; epoch directories are named "
                f"{EPOCH_FORMAT} in UTC, e.g. {EXAMPLE_EPOCH}",
            )
        if name in self.registry.known[district]:
            raise Denied(
                "epoch_duplicate",
                f"epoch {name} was already submitted; use a new timestamp for a new upload",
            )
        now = datetime.now(UTC)
        server_time = f"the server's time is {epoch_name_for(now)} UTC"
        if parsed.latest is None:
            raise Denied(
                "epoch_date_invalid",
                f"{name} is not a real date; name the epoch with the current UTC time "
                f"({server_time}): {UTC_NAME_COMMANDS}",
            )
        ahead = (parsed.latest - now).total_seconds()
        if ahead > self.max_clock_skew.total_seconds():
            local = " (are you naming epochs with local time? they are UTC)"
            raise Denied(
                "epoch_in_future",
                f"{name} is {describe_gap(ahead)} ahead of the server's clock "
                f"({server_time}){local if ahead <= 14 * 3600 else ''}; epochs are ordered by "
                "name, so one from the future would make every later upload look older. Name "
                f"the epoch with the current UTC time: {UTC_NAME_COMMANDS}",
            )
        if not parsed.time_valid:
            self.log.warning(
                "epoch.notice",
                district=district,
                epoch=name,
                code="epoch_time_invalid",
                message="epoch name has an impossible time; accepted",
            )

    def _check_inside(self, district: str, operation: str, epoch: str, rest: list[str]) -> None:
        if self.registry.is_submitted(district, epoch):
            raise Denied(
                "epoch_submitted",
                f"epoch {epoch} is complete and was submitted for processing; it cannot "
                "change any more. Upload changes as a new epoch with a new timestamp.",
            )
        if operation in ("mkdir", "rename_target_dir"):
            raise Denied(
                "epoch_subdirectory",
                "epoch directories hold files only; upload the CSV files directly "
                f"into /upload/{epoch}/",
            )
        leaf = rest[-1]
        if operation in ("open", "rename_target") and leaf in REPORT_NAMES and len(rest) == 1:
            raise Denied("report_name_reserved", _reserved(leaf, leaf))
        if operation in ("open", "rename_target") and is_misnamed_marker(leaf):
            raise Denied(
                "marker_misnamed",
                f"{leaf!r} is not the marker: name it exactly {MARKER} (upper case, "
                "no extension), an empty file uploaded after the CSV files",
            )
