"""The file-name rules of the CSV API, and the processor that applies only those.

``FileNameProcessor`` is the default processor until account provisioning lands: it
checks that an epoch holds the files the API expects, named exactly, and reports the rest.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager, nullcontext
from difflib import get_close_matches
from typing import TYPE_CHECKING

from ingest.epochs.handoff import ClaimedEpoch, Finding, Outcome

if TYPE_CHECKING:  # the offline validator runs without the store (stdlib only)
    from ingest.epochs.ledger import EpochRecord
    from ingest.store.db import Database

API_FILES = ("users.csv",)
REQUIRED_FILES = ("users.csv",)


def _normalised(name: str) -> str:
    """Fold the usual ways a file name goes wrong: case, doubled or wrong extension,
    _auto suffix, singular/plural, spaces."""
    stem = name.strip().lower().replace(" ", "")
    for extension in (".csv", ".txt", ".tsv", ".xlsx", ".xls"):
        while stem.endswith(extension):
            stem = stem[: -len(extension)]
    stem = stem.removesuffix("_auto")
    return stem if stem.endswith("s") else stem + "s"


def meant_file(name: str) -> str | None:
    """The API file ``name`` was probably meant to be, or None."""
    if name in API_FILES:
        return None
    for expected in API_FILES:
        if _normalised(name) == _normalised(expected):
            return expected
    close = get_close_matches(name.lower(), API_FILES, n=1, cutoff=0.75)
    return close[0] if close else None


def stand_in(names: list[str], sizes: dict[str, int], expected: str) -> str | None:
    """The one non-empty file of ``names`` that was meant to be ``expected`` (``Users.csv``
    for users.csv) when ``expected`` itself is missing: its content is validated too, so
    that the district learns of its other mistakes in the same report."""
    if expected in names:
        return None
    meant = [n for n in names if meant_file(n) == expected and sizes.get(n, 0) > 0]
    return meant[0] if len(meant) == 1 else None


def check_file_names(
    names: list[str], sizes: dict[str, int]
) -> tuple[list[Finding], list[Finding]]:
    """(errors, warnings) about which files an epoch holds."""
    errors: list[Finding] = []
    warnings: list[Finding] = []
    misnamed: dict[str, str] = {}
    for name in names:
        if name in API_FILES:
            if sizes.get(name, 0) == 0:
                errors.append(
                    Finding(
                        "file_empty",
                        f"{name} is empty; export it again "
                        "with a header row and at least one data row",
                        file=name,
                    )
                )
            continue
        meant = meant_file(name)
        if meant is not None:
            misnamed[meant] = name
            errors.append(
                Finding(
                    "file_misnamed",
                    f"{name} is not a file name the CSV API knows; did you mean {meant}? "
                    "File names are exact and case sensitive.",
                    file=name,
                )
            )
        else:
            warnings.append(
                Finding(
                    "file_unknown",
                    f"{name} is not part of the CSV API ({', '.join(API_FILES)}) and was ignored",
                    file=name,
                )
            )
    for required in REQUIRED_FILES:
        if required not in names and required not in misnamed:
            errors.append(
                Finding(
                    "file_missing",
                    f"the epoch has no {required}; upload it into the epoch directory before "
                    "COMPLETE",
                    file=required,
                )
            )
    return errors, warnings


class FileNameProcessor:
    """Checks the epoch's file names; applies nothing (no account store yet)."""

    name = "filenames"

    def prepare(self, epoch: ClaimedEpoch, database: Database) -> AbstractContextManager[None]:
        return nullcontext()

    def reports(self, database: Database, record: EpochRecord) -> dict[str, str | None]:
        return {}

    def process(self, epoch: ClaimedEpoch, conn: sqlite3.Connection, prepared: None) -> Outcome:
        names = [f.name for f in epoch.files]
        errors, warnings = check_file_names(names, {f.name: f.size for f in epoch.files})
        summary = {"files": len(names)}
        if errors:
            return Outcome(
                "rejected",
                summary,
                tuple(errors),
                tuple(warnings),
                message="the epoch's files do not follow the CSV API; see errors",
            )
        return Outcome(
            "applied",
            summary,
            (),
            tuple(warnings),
            message="the files were checked and accepted (this server checks "
            "file names only; account provisioning is not enabled)",
        )
