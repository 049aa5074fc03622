"""The CSV API's validation: each code with a real bad file (bytes as districts make them)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ingest.config import ProvisioningConfig
from ingest.epochs.handoff import ClaimedEpoch, FileInfo
from ingest.provisioning.csvapi import Limits, ValidationReport, validate_users_csv
from ingest.provisioning.processor import ProvisioningProcessor
from ingest.provisioning.repeats import Repeat, RepeatFinder
from ingest.provisioning.staging import (
    BATCH,
    Stage,
    _padded,
    all_tidy,
    tidy_buildings,
    tidy_roles,
)
from ingest.store.db import Database

HEADER = "Email,First Name,Last Name,Middle Name,Staff Id,Title,Role,Buildings,Deleted\r\n"
GOOD = (
    "ann@example.org,Ann,Lee,,A1,Teacher,Special Education Teacher;Literacy Teacher,"
    '"North Elementary,South Elementary;South Elementary",\r\n'
)
MANY_GOOD = "".join(f"u{i}@example.org,U,{i},,,,,,\r\n" for i in range(100))


def codes(tmp_path: Path, content: bytes, **limits: object) -> tuple[list[str], list[str]]:
    path = tmp_path / "users.csv"
    path.write_bytes(content)
    report = validate_users_csv(path, Limits(**limits))  # type: ignore[arg-type]
    return sorted({f.code for f in report.errors}), sorted({w.code for w in report.warnings})


def stage_file(tmp_path: Path, content: bytes) -> tuple[ValidationReport, list[tuple[Any, ...]]]:
    """Validate against an empty account store; returns the report and the staged rows."""
    path = tmp_path / "users.csv"
    path.write_bytes(content)
    database = Database(f"sqlite:///{tmp_path}/state.db")
    database.migrate()
    with database.connect() as conn:
        report = validate_users_csv(path, stage=Stage(conn, "d"))
        rows = conn.execute(
            "SELECT line, email, action, roles, buildings FROM staged ORDER BY line"
        ).fetchall()
    return report, [tuple(r) for r in rows]


def test_a_good_file_stages_its_rows(tmp_path: Path) -> None:
    cy = GOOD.replace("ann", "cy").replace(",A1,", ",C3,")
    content = HEADER + GOOD + "Bob@Example.org,Bob,Ray,,,,,,yes\n" + cy
    report, rows = stage_file(tmp_path, b"\xef\xbb\xbf" + content.encode())
    assert not report.errors and report.rows == report.valid_rows == 3
    roles = "Special Education Teacher;Literacy Teacher"
    buildings = "North Elementary,South Elementary;South Elementary"
    # Bob is marked Deleted and has no account: nothing to do, nothing staged
    assert rows == [
        (2, "ann@example.org", "create", roles, buildings),
        (4, "cy@example.org", "create", roles, buildings),
    ]


def test_roles_and_buildings_are_stored_tidy(tmp_path: Path) -> None:
    row = 'ann@example.org,Ann,Lee,,,, Teacher ; Coach ," North , South,,;Gym ",\r\n'
    report, rows = stage_file(tmp_path, (HEADER + row).encode())
    assert not report.errors
    assert rows == [(2, "ann@example.org", "create", "Teacher;Coach", "North,South;Gym")]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "file_empty"),
        ("Email,First Name,Last Name\r\nann@x.org,Ann,Lee\r\n".encode("utf-16"), "encoding_utf16"),
        (
            "Email,First Name,Last Name\r\nren\xe9@x.org,Ren\xe9,Lee\r\n".encode("cp1252"),
            "encoding_invalid",
        ),
        (b"Email,First Name,Last Name\r\nann@x.org,Ann\x00,Lee\r\n", "nul_bytes"),
        (b"Email\tFirst Name\tLast Name\r\nann@x.org\tAnn\tLee\r\n", "delimiter_invalid"),
        (b"Email;First Name;Last Name\r\nann@x.org;Ann;Lee\r\n", "delimiter_invalid"),
        (b"Email,First Name,Last Name\r\n", "no_data_rows"),
        (b"Email,First Name\r\nann@x.org,Ann\r\n", "column_missing"),
        (b"Email,first name,Last Name\r\nann@x.org,Ann,Lee\r\n", "column_misnamed"),
        (b"E-mail,First Name,Last Name\r\nann@x.org,Ann,Lee\r\n", "column_misnamed"),
        (b"Email ,First Name,Last Name\r\nann@x.org,Ann,Lee\r\n", "column_misnamed"),
        ("Email,First\u00a0Name,Last Name\r\nann@x.org,Ann,Lee\r\n".encode(), "column_misnamed"),
        (b"Email,First Name,Last Name,Email\r\nann@x.org,Ann,Lee,a@x.org\r\n", "column_duplicate"),
    ],
)
def test_file_level_codes(tmp_path: Path, content: bytes, expected: str) -> None:
    errors, _ = codes(tmp_path, content)
    assert expected in errors


@pytest.mark.parametrize("where", ["no line break at all", "one line among good rows"])
def test_a_line_longer_than_any_row_stops_the_pass_where_it_is(tmp_path: Path, where: str) -> None:
    """A file without line breaks used to be read as one line of its own size, and its
    byte pass copied a growing carry for every MiB: 160 MB took 9.9 s and 330 MB. Now the
    byte pass refuses the line (a few ms), and nothing of it is held in memory."""
    long = b"x" * (3 << 20)  # 3 MiB, three times the longest line accepted
    content = (
        HEADER.encode() + long
        if where == "no line break at all"
        else HEADER.encode() + MANY_GOOD.encode() + long + b"\r\n" + GOOD.encode()
    )
    path = tmp_path / "users.csv"
    path.write_bytes(content)
    report = validate_users_csv(path, Limits())
    assert [(f.code, f.line) for f in report.errors] == [
        ("line_too_long", 2 if where == "no line break at all" else 102)
    ]
    rows = HEADER.encode() + b"".join(  # rows of 0.4 MiB: too long for rows, not lines
        f"u{i}@example.org,U,{'y' * 400_000},,,,,,\r\n".encode() for i in range(8)
    )
    path.write_bytes(rows)
    assert "line_too_long" not in {f.code for f in validate_users_csv(path, Limits()).errors}


def test_file_too_large(tmp_path: Path) -> None:
    errors, _ = codes(tmp_path, (HEADER + GOOD).encode(), max_file_bytes=10)
    assert errors == ["file_too_large"]


def test_unknown_column_is_a_warning(tmp_path: Path) -> None:
    errors, warnings = codes(
        tmp_path,
        (HEADER.replace("\r\n", ",Shoe Size\r\n") + GOOD.replace("\r\n", ",42\r\n")).encode(),
    )
    assert errors == [] and warnings == ["column_unknown"]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("ann@example.org,Ann,,,,,,,", "value_required"),
        ("not-an-email,Ann,Lee,,,,,,", "value_invalid"),
        ("ann@example.org,Ann,Lee,,,,,,maybe", "value_invalid"),
        ("ann@example.org,Ann,Lee,,A-1,,,,", "value_invalid"),
        ("ann@example.org," + "A" * 101 + ",Lee,,,,,,", "value_too_long"),
        ("ann@example.org,Ann,Lee,,,,Teacher;Coach,North,", "roles_buildings_mismatch"),
        ("ann@example.org,Ann,Lee,,,,,", "row_length"),
        ('ann@example.org,"An"n,Lee,,,,,,', "quote_unbalanced"),
    ],
)
def test_row_level_codes_skip_the_row(tmp_path: Path, row: str, expected: str) -> None:
    content = (HEADER + row + "\r\n" + MANY_GOOD).encode()
    path = tmp_path / "users.csv"
    path.write_bytes(content)
    report = validate_users_csv(path)
    assert expected in {f.code for f in report.row_errors}
    assert not report.file_errors  # one bad row in 101: the rest still applies
    assert report.valid_rows == 100 and report.bad_rows == 1
    assert report.row_errors[0].line == 2


def test_newline_inside_a_field(tmp_path: Path) -> None:
    content = (HEADER + 'ann@example.org,"Ann\r\nMarie",Lee,,,,,,\r\n' + MANY_GOOD).encode()
    path = tmp_path / "users.csv"
    path.write_bytes(content)
    report = validate_users_csv(path)
    assert [f.code for f in report.row_errors] == ["newline_in_field"]
    assert report.valid_rows == 100  # the continuation line is not taken for a row


def test_a_quote_never_closed_swallows_the_rest_and_rejects(tmp_path: Path) -> None:
    content = (HEADER + 'ann@example.org,"Ann,Lee,,,,,,\r\n' + MANY_GOOD).encode()
    errors, _ = codes(tmp_path, content)
    assert errors == ["quote_unbalanced"]  # one bad row: below max_bad_rows_min


def test_duplicates_name_both_lines(tmp_path: Path) -> None:
    content = HEADER + GOOD + "ANN@example.org,Ann,Twin,,,,,,\r\nzed@example.org,Z,Z,,A1,,,,\r\n"
    path = tmp_path / "users.csv"
    path.write_bytes((content + MANY_GOOD).encode())
    report = validate_users_csv(path)
    found = {f.code: f for f in report.row_errors}
    assert "line 2" in found["key_duplicate"].message and found["key_duplicate"].line == 3
    assert "line 2" in found["staff_id_duplicate"].message


def test_building_list_with_did_you_mean(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_bytes((HEADER + GOOD.replace("South Elementary;", "Suoth Elementary;")).encode())
    report = validate_users_csv(path, buildings=frozenset({"North Elementary", "South Elementary"}))
    assert [f.code for f in report.row_errors] == ["building_unknown"]
    assert "did you mean 'South Elementary'" in report.row_errors[0].message


def test_too_many_bad_rows_reject_the_file(tmp_path: Path) -> None:
    bad = "".join(f"bad{i},X,Y,,,,,,\r\n" for i in range(10))
    errors, _ = codes(tmp_path, (HEADER + bad + MANY_GOOD).encode())
    assert "too_many_bad_rows" in errors


def test_file_errors_are_never_dropped_by_the_findings_cap(tmp_path: Path) -> None:
    bad = "".join(f"bad{i},X,Y,,,,,,\r\n" for i in range(50))
    path = tmp_path / "users.csv"
    path.write_bytes((HEADER + bad).encode())
    report = validate_users_csv(path, Limits(max_findings=5))
    assert len(report.row_errors) == 5 and report.dropped_findings == 45
    assert [f.code for f in report.file_errors] == ["too_many_bad_rows"]


def test_validate_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    good = tmp_path / "good" / "users.csv"
    good.parent.mkdir()
    good.write_bytes((HEADER + GOOD).encode())

    def validate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ingest", "validate", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )

    waiting = validate(str(good.parent))  # an epoch directory without COMPLETE
    assert waiting.returncode == 1 and "would WAIT" in waiting.stdout
    assert "[marker_missing]" in waiting.stdout and "[epoch_name_invalid]" in waiting.stdout
    (good.parent / "COMPLETE").touch()
    ok = validate(str(good.parent))
    assert ok.returncode == 0 and "would be applied: 1 row, 0 skipped" in ok.stdout
    assert validate(str(good)).returncode == 0
    bad = tmp_path / "20260101-000000"
    bad.mkdir()
    (bad / "Users.csv").write_bytes(b"Email,First Name\r\n")  # and Last Name is missing
    (bad / "COMPLETE").touch()
    found = validate("--json", str(bad))
    assert found.returncode == 1 and json.loads(found.stdout)["verdict"] == "rejected"
    # The misnamed file's content is checked too: both mistakes in one round trip.
    codes = [e["code"] for e in json.loads(found.stdout)["errors"]]
    assert codes == ["file_misnamed", "column_missing"]


def test_an_encoding_error_far_into_the_file_is_located_exactly(tmp_path: Path) -> None:
    """The binary pass reads 1 MiB chunks; the line and byte offset must not depend on
    where a chunk ends."""
    rows = [f"user{i}@example.org,User,{i},,,,,,\r\n" for i in range(60_000)]  # ~2.2 MB
    bad = "ren\xe9@example.org,Ren\xe9,Lee,,,,,,\r\n".encode("cp1252")
    before = (HEADER + "".join(rows[:40_000])).encode()
    path = tmp_path / "users.csv"
    path.write_bytes(before + bad + "".join(rows[40_000:]).encode())
    report = validate_users_csv(path)
    [error] = report.file_errors
    assert error.code == "encoding_invalid" and error.line == 40_002
    assert f"byte offset {len(before) + 3} " in error.message and error.value == "e9 40 65"


def test_a_runaway_quote_in_a_large_file_rejects_it(tmp_path: Path) -> None:
    """Past csv's 128 KiB field limit the rest of the file cannot be read reliably."""
    many = "".join(f"user{i}@example.org,User,{i},,,,,,\r\n" for i in range(10_000))
    content = HEADER + 'ann@example.org,"Ann,Lee,,,,,,\r\n' + many
    errors, _ = codes(tmp_path, content.encode())
    assert errors == ["quote_unbalanced"]


