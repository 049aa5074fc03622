"""Offline validation: the same checks as the server, no state touched, standard library only.

A district runs it in its nightly job before uploading (``validate-users.pyz`` in its
root, built from this module by ``ingest validator build``: a stock Python 3.11 and
nothing else); an operator runs it as ``ingest validate`` on a file a district sent by
e-mail. It answers in the server's own words: "would be applied: 39 rows, 1 skipped",
"would be rejected", or, for an epoch directory without ``COMPLETE``, "would wait".

Everything this module imports must stay within the standard library and the modules
listed in ``ingest/provisioning/validator.py`` (a test runs the zipapp in a bare venv).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ingest.epochs.handoff import Finding
from ingest.epochs.names import MARKER, is_misnamed_marker, is_temp_name, parse_epoch_name
from ingest.epochs.reports import REPORT_NAMES, group_findings
from ingest.provisioning.csvapi import FILE_NAME, Limits, validate_users_csv
from ingest.provisioning.filenames import check_file_names, stand_in
from ingest.text import printable

Verdict = Literal["applied", "rejected", "waiting"]
_VERDICTS = {
    "applied": "would be applied",
    "rejected": "would be REJECTED: nothing would be changed",
    "waiting": "would WAIT: the server applies nothing until the epoch is complete",
}


@dataclass
class OfflineResult:
    path: str
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    rejected: bool = False  # a file-level error (row errors only skip their rows)
    waiting: bool = False  # an epoch directory the server would not take yet

    @property
    def verdict(self) -> Verdict:
        if self.waiting:
            return "waiting"
        return "rejected" if self.rejected else "applied"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "verdict": self.verdict,
            "valid": not self.errors and not self.waiting,
            "counts": self.counts,
            "errors": [f.to_json() for f in self.errors],
            "warnings": [f.to_json() for f in self.warnings],
        }

    def render(self) -> str:
        headline = _VERDICTS[self.verdict]
        if self.verdict == "applied" and self.counts:
            valid, skipped = self.counts["valid"], self.counts["skipped"]
            headline += f": {valid} row{'s' * (valid != 1)}, {skipped} skipped"
            headline += " for errors (listed below)" if skipped else ""
        lines = [f"{self.path}: {headline}"]
        if self.counts:
            lines.append("  " + ", ".join(f"{k}: {v}" for k, v in self.counts.items()))
        for title, findings in (("Errors", self.errors), ("Warnings", self.warnings)):
            if findings:
                lines += [f"{title} ({len(findings)}):", *group_findings(findings)]
        # Names and values come from the file: nothing in them may act on the terminal.
        return printable("\n".join(lines) + "\n", keep="\n")


def validate_path(
    path: Path, limits: Limits | None = None, buildings: frozenset[str] | None = None
) -> OfflineResult:
    """Validate a users.csv, or an epoch directory (its marker and file names, then its
    users.csv, or the file meant to be it)."""
    result = OfflineResult(str(path))
    if path.is_dir():
        target = _check_directory(path, result)
        if target is None:
            return result
    elif path.is_file():
        target = path
        if path.name != FILE_NAME:
            result.warnings.append(
                Finding(
                    "file_misnamed",
                    f"the server only reads a file named exactly {FILE_NAME}; "
                    f"rename {path.name} before uploading",
                    file=path.name,
                )
            )
    else:
        raise FileNotFoundError(f"{path} is neither a file nor a directory")
    report = validate_users_csv(target, limits, buildings)
    result.errors += report.errors
    result.warnings += report.warnings
    result.rejected = result.rejected or report.rejected
    result.counts = {"rows": report.rows, "valid": report.valid_rows, "skipped": report.bad_rows}
    return result


def _check_directory(path: Path, result: OfflineResult) -> Path | None:
    """The epoch directory's own rules: a name the server accepts, COMPLETE present and
    exact, the files the CSV API knows. Returns the file whose content to validate."""
    entries = sorted(p.name for p in path.iterdir() if p.is_file())
    epoch = parse_epoch_name(path.name)
    if epoch is None:
        result.warnings.append(
            Finding(
                "epoch_name_invalid",
                f"{path.name!r} is not an epoch name: upload these files into "
                "/upload/YYYYMMDD-HHMMSS/ named with the current UTC time",
            )
        )
    elif not epoch.time_valid:
        result.warnings.append(
            Finding(
                "epoch_time_invalid",
                f"{path.name} is not a real time of day; the server accepts it, but names "
                "decide the order of epochs: use the current UTC time",
            )
        )
    misnamed = [n for n in entries if is_misnamed_marker(n)]
    for name in misnamed:
        # The server refuses it at upload: a script that stops at the first error (sftp
        # -b, WinSCP) never sends what follows, COMPLETE included, and the epoch waits.
        result.waiting = True
        result.errors.append(
            Finding(
                "marker_misnamed",
                f"{name!r} is not the marker: the server refuses it. Name it exactly "
                f"{MARKER} (upper case, no extension), an empty file uploaded last",
                file=name,
            )
        )
    for name in (n for n in entries if is_temp_name(n) and n not in misnamed):
        result.warnings.append(
            Finding(
                "temp_file_ignored",
                f"{name} has a temporary name and would not be processed; make sure the "
                "transfer renames it before COMPLETE",
                file=name,
            )
        )
    if MARKER not in entries:
        result.waiting = True
        result.errors.append(
            Finding(
                "marker_missing",
                f"there is no {MARKER}: the server waits for it and applies nothing. Upload "
                f"an empty file named exactly {MARKER} last, after every other file",
            )
        )
    elif (path / MARKER).stat().st_size:
        result.warnings.append(
            Finding(
                "marker_not_empty",
                f"{MARKER} should be an empty file; its content is ignored",
                file=MARKER,
            )
        )
    names = [
        n
        for n in entries
        if n != MARKER and n not in REPORT_NAMES and not is_temp_name(n) and n not in misnamed
    ]
    sizes = {n: (path / n).stat().st_size for n in names}
    errors, warnings = check_file_names(names, sizes)
    result.rejected = result.rejected or bool(errors)
    result.errors += errors
    result.warnings += warnings
    if FILE_NAME in names:
        return path / FILE_NAME if sizes[FILE_NAME] else None
    meant = stand_in(names, sizes, FILE_NAME)
    return path / meant if meant else None


def read_buildings(path: Path) -> frozenset[str]:
    """A building list as the server keeps it: one name a line, blank lines ignored (the
    district's buildings.txt, from its root)."""
    return frozenset(
        line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()
    )


def main(argv: Sequence[str] | None = None, limits: Limits | None = None) -> int:
    """The command line of the district's validator (``python3 validate-users.pyz``).
    Exit status: 0 would be applied, 1 would be rejected or wait, 2 usage errors."""
    parser = argparse.ArgumentParser(
        prog="validate-users",
        description="Check users.csv, or an epoch directory, with the server's own rules "
        "before you upload it. Nothing is sent anywhere.",
    )
    parser.add_argument("path", type=Path, help="users.csv or an epoch directory")
    parser.add_argument(
        "--buildings",
        type=Path,
        metavar="FILE",
        help="your district's building list (buildings.txt from your SFTP root)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    # A Windows console or a redirected output may not take every character of a file's
    # names and values: escaped, never a UnicodeEncodeError halfway through the report.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        buildings = read_buildings(args.buildings) if args.buildings else None
        result = validate_path(args.path, limits, buildings)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"validate-users: {printable(str(exc))}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_json(), indent=2) if args.json else result.render(), end="")
    return 0 if result.verdict == "applied" else 1
