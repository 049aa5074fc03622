"""The district's view of what happened: report.json for machines, report.txt for people."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from ingest.epochs.handoff import Finding
from ingest.epochs.names import auto_source
from ingest.text import formula_safe, printable

if TYPE_CHECKING:  # the offline validator uses group_findings without the ledger
    from ingest.epochs.ledger import EpochRecord

REPORT_JSON = "report.json"
REPORT_TXT = "report.txt"
ERRORS_CSV = "errors.csv"
CHANGES_CSV = "changes.csv"  # Processor.reports of the provisioning processor
REPORT_NAMES = frozenset({REPORT_JSON, REPORT_TXT, ERRORS_CSV, CHANGES_CSV})
INDEX_JSON = "index.json"  # in the district's root: every epoch, for scripts
MAX_INDEXED = 200
# Excel reads a CSV file without one as the system's code page: josé shows as josÃ©.
UTF8_BOM = "\ufeff"
MAX_LISTED_PER_CODE = 20
_DETAILS = frozenset({"would_delete"})

_HEADLINES = {
    "applied": "Your upload was processed.",
    "rejected": "Your upload was REJECTED: nothing was changed.",
    "held": "Your upload is ON HOLD: nothing was changed yet; an operator will review it.",
    "superseded": "Your upload was NOT applied: a newer upload was already applied.",
    "failed": "Your upload could not be processed because of a server error; nothing was "
    "changed. The operators have been alerted and will reprocess it.",
}


def report_json(record: EpochRecord) -> dict[str, Any]:
    outcome = record.outcome
    warnings = [*record.warnings, *(outcome.warnings if outcome else ())]
    return {
        "district": record.district,
        "epoch": record.name,
        "status": record.state,
        "message": outcome.message if outcome else "",
        "origin": record.origin,
        "received_at": record.received_at,
        "finished_at": record.finished_at,
        "files": files_json(record),
        "counts": outcome.summary if outcome else {},
        "errors": [f.to_json() for f in (outcome.errors if outcome else ())],
        "warnings": [f.to_json() for f in warnings],
        "retired_at": record.retired_at,
        "forced_at": record.forced_at,
        "operator_actions": [vars(a) for a in record.actions],
    }


def files_json(record: EpochRecord) -> list[dict[str, Any]]:
    """The epoch's files; for one the server made from an ``_auto.csv`` upload, also the
    name it was uploaded as (``uploaded_as``), which is what the district's script knows."""
    if record.origin != "auto":
        return [vars(f) for f in record.files]
    return [{**vars(f), "uploaded_as": auto_source(f.name)} for f in record.files]


def render_json(record: EpochRecord) -> str:
    return json.dumps(report_json(record), indent=2, ensure_ascii=False) + "\n"


def render_index(district: str, records: list[EpochRecord]) -> str:
    """The district's epochs, newest first (at most MAX_INDEXED): a script finds the
    result of its upload by the sha256 of the file it sent, whatever the epoch's name (an
    ``_auto.csv`` upload does not learn it)."""
    newest = sorted(records, key=lambda r: r.name, reverse=True)[:MAX_INDEXED]
    epochs = [
        {
            "epoch": r.name,
            "origin": r.origin,
            "status": r.state,
            "received_at": r.received_at,
            "finished_at": r.finished_at,
            "published": r.published_at is not None,
            "files": files_json(r),
            "counts": r.outcome.summary if r.outcome else {},
            "report": f"/upload-processed/{r.name}/{REPORT_JSON}",
        }
        for r in newest
    ]
    return json.dumps({"district": district, "epochs": epochs}, indent=2) + "\n"


def render_text(record: EpochRecord) -> str:
    data = report_json(record)
    lines = [
        f"Upload report for {record.district}, epoch {record.name}",
        "",
        _HEADLINES.get(record.state, f"Status: {record.state}"),
    ]
    if data["message"]:
        lines.append(data["message"])
    if record.forced_at:
        lines.append(
            f"An operator had it applied on {record.forced_at} although a newer upload had "
            "been applied before it."
        )
    if record.retired_at:
        lines.append(
            f"An operator took it out of the epoch order on {record.retired_at}: it no longer "
            "counts as your newest upload (the accounts it changed stay as they are)."
        )
    if record.actions:
        lines += ["", "What operators did:"]
        lines += [f"  {action.describe()}" for action in record.actions]
    lines += [
        "",
        f"Status:   {record.state}",
        f"Received: {record.received_at}",
        f"Finished: {record.finished_at}",
    ]
    if record.files:
        lines += ["", "Files:"]
        lines += [f"  {f.name}  ({f.size} bytes, sha256 {f.sha256})" for f in record.files]
    if data["counts"]:
        lines += ["", "Counts:"]
        lines += [f"  {key}: {value}" for key, value in data["counts"].items()]
    for title, findings in (("Errors", data["errors"]), ("Warnings", data["warnings"])):
        if findings:
            lines += ["", f"{title} ({len(findings)}):"]
            lines += group_findings([Finding.from_json(f) for f in findings])
    lines += [
        "",
        "Every code is explained in the ingest documentation: docs/districts.md (uploads, "
        "epochs, statuses) and docs/csv-api.md (the content of users.csv); ask your "
        "operator for them. /README.txt in your SFTP folder has the essentials.",
    ]
    # File names and values come from the district's files: nothing in them may act on
    # the terminal or the editor that shows the report.
    return printable("\n".join(lines) + "\n", keep="\n")


def group_findings(findings: list[Finding]) -> list[str]:
    """Group by code, biggest group first, at most MAX_LISTED_PER_CODE each."""
    groups: dict[str, list[Finding]] = defaultdict(list)
    for finding in findings:
        groups[finding.code].append(finding)
    lines = []

    # Lists that explain another finding (the accounts a held upload would delete) come
    # after it, however long they are: the decision first, the details after.
    def order(group: tuple[str, list[Finding]]) -> tuple[bool, int, str]:
        return group[0] in _DETAILS, -len(group[1]), group[0]

    for code, items in sorted(groups.items(), key=order):
        lines.append(f"  [{code}] x{len(items)}")
        for item in items[:MAX_LISTED_PER_CODE]:
            where = ":".join(str(p) for p in (item.file, item.line) if p is not None)
            who = f" ({item.email})" if item.email else ""
            # The value, unless the message shows it already (most do, quoted).
            shown = item.value is None or not item.value or repr(item.value) in item.message
            value = "" if shown else f" [{item.column or 'value'}: {item.value!r}]"
            lines.append(f"    {where}{who}{': ' if where or who else ''}{item.message}{value}")
        if len(items) > MAX_LISTED_PER_CODE:
            lines.append(f"    ... and {len(items) - MAX_LISTED_PER_CODE} more")
    return lines


def render_errors_csv(record: EpochRecord) -> str | None:
    """One row per row-level error (those with a line number), or None when there are
    none. Starts with a UTF-8 BOM for Excel; every cell formula-safe and printable."""
    outcome = record.outcome
    rows = [f for f in (outcome.errors if outcome else ()) if f.line is not None]
    if not rows:
        return None
    out = io.StringIO()
    out.write(UTF8_BOM)
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["file", "line", "email", "column", "code", "message", "value"])
    for f in rows:
        writer.writerow(
            [
                formula_safe(None if v is None else printable(str(v)))
                for v in (f.file, f.line, f.email, f.column, f.code, f.message, f.value)
            ]
        )
    return out.getvalue()