def test_a_database_from_before_roles_and_buildings_is_migrated(tmp_path: Path) -> None:
    """Migration 5 turns the JSON assignments of existing accounts into the CSV API's
    syntax (and digests start at 0: the next apply refreshes them)."""
    from ingest.store import db as store_db

    migrations = store_db.STATE_MIGRATIONS
    Database(f"sqlite:///{tmp_path}/state.db", migrations=migrations[:4]).migrate()
    database = Database(f"sqlite:///{tmp_path}/state.db")
    assignments = {
        "a@x.org": [["T", ["N", "S"]], ["L", ["S"]]],
        "b@x.org": [],
        "c@x.org": [["T", []], ["X", ["Q"]]],
    }
    with database.connect() as conn:
        for email, value in assignments.items():
            conn.execute(
                "INSERT INTO accounts (district, email, first_name, last_name, assignments,"
                " status, created_at, updated_at, epoch) VALUES ('d', ?, 'F', 'L', ?, 'active',"
                " 't', 't', 'e')",
                (email, json.dumps(value)),
            )
    assert database.migrate() == len(migrations)
    with database.read() as conn:
        rows = conn.execute("SELECT email, roles, buildings, digest FROM accounts ORDER BY 1")
        assert [tuple(r) for r in rows] == [
            ("a@x.org", "T;L", "N,S;S", 0),
            ("b@x.org", "", "", 0),
            ("c@x.org", "T;X", ";Q", 0),
        ]


