"""Offline validation (``ingest validate``): the same checks as the server, no state touched.

A district can run it in its nightly job before uploading; an operator can run it on a
file a district sent by e-mail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.epochs.handoff import Finding
from ingest.epochs.names import MARKER, is_temp_name
from ingest.epochs.reports import REPORT_NAMES, group_findings
from ingest.provisioning.csvapi import FILE_NAME, Limits, validate_users_csv
from ingest.provisioning.filenames import check_file_names


@dataclass
class OfflineResult:
    path: str
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "valid": not self.errors,
            "counts": self.counts,
            "errors": [f.to_json() for f in self.errors],
            "warnings": [f.to_json() for f in self.warnings],
        }

    def render(self) -> str:
        lines = [f"{self.path}: {'VALID' if not self.errors else 'NOT VALID'}"]
        if self.counts:
            lines.append("  " + ", ".join(f"{k}: {v}" for k, v in self.counts.items()))
        for title, findings in (("Errors", self.errors), ("Warnings", self.warnings)):
            if findings:
                lines += [f"{title} ({len(findings)}):", *group_findings(findings)]
        return "\n".join(lines) + "\n"


def validate_path(path: Path, limits: Limits | None = None) -> OfflineResult:
    """Validate a users.csv, or an epoch directory (its file names, then its users.csv)."""
    result = OfflineResult(str(path))
    if path.is_dir():
        names = sorted(
            p.name
            for p in path.iterdir()
            if p.is_file()
            and p.name != MARKER
            and p.name not in REPORT_NAMES
            and not is_temp_name(p.name)
        )
        sizes = {n: (path / n).stat().st_size for n in names}
        errors, warnings = check_file_names(names, sizes)
        result.errors += errors
        result.warnings += warnings
        target = path / FILE_NAME
        if not target.is_file() or sizes.get(FILE_NAME, 0) == 0:
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
    report = validate_users_csv(target, limits)
    result.errors += report.errors
    result.warnings += report.warnings
    result.counts = {"rows": report.rows, "valid": report.valid_rows, "skipped": report.bad_rows}
    return result
