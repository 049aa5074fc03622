"""The generic CSV API for users.csv: streaming validation with a code for every mistake.

The file goes through one ``csv.reader`` (never loaded whole) after a quick binary pass
that finds the encoding problems a text reader cannot place (line and byte offset). Valid
rows go to a :class:`~ingest.provisioning.staging.Stage`, a table in SQLite, which also
finds duplicate keys: the memory used stays flat whatever the file's size. Every finding
carries a stable code, the line, the column, an excerpt of the value and a message that
says what to do. File-level findings reject the file; row-level findings skip the row
(see docs/csv-api.md).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from difflib import get_close_matches
from operator import itemgetter
from pathlib import Path

from ingest.epochs.handoff import Finding
from ingest.provisioning.identity import EMAIL, email_problem, normalise
from ingest.provisioning.staging import BATCH, Stage, StagedRow
from ingest.text import FORMULA_START, hidden_characters

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
_STAFF_ID = re.compile(r"[A-Za-z0-9]+")
_SCIENTIFIC = re.compile(r"\d(?:[.,]\d+)?E[+-]?\d+", re.IGNORECASE)  # 1.23E+05
# Control characters but tab and line ends (which the CSV reader deals with): ESC, BEL...
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_EXCERPT = 60
_CHUNK = 1 << 20
# No valid row comes near this (every column at its length limit is a few tens of KB).
# A longer line is refused in the byte pass, so that the text pass never holds one in
# memory: a file without line breaks would otherwise be read as one line of the file's size.
MAX_LINE_BYTES = 1 << 20
_Getter = Callable[[list[str]], tuple[str, ...]]  # a row's COLUMNS, in order
# csv's own cap on one field; a longer one is almost always a quote that never closes
_CSV_FIELD_LIMIT = csv.field_size_limit()


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 512 * 1024 * 1024
    max_field_length: int = 1000
    max_bad_row_share: float = 0.05
    max_bad_rows_min: int = 10  # fewer bad rows never reject a file, whatever their share
    max_findings: int = 10_000  # beyond this only counts are kept


@dataclass
class ValidationReport:
    rows: int = 0
    valid_rows: int = 0
    bad_rows: int = 0
    file_errors: list[Finding] = field(default_factory=list)
    row_errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    dropped_findings: int = 0
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


def _character_boundary(chunk: bytes) -> int:
    """Where ``chunk`` can be cut without splitting a UTF-8 sequence: before a lead byte
    among its last three bytes whose sequence does not fit, else at its end (invalid
    bytes are left for the decoder to report)."""
    for back in range(1, min(4, len(chunk)) + 1):
        byte = chunk[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: ASCII or a lead byte
            needed = 2 if byte >= 0xC0 else 1
            needed = 3 if byte >= 0xE0 else needed
            needed = 4 if byte >= 0xF0 else needed
            return len(chunk) - back if needed > back else len(chunk)
    return len(chunk)


class _Validator:
    def __init__(
        self, limits: Limits, buildings: frozenset[str] | None, stage: Stage, file: str
    ) -> None:
        self.limits = limits
        self.buildings = buildings
        self.stage = stage
        self.file = file
        self.report = ValidationReport()
        self.width = 0  # fields per row, from the header
        # The raw bytes hold a control character somewhere: only then are the rows'
        # fields searched for one (a rare file pays, not every file).
        self.controls = False
        self.empty_rows: list[int] = []  # lines of rows with nothing but commas

    # --- findings --------------------------------------------------------------------

    def _add(
        self,
        bucket: list[Finding],
        code: str,
        message: str,
        line: int | None = None,
        column: str | None = None,
        value: str | None = None,
        email: str | None = None,
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
                email or None,
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

    def bad_row(
        self,
        code: str,
        message: str,
        line: int,
        column: str | None = None,
        value: str | None = None,
        key: str = "",
    ) -> None:
        self.skipped(key)
        self._add(self.report.row_errors, code, message, line, column, value)

    def skipped(self, key: str) -> None:
        """Count a skipped row; remember its e-mail (a full sync must not delete the
        account of a row that was only skipped for an error)."""
        self.report.bad_rows += 1
        if key:
            self.stage.keep(key.lower())
        else:
            self.report.unkeyed_bad_rows += 1

    # --- the bytes -------------------------------------------------------------------

    def check_bytes(self, path: Path) -> int | None:
        """File-level problems of the raw bytes; returns the line of the first encoding
        problem (0 when the file cannot be read as text at all), None when all is well."""
        size = path.stat().st_size
        if size == 0:
            self.file_error(
                "file_empty",
                f"{self.file} is empty; export it again with a "
                "header row and at least one data row",
            )
            return 0
        if size > self.limits.max_file_bytes:
            self.file_error(
                "file_too_large",
                f"{self.file} is {size} bytes; the limit is {self.limits.max_file_bytes} bytes",
            )
            return 0
        with path.open("rb") as fh:
            head = fh.read(4)
            if head.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
                self.file_error(
                    "file_is_workbook",
                    f"{self.file} is an Excel workbook (.xlsx or .xls) with a .csv name; "
                    "open it in Excel and use Save As 'CSV UTF-8 (Comma delimited) (*.csv)'",
                    line=1,
                )
                return 0
            if head.startswith((b"\xff\xfe", b"\xfe\xff")) or head[1:2] == b"\x00":
                self.file_error(
                    "encoding_utf16",
                    f"{self.file} is UTF-16 (Excel's 'Unicode Text'); save it from "
                    "Excel as 'CSV UTF-8 (Comma delimited) (*.csv)'",
                    line=1,
                )
                return 0
            # Chunks end on a character boundary: a UTF-8 sequence cut in two is carried
            # over (at most 3 bytes, whatever the file: no line end needed, so a file
            # without newlines costs what any other file of its size costs).
            fh.seek(3 if head.startswith(b"\xef\xbb\xbf") else 0)
            offset, lines, carry, open_line = fh.tell(), 1, b"", 0
            while chunk := fh.read(_CHUNK):
                chunk = carry + chunk
                cut = _character_boundary(chunk)
                chunk, carry = chunk[:cut], chunk[cut:]
                if not chunk:
                    continue
                if not self.controls and _CONTROL_BYTES.search(chunk):
                    self.controls = True
                line = self._check_chunk(chunk, offset, lines)
                if line is None:
                    open_line, line = self._check_line_lengths(chunk, open_line, lines)
                if line is not None:
                    return line
                offset += len(chunk)
                lines += chunk.count(b"\n")
            if carry:
                self.controls = self.controls or bool(_CONTROL_BYTES.search(carry))
                return self._check_chunk(carry, offset, lines)
        return None

    def _check_line_lengths(
        self, chunk: bytes, open_line: int, first_line: int
    ) -> tuple[int, int | None]:
        """No line longer than MAX_LINE_BYTES; ``open_line``: the bytes of the line still
        open at the end of the previous chunk. A look per MAX_LINE_BYTES / 2 bytes, not
        per line: a line at least that long covers one of those windows entirely, which
        then has no line end (so lines between half the limit and the limit pass)."""
        step = MAX_LINE_BYTES // 2
        first = chunk.find(b"\n")
        where: int | None = 0  # where the long line is (it may have begun before the chunk)
        if open_line + (len(chunk) if first == -1 else first) <= MAX_LINE_BYTES:
            windows = range(max(first, 0), len(chunk) - step, step)
            where = next((w for w in windows if chunk.find(b"\n", w, w + step) == -1), None)
        if where is not None:
            line = first_line + chunk.count(b"\n", 0, where)
            self.file_error(
                "line_too_long",
                f"a line from line {line} on is longer than {MAX_LINE_BYTES} bytes: this is "
                "not a users.csv with one row per line (a file without line breaks?); "
                "export it again as CSV UTF-8",
                line=line,
            )
            return 0, line
        last = chunk.rfind(b"\n")
        return (open_line + len(chunk) if last == -1 else len(chunk) - last - 1), None

    def _check_chunk(self, chunk: bytes, offset: int, first_line: int) -> int | None:
        nul = chunk.find(b"\x00")
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            if nul == -1 or exc.start < nul:
                line = first_line + chunk.count(b"\n", 0, exc.start)
                bad = chunk[exc.start : exc.end + 2].hex(" ")
                self.file_error(
                    "encoding_invalid",
                    f"line {line} is not UTF-8 (byte offset {offset + exc.start} in the "
                    f"file, bytes {bad}); this usually means Windows-1252 from Excel: "
                    "save as 'CSV UTF-8 (Comma delimited) (*.csv)'",
                    line=line,
                    value=bad,
                )
                return line
        if nul != -1:
            line = first_line + chunk.count(b"\n", 0, nul)
            self.file_error(
                "nul_bytes",
                f"line {line} contains NUL bytes: this is "
                "not a text CSV file; export it again as CSV UTF-8",
                line=line,
            )
            return line
        return None

    # --- the text --------------------------------------------------------------------

    def run(self, path: Path) -> ValidationReport:
        return self.finish() if self.scan(path) else self.report

    def scan(self, path: Path) -> bool:
        """The pass over the file; False when a file-level problem ended it early (the
        report is then complete), True when :meth:`finish` must follow."""
        bad_line = self.check_bytes(path)
        if bad_line == 0:
            return False
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
            reader = csv.reader(fh, strict=True)
            try:
                header = next(reader, None)
            except csv.Error:
                header = None
                self.file_error("quote_unbalanced", "the header row has an unbalanced quote", 1)
            if header is None and not self.report.file_errors:
                # Nothing but a byte-order mark (an empty "CSV UTF-8" export): without
                # this, a file of 0 rows would apply, and in full-sync mode delete.
                self.file_error(
                    "file_empty",
                    f"{self.file} holds nothing but a byte-order mark; export it again "
                    "with a header row and at least one data row",
                )
                return False
            if header is None or bad_line is not None:
                # Past a problem of the bytes (not UTF-8, NUL bytes, a line too long), the
                # text cannot be trusted, nor its lines' lengths bounded: the header only.
                if header is not None and bad_line != 1:
                    self.header(header)  # its problems are worth knowing too
                return False
            if reader.line_num != 1:
                self.file_error("newline_in_field", "the header row contains a line break", 1)
                return False
            # Whenever the header can be read, the rows are checked too, even when the file
            # is rejected already (a misnamed or repeated column): each mistake found now
            # saves the district a nightly round trip.
            getter = self.header(header)
            if getter is None:
                return False
            self.rows(reader, getter)
        return True

    def finish(self) -> ValidationReport:
        """After the pass: duplicate keys (found by the stage), then the file-level
        verdicts that need every row counted."""
        for dup in self.stage.duplicates():
            name = "e-mail" if dup.column == "Email" else dup.column
            self.report.valid_rows -= 1
            self.bad_row(
                dup.code,
                f"{name} {dup.value} also appears on line {dup.first_line}; each account once",
                dup.line,
                dup.column,
                dup.value,
                key=dup.email,
            )
        self.report.row_errors.sort(key=lambda f: f.line or 0)
        if not self.report.file_errors and self.report.rows == 0:
            self.file_error("no_data_rows", f"{self.file} has a header but no data rows")
        rows, bad = self.report.rows, self.report.bad_rows
        if (
            rows
            and bad > self.limits.max_bad_row_share * rows
            and bad >= self.limits.max_bad_rows_min
        ):
            share = 100 * bad / rows
            self.file_error(
                "too_many_bad_rows",
                f"{bad} of {rows} rows ({share:.1f} %) have errors, more than the "
                f"{100 * self.limits.max_bad_row_share:g} % allowed: this looks like a "
                "broken export, so the whole file is rejected",
            )
        if self.empty_rows:
            lines = ", ".join(str(n) for n in self.empty_rows[:20])
            more = f" and {len(self.empty_rows) - 20} more" if len(self.empty_rows) > 20 else ""
            self.warn(
                "rows_empty",
                f"{len(self.empty_rows)} row(s) with nothing but commas were skipped (lines "
                f"{lines}{more}); Excel leaves them when rows are cleared instead of deleted",
                self.empty_rows[0],
            )
        return self.report

    def header(self, fields: list[str]) -> _Getter | None:
        """Check the header; on success, a getter of the row's COLUMNS in order (a
        missing optional column reads the empty field appended to every row)."""
        text = ",".join(fields)
        if len(fields) == 1 and any(sep in text for sep in ("\t", ";")):
            kind = "tab" if "\t" in text else "semicolon"
            self.file_error(
                "delimiter_invalid",
                f"the file is {kind}-separated; the CSV API uses commas (in Excel: "
                "'CSV UTF-8 (Comma delimited)')",
                1,
                text,
            )
            return None
        self.width = len(fields)
        columns: dict[str, int] = {}
        misnamed: dict[str, int] = {}
        for index, name in enumerate(fields):
            if name in COLUMNS:
                if name in columns:
                    self.file_error("column_duplicate", f"column {name!r} appears twice", 1, name)
                    continue  # its rows are read from the first
                columns[name] = index
                continue
            meant = meant_column(name)
            if not name.strip():
                self.warn(
                    "column_empty",
                    f"column {index + 1} of the header has no name (Excel keeps a column "
                    "that once held something); it was ignored, but deleting it is tidier",
                    1,
                )
            elif meant is not None:
                self.file_error(
                    "column_misnamed",
                    f"column {name!r} should be named exactly "
                    f"{meant!r} (headers are exact and case sensitive)",
                    1,
                    name,
                )
                misnamed.setdefault(meant, index)  # its rows are read as that column
            else:
                self.warn(
                    "column_unknown",
                    f"column {name!r} is not part of the CSV API and was ignored",
                    1,
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
                    1,
                )
        if any(f.code in ("column_missing", "delimiter_invalid") for f in self.report.file_errors):
            return None
        # Rows are read even when a column is misnamed or repeated (the file is rejected
        # already): a misnamed column is read as the column it was meant to be.
        found = {**misnamed, **columns}
        getter: _Getter = itemgetter(*[found.get(name, self.width) for name in COLUMNS])
        return getter

    def rows(self, reader: Iterator[list[str]], getter: _Getter) -> None:
        """The hot loop: a row that passes the inline checks is staged as it is; any
        other goes through :meth:`check_values`, which names every problem."""
        report, width, known = self.report, self.width, self.buildings
        longest = self.limits.max_field_length
        email_ok = EMAIL.fullmatch
        deleted_values, true_values = _DELETED_VALUES, TRUE_VALUES
        formula = FORMULA_START
        control = _CONTROL.search if self.controls else None
        batch: list[StagedRow] = []
        line_num = reader.line_num  # type: ignore[attr-defined]
        rows = 0  # counted in a local (this loop runs once per row), added at the end
        while True:
            start = line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                line_num = reader.line_num  # type: ignore[attr-defined]
                rows += 1
                if self.quote_error(str(exc), start):
                    break  # the rest of the file cannot be read reliably
                continue
            line_num = reader.line_num  # type: ignore[attr-defined]
            # Blank lines and rows of commas only (Excel leaves them where rows were
            # cleared, not deleted) are not rows. A first field with text rules that out
            # at the cost of one test (the hot path).
            if (len(fields) != width or not fields[0]) and not any(f.strip() for f in fields):
                if len(fields) > 1:
                    self.empty_rows.append(start)
                continue
            if len(fields) != width:
                rows += 1
                if line_num != start:
                    self.newline_in_field(start)
                    continue
                self.bad_row(
                    "row_length",
                    f"this row has {len(fields)} fields, the header has "
                    f"{width}; check for unquoted commas",
                    start,
                    value=",".join(fields),
                )
                continue
            rows += 1
            if line_num != start:
                self.newline_in_field(start)
                continue
            fields.append("")
            email, first, last, middle, staff, title, role, buildings, deleted = map(
                str.strip, getter(fields)
            )
            if email.isascii():  # the common case: the shape is the whole check
                email_good = email_ok(email) is not None and not email.startswith(formula)
            else:  # identity.py: normalised, no hidden characters, one script a part
                email = normalise(email)
                email_good = email_problem(email) is None
            if (
                first
                and last
                and len(first) <= 100
                and len(last) <= 100
                and len(middle) <= 100
                and len(title) <= 200
                and len(email) <= 254
                and email_good
                and (not staff or (len(staff) <= 20 and staff.isascii() and staff.isalnum()))
                and (not deleted or deleted.lower() in deleted_values)
                and (not role or (buildings and role.count(";") == buildings.count(";")))
                and len(role) <= longest
                and len(buildings) <= longest
                and len(deleted) <= longest
                and (known is None or not buildings or self.all_known(buildings))
                and (
                    control is None
                    or not any(map(control, (first, last, middle, staff, title, role, buildings)))
                )
            ):
                batch.append(
                    (
                        start,
                        email.lower(),
                        first,
                        last,
                        middle,
                        staff,
                        title,
                        role,
                        buildings,
                        1 if deleted and deleted.lower() in true_values else 0,
                    )
                )
                if len(batch) >= BATCH:
                    self.stage.add_many(batch)
                    report.valid_rows += len(batch)
                    batch = []
                continue
            value = dict(
                zip(
                    COLUMNS,
                    (email, first, last, middle, staff, title, role, buildings, deleted),
                    strict=True,
                )
            )
            self.bad_values(start, value)
        report.rows += rows
        self.stage.add_many(batch)
        report.valid_rows += len(batch)

    def quote_error(self, error: str, line: int) -> bool:
        """Report a csv.Error of the row at ``line``; True when the rest of the file
        cannot be read reliably."""
        if "unexpected end of data" in error:
            self.bad_row(
                "quote_unbalanced",
                "a quote opened here is never closed; quote "
                'fields as "..." and double quotes inside them',
                line,
            )
        elif "field larger than field limit" in error:
            self.file_error(
                "quote_unbalanced",
                f"a field starting on line {line} runs on for more than "
                f"{_CSV_FIELD_LIMIT} characters: a quote opened there is probably never "
                'closed; quote fields as "..." and double quotes inside them',
                line,
            )
            return True
        else:
            self.bad_row(
                "quote_unbalanced",
                "a quote in this row is not balanced; quote "
                'fields as "..." and double quotes inside them',
                line,
            )
        return False

    def newline_in_field(self, line: int) -> None:
        self.bad_row(
            "newline_in_field",
            "a field contains a line break; fields "
            "must be on one line (remove line breaks from the cell)",
            line,
        )

    def all_known(self, buildings: str) -> bool:
        assert self.buildings is not None
        return all(
            not b or b in self.buildings
            for group in buildings.split(";")
            for b in (name.strip() for name in group.split(","))
        )

    def bad_values(self, line: int, value: dict[str, str]) -> None:
        problems = list(self.check_values(value))
        if not problems:  # cannot happen: the inline checks are a subset of these
            raise AssertionError(f"line {line} failed the inline checks only")
        email = value["Email"] if email_problem(value["Email"]) is None else ""
        self.skipped(email)
        for code, message, column in problems:
            self._add(self.report.row_errors, code, message, line, column, value[column], email)

    def check_values(self, value: dict[str, str]) -> Iterator[tuple[str, str, str]]:
        for name, text in value.items():
            if name != "Email" and _CONTROL.search(text):  # the e-mail's own check says it
                yield (
                    "value_invalid",
                    f"{name} contains a control character ({hidden_characters(text)[0]}), "
                    "which no name or value may hold; remove it",
                    name,
                )
            limit = MAX_LENGTHS.get(name, self.limits.max_field_length)
            if len(text) > limit:
                yield "value_too_long", f"{name} is {len(text)} characters; at most {limit}", name
        for name in REQUIRED:
            if not value[name]:
                yield "value_required", f"{name} is required", name
        email = value["Email"]
        problem = email_problem(email) if email else None
        if problem is not None:
            yield problem[0], problem[1], "Email"
        staff_id = value["Staff Id"]
        if staff_id and not _STAFF_ID.fullmatch(staff_id):
            hint = (
                f"; {staff_id!r} is how Excel shows a long number in scientific notation: "
                "format the column as Text before you save, or the digits are lost"
                if _SCIENTIFIC.fullmatch(staff_id)
                else ""
            )
            yield "value_invalid", f"Staff Id must be letters and digits only{hint}", "Staff Id"
        if value["Deleted"].lower() not in _DELETED_VALUES:
            yield (
                "value_invalid",
                f"Deleted must be true/false, yes/no, y/n or 1/0, not {value['Deleted']!r}",
                "Deleted",
            )
        roles = value["Role"].split(";") if value["Role"] else []
        groups = value["Buildings"].split(";") if value["Buildings"] else []
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


def validate_users_csv(
    path: Path,
    limits: Limits | None = None,
    buildings: frozenset[str] | None = None,
    stage: Stage | None = None,
) -> ValidationReport:
    """Validate one users.csv, staging its valid rows in ``stage`` (by default a private
    one, thrown away: offline validation touches no state)."""
    if stage is not None:
        return _Validator(limits or Limits(), buildings, stage, path.name).run(path)
    with Stage.private(path.stat().st_size if path.is_file() else 0) as private:
        return _Validator(limits or Limits(), buildings, private, path.name).run(path)