def test_repeat_finder_survives_false_alarms() -> None:
    """200,000 keys in the smallest bitmap (65,536 bits): most keys are flagged as
    possibly seen, yet only the true repeats come out, each with its first line."""
    finder = RepeatFinder(sqlite3.connect(""), "keys", size_hint=0)
    keys = [(line, f"user{line}@example.org", f"tag{line}") for line in range(2, 200_002)]
    keys[1000] = (keys[1000][0], "user2@example.org", "again")  # line 1002 repeats line 2
    keys[5000] = (keys[5000][0], "user9@example.org", "x")  # line 5002 repeats line 9
    keys[6000] = (keys[6000][0], "user9@example.org", "y")  # and so does line 6002
    keys[7000] = (keys[7000][0], "", "")  # no key: never a repeat
    keys[7001] = (keys[7001][0], "", "")
    for start in range(0, len(keys), 16_000):  # as the stage adds them, in batches
        finder.add(keys[start : start + 16_000])
    assert len(finder._flagged) > 10_000  # the bitmap really raised false alarms
    assert finder.repeats() == [
        Repeat(1002, "user2@example.org", 2, "again"),
        Repeat(5002, "user9@example.org", 9, "x"),
        Repeat(6002, "user9@example.org", 9, "y"),
    ]
    # Rows already skipped count as absent: the first remaining occurrence stays.
    assert finder.repeats(ignore={9, 1002}) == [Repeat(6002, "user9@example.org", 5002, "y")]


