"""The generic CSV API for users.csv: streaming validation with a code for every mistake.

The file is read line by line (never loaded whole), so memory stays flat whatever its size,
except for the sets that detect duplicate keys. Every finding carries a stable code, the
line, the column, an excerpt of the value and a message that says what to do. File-level
findings reject the file; row-level findings skip the row (see docs/csv-api.md).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path

from ingest.epochs.handoff import Finding

FILE_NAME = "users.csv"
REQUIRED = ("Email", "First Name", "Last Name")
OPTIONAL = ("Middle Name", "Staff Id", "Title", "Role", "Buildings", "Deleted")
COLUMNS = REQUIRED + OPTIONAL
MAX_LENGTHS = {
    "Email": 254,
    "First Name": 100,
    "Last Name": 100,
    "Middle Name": 100,
    "Staff Id": 20,
    "Title": 200,
}
TRUE_VALUES = frozenset({"true", "yes", "y", "1"})
FALSE_VALUES = frozenset({"", "false", "no", "n", "0"})
_DELETED_VALUES = TRUE_VALUES | FALSE_VALUES
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$")
_STAFF_ID = re.compile(r"^[A-Za-z0-9]+$")
_EXCERPT = 60


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 512 * 1024 * 1024
    max_field_length: int = 1000
    max_bad_row_share: float = 0.05
    max_findings: int = 10_000  # beyond this only counts are kept


@dataclass(frozen=True)
class UserRow:
    line: int
    email: str
    first_name: str
    last_name: str
    middle_name: str
    staff_id: str
    title: str
    assignments: tuple[tuple[str, tuple[str, ...]], ...]  # (role, buildings)
    deleted: bool


@dataclass
class ValidationReport:
    rows: int = 0
    valid_rows: int = 0
    bad_rows: int = 0
    file_errors: list[Finding] = field(default_factory=list)
    row_errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    dropped_findings: int = 0
    skipped_keys: set[str] = field(default_factory=set)  # e-mails of skipped rows
    unkeyed_bad_rows: int = 0  # skipped rows whose e-mail could not be read

    @property
    def rejected(self) -> bool:
        return bool(self.file_errors)

    @property
    def errors(self) -> list[Finding]:
        return [*self.file_errors, *self.row_errors]


def excerpt(value: str) -> str:
    return value if len(value) <= _EXCERPT else value[: _EXCERPT - 1] + "…"


def _fold(header: str) -> str:
    """Fold the ways a header goes wrong: case, spaces, BOM, NBSP, separators."""
    return re.sub(r"[\s_\-.\ufeff\u00a0]+", "", header).lower().replace("address", "")


_FOLDED = {_fold(c): c for c in COLUMNS}
_ALIASES = {
    "mail": "Email",
    "firstname": "First Name",
    "givenname": "First Name",
    "lastname": "Last Name",
    "surname": "Last Name",
    "familyname": "Last Name",
    "middlename": "Middle Name",
    "staffid": "Staff Id",
    "employeeid": "Staff Id",
    "roles": "Role",
    "building": "Buildings",
    "delete": "Deleted",
}


def meant_column(header: str) -> str | None:
    folded = _fold(header)
    if folded in _FOLDED:
        return _FOLDED[folded]
    if folded in _ALIASES:
        return _ALIASES[folded]
    close = get_close_matches(folded, list(_FOLDED), n=1, cutoff=0.8)
    return _FOLDED[close[0]] if close else None


class _Validator:
    def __init__(
        self,
        limits: Limits,
        buildings: frozenset[str] | None,
        on_row: Callable[[UserRow], None] | None,
        file: str,
    ) -> None:
        self.limits = limits
        self.buildings = buildings
        self.on_row = on_row
        self.file = file
        self.report = ValidationReport()
        self.emails: dict[str, int] = {}
        self.width = 0  # fields per row, from the header
        self.staff_ids: dict[str, int] = {}

    # --- findings --------------------------------------------------------------------

    def _add(
        self,
        bucket: list[Finding],
        code: str,
        message: str,
        line: int | None = None,
        column: str | None = None,
        value: str | None = None,
    ) -> None:
        listed = len(self.report.row_errors) + len(self.report.warnings)
        if bucket is not self.report.file_errors and listed >= self.limits.max_findings:
            self.report.dropped_findings += 1  # counted, not listed; file errors always are
            return
        bucket.append(
            Finding(
                code,
                message,
                self.file,
                line,
                column,
                excerpt(value) if value is not None else None,
            )
        )

    def file_error(
        self, code: str, message: str, line: int | None = None, value: str | None = None
    ) -> None:
        self._add(self.report.file_errors, code, message, line, value=value)

    def warn(
        self,
        code: str,
        message: str,
        line: int | None = None,
        column: str | None = None,
        value: str | None = None,
    ) -> None:
        self._add(self.report.warnings, code, message, line, column, value)

    # --- reading ---------------------------------------------------------------------

    def lines(self, path: Path) -> Iterator[tuple[int, str]]:
        """(line number, text) of each physical line, decoded; file-level problems are
        recorded and end the iteration."""
        size = path.stat().st_size
        if size == 0:
            self.file_error(
                "file_empty",
                f"{self.file} is empty; export it again with a "
                "header row and at least one data row",
            )
            return
        if size > self.limits.max_file_bytes:
            self.file_error(
                "file_too_large",
                f"{self.file} is {size} bytes; the limit is {self.limits.max_file_bytes} bytes",
            )
            return
        with path.open("rb") as fh:
            offset = 0
            for number, raw in enumerate(fh, start=1):
                if number == 1:
                    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or raw[1:2] == b"\x00":
                        self.file_error(
                            "encoding_utf16",
                            f"{self.file} is UTF-16 (Excel's 'Unicode Text'); save it from "
                            "Excel as 'CSV UTF-8 (Comma delimited) (*.csv)'",
                            line=1,
                        )
                        return
                    if raw.startswith(b"\xef\xbb\xbf"):
                        raw, offset = raw[3:], 3
                if b"\x00" in raw:
                    self.file_error(
                        "nul_bytes",
                        f"line {number} contains NUL bytes: this is "
                        "not a text CSV file; export it again as CSV UTF-8",
                        line=number,
                    )
                    return
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    bad = raw[exc.start : exc.end + 2].hex(" ")
                    self.file_error(
                        "encoding_invalid",
                        f"line {number} is not UTF-8 (byte offset {offset + exc.start} in the "
                        f"file, bytes {bad}); this usually means Windows-1252 from Excel: "
                        "save as 'CSV UTF-8 (Comma delimited) (*.csv)'",
                        line=number,
                        value=bad,
                    )
                    return
                offset += len(raw)
                yield number, text.rstrip("\r\n")

    # --- validation ------------------------------------------------------------------

    def run(self, path: Path) -> ValidationReport:
        lines = self.lines(path)
        header = next(lines, None)
        if header is None:
            return self.report
        columns = self.header(*header)
        if columns is None:
            for _ in lines:  # keep scanning for file-level encoding problems
                pass
            return self.report
        pending: tuple[int, str] | None = None
        for number, text in lines:
            if pending is not None:  # a quoted field went on over a line break
                start, joined = pending
                joined += "\n" + text
                if _quote_open(joined):
                    pending = (start, joined)
                    continue
                pending = None
                self.report.rows += 1
                self.bad_row(
                    "newline_in_field",
                    "a field contains a line break; fields "
                    "must be on one line (remove line breaks from the cell)",
                    start,
                )
                continue
            if not text.strip():
                continue  # blank lines (Excel leaves them at the end) are not rows
            if _quote_open(text):
                pending = (number, text)
                continue
            self.report.rows += 1
            self.row(number, text, columns)
        if pending is not None:
            self.report.rows += 1
            self.bad_row(
                "quote_unbalanced",
                "a quote opened here is never closed; quote "
                'fields as "..." and double quotes inside them',
                pending[0],
            )
        if not self.report.file_errors and self.report.rows == 0:
            self.file_error("no_data_rows", f"{self.file} has a header but no data rows")
        rows = self.report.rows
        if rows and self.report.bad_rows > self.limits.max_bad_row_share * rows:
            share = 100 * self.report.bad_rows / rows
            self.file_error(
                "too_many_bad_rows",
                f"{self.report.bad_rows} of {rows} rows ({share:.1f} %) have errors, more "
                f"than the {100 * self.limits.max_bad_row_share:g} % allowed: this looks "
                "like a broken export, so the whole file is rejected",
            )
        return self.report

    def header(self, number: int, text: str) -> dict[str, int] | None:
        fields = _parse(text)
        if fields is None:
            self.file_error(
                "quote_unbalanced", "the header row has an unbalanced quote", number, text
            )
            return None
        if len(fields) == 1 and any(sep in text for sep in ("\t", ";")):
            kind = "tab" if "\t" in text else "semicolon"
            self.file_error(
                "delimiter_invalid",
                f"the file is {kind}-separated; the CSV API uses commas (in Excel: "
                "'CSV UTF-8 (Comma delimited)')",
                number,
                text,
            )
            return None
        self.width = len(fields)
        columns: dict[str, int] = {}
        for index, name in enumerate(fields):
            if name in COLUMNS:
                if name in columns:
                    self.file_error(
                        "column_duplicate", f"column {name!r} appears twice", number, name
                    )
                columns[name] = index
                continue
            meant = meant_column(name)
            if meant is not None:
                self.file_error(
                    "column_misnamed",
                    f"column {name!r} should be named exactly "
                    f"{meant!r} (headers are exact and case sensitive)",
                    number,
                    name,
                )
            else:
                self.warn(
                    "column_unknown",
                    f"column {name!r} is not part of the CSV API and was ignored",
                    number,
                    value=name,
                )
        for required in REQUIRED:
            if required not in columns and not any(
                f.code == "column_misnamed" and f"{required!r}" in f.message
                for f in self.report.file_errors
            ):
                self.file_error(
                    "column_missing",
                    f"required column {required!r} is missing; "
                    f"the header must include {', '.join(REQUIRED)}",
                    number,
                )
        return None if self.report.file_errors else columns

    def bad_row(
        self,
        code: str,
        message: str,
        line: int,
        column: str | None = None,
        value: str | None = None,
        key: str = "",
    ) -> None:
        self._skipped(key)
        self._add(self.report.row_errors, code, message, line, column, value)

    def _skipped(self, key: str) -> None:
        """Count a skipped row; remember its e-mail (a full sync must not delete the
        account of a row that was only skipped for an error)."""
        self.report.bad_rows += 1
        if key:
            self.report.skipped_keys.add(key.lower())
        else:
            self.report.unkeyed_bad_rows += 1

    def row(self, number: int, text: str, columns: dict[str, int]) -> None:
        fields = _parse(text)
        if fields is None:
            self.bad_row(
                "quote_unbalanced",
                "a quote in this row is not balanced; quote "
                'fields as "..." and double quotes inside them',
                number,
                value=text,
            )
            return
        if len(fields) != self.width:
            self.bad_row(
                "row_length",
                f"this row has {len(fields)} fields, the header has "
                f"{self.width}; check for unquoted commas",
                number,
                value=text,
            )
            return
        value = {name: fields[index].strip() for name, index in columns.items()}
        problems = list(self.check_values(value))
        if problems:
            self._skipped(value.get("Email", ""))
            for code, message, column in problems:
                self._add(
                    self.report.row_errors,
                    code,
                    message,
                    number,
                    column,
                    value.get(column, "") if column else None,
                )
            return
        email = value["Email"].lower()
        first = self.emails.setdefault(email, number)
        if first != number:
            self.bad_row(
                "key_duplicate",
                f"e-mail {email} also appears on line {first}; each account once",
                number,
                "Email",
                email,
                key=email,
            )
            return
        staff_id = value.get("Staff Id", "")
        if staff_id:
            seen = self.staff_ids.setdefault(staff_id, number)
            if seen != number:
                self.bad_row(
                    "staff_id_duplicate",
                    f"Staff Id {staff_id} also appears on line {seen}",
                    number,
                    "Staff Id",
                    staff_id,
                    key=email,
                )
                return
        self.report.valid_rows += 1
        if self.on_row is not None:
            self.on_row(
                UserRow(
                    number,
                    email,
                    value["First Name"],
                    value["Last Name"],
                    value.get("Middle Name", ""),
                    staff_id,
                    value.get("Title", ""),
                    _assignments(value.get("Role", ""), value.get("Buildings", "")),
                    value.get("Deleted", "").lower() in TRUE_VALUES,
                )
            )

    def check_values(self, value: dict[str, str]) -> Iterator[tuple[str, str, str]]:
        for name, text in value.items():
            limit = MAX_LENGTHS.get(name, self.limits.max_field_length)
            if len(text) > limit:
                yield "value_too_long", f"{name} is {len(text)} characters; at most {limit}", name
        for name in REQUIRED:
            if not value.get(name):
                yield "value_required", f"{name} is required", name
        email = value.get("Email", "")
        if email and not _EMAIL.fullmatch(email):
            yield "value_invalid", f"{email!r} is not an e-mail address", "Email"
        staff_id = value.get("Staff Id", "")
        if staff_id and not _STAFF_ID.fullmatch(staff_id):
            yield "value_invalid", "Staff Id must be letters and digits only", "Staff Id"
        deleted = value.get("Deleted", "").lower()
        if deleted not in _DELETED_VALUES:
            yield (
                "value_invalid",
                f"Deleted must be true/false, yes/no, y/n or 1/0, not {value.get('Deleted')!r}",
                "Deleted",
            )
        roles = [r.strip() for r in value.get("Role", "").split(";")] if value.get("Role") else []
        groups = value.get("Buildings", "").split(";") if value.get("Buildings") else []
        if roles and len(groups) != len(roles):
            yield (
                "roles_buildings_mismatch",
                f"{len(roles)} role(s) but {len(groups)} "
                "building group(s): give one group of buildings per role, separated by ';' "
                "in the same order",
                "Buildings",
            )
        elif self.buildings is not None:
            for group in groups:
                for building in (b.strip() for b in group.split(",")):
                    if building and building not in self.buildings:
                        close = get_close_matches(building, list(self.buildings), n=1)
                        hint = f"; did you mean {close[0]!r}?" if close else ""
                        yield (
                            "building_unknown",
                            f"building {building!r} is not in the district's building list{hint}",
                            "Buildings",
                        )


def _assignments(role: str, buildings: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not role:
        return ()
    roles = [r.strip() for r in role.split(";")]
    groups = buildings.split(";")
    return tuple(
        (r, tuple(b.strip() for b in g.split(",") if b.strip()))
        for r, g in zip(roles, groups, strict=True)
    )


def _quote_open(text: str) -> bool:
    """True when ``text`` ends inside a quoted field (RFC 4180: "" is a quote inside)."""
    if text.count('"') % 2 == 0:
        return False  # fast path: quoted fields hold an even number of quotes
    inside = False
    field_start = True
    just_closed = False
    for char in text:
        if inside:
            if char == '"':
                inside, just_closed = False, True
            continue
        if char == '"' and (field_start or just_closed):
            inside = True
        field_start = char == ","
        just_closed = False
    return inside


def _parse(text: str) -> list[str] | None:
    try:
        return next(csv.reader([text], strict=True))
    except (csv.Error, StopIteration):
        return None


def validate_users_csv(
    path: Path,
    limits: Limits | None = None,
    buildings: frozenset[str] | None = None,
    on_row: Callable[[UserRow], None] | None = None,
) -> ValidationReport:
    """Validate one users.csv; ``on_row`` receives each valid row as it is read."""
    return _Validator(limits or Limits(), buildings, on_row, path.name).run(path)