def test_tidying_shortcut_changes_nothing() -> None:
    """Whatever ``all_tidy`` lets through untouched, tidying would leave as it is: every
    string of up to 5 characters over the characters that matter, alone and in batches."""
    alphabet = "a ;,\t\u00a0"
    values = [
        "".join(chars)
        for length in range(6)
        for chars in itertools.product(alphabet, repeat=length)
    ]
    passed = [v for v in values if all_tidy([v])]
    assert 0 < len(passed) < len(values)
    for value in passed:
        assert tidy_roles(value) == value and tidy_buildings(value) == value, repr(value)
    assert all_tidy(["North Elementary,South Elementary;South Elementary", "A", ""])
    for value in set(values) - set(passed):  # also when one bad value hides in a batch
        assert not all_tidy(["North,South", value, "East"]), repr(value)


def apply_file(database: Database, directory: Path, content: str) -> dict[str, int]:
    """Apply ``content`` as the users.csv of the epoch ``directory`` (named like one) of
    district ``d``, as the daemon's processor does; returns the outcome's counts."""
    processor = ProvisioningProcessor(ProvisioningConfig(deletion_share=1.0, max_bad_row_share=1.0))
    directory.mkdir()
    path = directory / "users.csv"
    path.write_text(content)
    files = (FileInfo("users.csv", path.stat().st_size, ""),)
    epoch = ClaimedEpoch("d", directory.name, directory, files, "upload")
    with processor.prepare(epoch, database) as prepared, database.connect() as conn:
        outcome = processor.process(epoch, conn, prepared)
    assert outcome.status == "applied"
    return dict(outcome.summary)


def test_changes_to_more_accounts_than_a_batch_all_apply(tmp_path: Path) -> None:
    """40,000 accounts, then a file that changes every one: the updates are read and
    applied a batch at a time, and each account is updated and logged exactly once."""
    database = Database(f"sqlite:///{tmp_path}/state.db")
    database.migrate()
    rows = 40_000

    def content(title: str) -> str:
        return HEADER + "".join(f"u{i}@example.org,U,{i},,S{i},{title},,,\r\n" for i in range(rows))

    assert apply_file(database, tmp_path / "20260101-000000", content("Teacher"))["created"] == rows
    assert apply_file(database, tmp_path / "20260102-000000", content("Coach"))["updated"] == rows
    with database.read() as conn:
        titles = conn.execute("SELECT title, COUNT(*) FROM accounts GROUP BY title").fetchall()
        logged = conn.execute(
            "SELECT COUNT(DISTINCT email), COUNT(*) FROM account_changes WHERE action = 'updated'"
        ).fetchone()
    assert [tuple(t) for t in titles] == [("Coach", rows)]
    assert tuple(logged) == (rows, rows)


def test_a_later_duplicate_does_not_touch_an_unchanged_account(tmp_path: Path) -> None:
    """The first row of an e-mail matches its account; a second row with the same e-mail
    and other values is a key_duplicate. The account stays exactly as it was: not even
    its updated_at or epoch change."""
    database = Database(f"sqlite:///{tmp_path}/state.db")
    database.migrate()
    ann = "ann@example.org,Ann,Lee,,,,,,\r\n"
    apply_file(database, tmp_path / "20260101-000000", HEADER + ann)
    with database.read() as conn:
        before = tuple(conn.execute("SELECT * FROM accounts").fetchone())
    counts = apply_file(
        database, tmp_path / "20260102-000000", HEADER + ann + ann.replace("Ann,", "Anne,")
    )
    assert counts["unchanged"] == 1 and counts["skipped"] == 1 and counts["updated"] == 0
    with database.read() as conn:
        assert tuple(conn.execute("SELECT * FROM accounts").fetchone()) == before


def test_comparison_statements_come_in_few_sizes() -> None:
    """Each size is a statement of its own in the connection's cache; batches of any
    length must share a few of them."""
    sizes = {_padded(rows) for rows in range(1, BATCH + 1)}
    assert len(sizes) <= 12 and max(sizes) == BATCH
    assert all(_padded(rows) >= rows for rows in range(1, BATCH + 1))


@pytest.mark.parametrize(
    ("email", "code"),
    [
        ("admin@example.org", None),
        ("\u043c\u0430\u0440\u0438\u044f@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444", None),
        ("\u5c71\u7530\u305f\u308d\u3046@example.jp", None),  # kanji and kana together
        ("jos\u00e9@example.org", None),
        ("\u0430dmin@example.org", "email_mixed_script"),  # a Cyrillic a among Latin
        ("\uff46oo@example.org", "email_mixed_script"),  # a fullwidth f
        ("a\u202eb@example.org", "value_invalid"),  # a bidi override
        ("\ufeffa@example.org", "value_invalid"),  # a BOM
        ("a\x07b@example.org", "value_invalid"),
        ("+1@example.org", "value_invalid"),
    ],
)
def test_an_email_address_is_an_identity(email: str, code: str | None) -> None:
    from ingest.provisioning.identity import email_problem, normalise

    problem = email_problem(normalise(email))
    assert (problem[0] if problem else None) == code


def test_printable_escapes_what_would_act_on_a_terminal() -> None:
    from ingest.text import printable

    assert printable("users\x1b[2J.csv") == "users\\x1b[2J.csv"
    assert printable("a\u200bb\u202ec") == "a\\u200bb\\u202ec"
    assert printable("line one\nline two", keep="\n") == "line one\nline two"
    assert printable("Mar\u00eda \u5c71\u7530") == "Mar\u00eda \u5c71\u7530"


FORTY = "".join(f"f{i}@example.org,F,{i},,,,,,\r\n" for i in range(40))


def test_rows_of_commas_only_are_skipped_with_a_warning(tmp_path: Path) -> None:
    """Excel leaves them where rows were cleared: three of them rejected a good file."""
    path = tmp_path / "users.csv"
    path.write_bytes((HEADER + FORTY + ",,,,,,,,\r\n" * 3 + ",,\r\n").encode())
    report = validate_users_csv(path)
    assert not report.errors and report.valid_rows == 40 and report.rows == 40
    (warning,) = [w for w in report.warnings if w.code == "rows_empty"]
    assert (
        warning.line == 42 and "4 row(s)" in warning.message and "42, 43, 44, 45" in warning.message
    )


def test_a_few_bad_rows_never_reject_a_small_file(tmp_path: Path) -> None:
    bad = "".join(f"b{i}@example.org,,Missing,,,,,,\r\n" for i in range(3))  # 3 of 43: 7 %
    errors, _ = codes(tmp_path, (HEADER + FORTY + bad).encode())
    assert errors == ["value_required"]  # skipped, not rejected: below max_bad_rows_min
    errors, _ = codes(tmp_path, (HEADER + FORTY + bad).encode(), max_bad_rows_min=3)
    assert "too_many_bad_rows" in errors


def test_excel_mistakes_get_excel_advice(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 100)  # an .xlsx named .csv
    report = validate_users_csv(path)
    assert [f.code for f in report.file_errors] == ["file_is_workbook"]
    assert "Save As" in report.file_errors[0].message
    path.write_bytes(
        (
            HEADER.replace("Deleted\r\n", "Deleted,\r\n")  # Excel's empty trailing column
            + "sci@example.org,Sci,Note,,1.23E+05,,,,,\r\n"
            + FORTY.replace("\r\n", ",\r\n")
        ).encode()
    )
    report = validate_users_csv(path)
    assert [w.code for w in report.warnings] == ["column_empty"]
    assert "column 10" in report.warnings[0].message
    (error,) = report.row_errors
    assert "scientific notation" in error.message and "Text" in error.message
    assert error.email == "sci@example.org" and error.value == "1.23E+05"


def test_rows_are_checked_when_the_header_has_a_misnamed_or_repeated_column(
    tmp_path: Path,
) -> None:
    """A header the server can read, though it rejects it, does not hide the rows'
    mistakes: the district fixes both in one round trip."""
    header = "E-mail,First Name,Last Name,Staff Id,Staff Id\r\n"
    rows = "ann@example.org,Ann,Lee,A1,A1\r\nbob@example.org,,Ray,B-2,B2\r\n"
    path = tmp_path / "users.csv"
    path.write_bytes((header + rows).encode())
    report = validate_users_csv(path)
    assert [f.code for f in report.file_errors] == ["column_misnamed", "column_duplicate"]
    found = {(f.code, f.line, f.column, f.email) for f in report.row_errors}
    # The misnamed column is read as Email; the repeated one from its first occurrence.
    assert found == {
        ("value_required", 3, "First Name", "bob@example.org"),
        ("value_invalid", 3, "Staff Id", "bob@example.org"),
    }
    assert (report.rows, report.bad_rows) == (2, 1)


def test_changes_csv_is_bounded_and_says_what_it_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingest.epochs.ledger import EpochRecord
    from ingest.provisioning import changes

    database = Database(f"sqlite:///{tmp_path}/state.db")
    database.migrate()
    claimed = "2026-04-01T02:00:00.000Z"
    with database.connect() as conn:
        long = json.dumps({"title": "=" + "x" * 5000})
        conn.executemany(
            "INSERT INTO account_changes (district, epoch, email, action, before, after, at)"
            " VALUES ('d', 'e', ?, 'updated', ?, ?, ?)",
            [(f"u{i}@example.org", '{"title": "a"}', long, claimed) for i in range(10)]
            + [("old@example.org", "{}", "{}", "2026-03-01T00:00:00.000Z")],  # another run
        )
    record = EpochRecord(
        "d", "e", "applied", "upload", claimed, claimed, claimed, None, 1, False, (), (), None
    )
    monkeypatch.setattr(changes, "MAX_LISTED", 4)
    text = changes.render_changes_csv(database, record)["changes.csv"]
    assert text is not None
    rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))
    assert rows[0] == ["email", "change", "columns", "before", "after"]
    assert [r[0] for r in rows[1:5]] == [f"u{i}@example.org" for i in range(4)]
    assert rows[1][4].startswith("Title: =") and len(rows[1][4]) == changes.MAX_VALUE
    assert rows[5][0].startswith("... and 6 more changes")  # not old@: another processing
    monkeypatch.setattr(changes, "MAX_BYTES", 1)  # the byte bound: one row, then stop
    text = changes.render_changes_csv(database, record)["changes.csv"]
    assert text is not None and "... and 9 more changes" in text
