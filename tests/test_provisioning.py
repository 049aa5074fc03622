"""Upload over SFTP -> validation -> account store -> report, end to end with the daemon."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients import put_epoch
from tests.harness import FAST_EPOCHS, Credentials, Daemon, run_daemon

HEADER = "Email,First Name,Last Name,Staff Id,Role,Buildings,Deleted\r\n"
ANN = (
    "ann@example.org,Ann,Lee,A1,Special Education Teacher;Literacy Teacher,"
    '"North Elementary,South Elementary;South Elementary",\r\n'
)
BOB = "bob@example.org,Bob,Ray,B2,,,\r\n"
CYD = "cyd@example.org,Cyd,Moe,,,,\r\n"
FAST = FAST_EPOCHS


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with run_daemon(tmp_path_factory.mktemp("provisioning"), **FAST) as running:
        yield running


def upload(daemon: Daemon, creds: Credentials, epoch: str, content: bytes | str) -> dict[str, Any]:
    put_epoch(daemon, creds, epoch, content.encode() if isinstance(content, str) else content)
    daemon.wait_for("epoch.published", district=creds.name, epoch=epoch)
    path = daemon.root(creds.name) / "upload-processed" / epoch / "report.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def export(daemon: Daemon, district: str) -> list[dict[str, str]]:
    out = daemon.cli("accounts", "export", district).stdout
    return list(csv.DictReader(io.StringIO(out)))


def test_accounts_are_created_exported_and_reapplying_changes_nothing(
    daemon: Daemon, district: Credentials
) -> None:
    report = upload(daemon, district, "20260401-020000", HEADER + ANN + BOB + CYD)
    assert report["status"] == "applied"
    assert report["counts"] == {
        "rows": 3,
        "skipped": 0,
        "created": 3,
        "updated": 0,
        "deleted": 0,
        "reactivated": 0,
        "unchanged": 0,
    }
    rows = export(daemon, district.name)
    assert [r["Email"] for r in rows] == ["ann@example.org", "bob@example.org", "cyd@example.org"]
    assert rows[0]["Role"] == "Special Education Teacher;Literacy Teacher"
    assert rows[0]["Buildings"] == "North Elementary,South Elementary;South Elementary"
    exported = daemon.cli("accounts", "export", district.name).stdout  # round-trips
    again = upload(daemon, district, "20260401-030000", exported)
    assert again["counts"]["unchanged"] == 3 and again["counts"]["created"] == 0
    assert (
        daemon.cli(
            "validate", str(daemon.root(district.name) / "upload-processed" / "20260401-030000")
        ).returncode
        == 0
    )


def test_bad_rows_are_skipped_and_listed_in_errors_csv(
    daemon: Daemon, district: Credentials
) -> None:
    upload(daemon, district, "20260402-020000", HEADER + ANN + BOB)
    many = "".join(f"u{i}@example.org,U,{i},,,,\r\n" for i in range(40))
    content = (
        HEADER
        + ANN
        + "bob@example.org,Bobby,,B2,,,\r\n"
        + '"=HYPERLINK(""x"")",Evil,Row,,,,\r\n'
        + many
    )
    report = upload(daemon, district, "20260402-030000", content)
    assert report["status"] == "applied"
    assert report["counts"]["skipped"] == 2 and report["counts"]["created"] == 40
    assert {e["code"] for e in report["errors"]} == {"value_required", "value_invalid"}
    bob = next(r for r in export(daemon, district.name) if r["Email"] == "bob@example.org")
    assert bob["First Name"] == "Bob"  # the bad row left the account exactly as it was
    errors_csv = (
        daemon.root(district.name) / "upload-processed" / "20260402-030000" / "errors.csv"
    ).read_text()
    rows = list(csv.DictReader(io.StringIO(errors_csv)))
    assert {r["line"] for r in rows} == {"3", "4"}
    assert all(not r["value"].startswith(("=", "+", "-", "@")) for r in rows)
    assert any(r["value"].startswith("'=") for r in rows)  # neutralised, still readable


def test_delete_reactivate_and_history(daemon: Daemon, district: Credentials) -> None:
    upload(daemon, district, "20260403-020000", HEADER + ANN + BOB)
    report = upload(
        daemon, district, "20260403-030000", HEADER + BOB + "ann@example.org,Ann,Lee,A1,,,yes\r\n"
    )
    assert report["counts"]["deleted"] == 1
    assert [r["Email"] for r in export(daemon, district.name)] == ["bob@example.org"]
    report = upload(daemon, district, "20260403-040000", HEADER + ANN)
    assert report["counts"]["reactivated"] == 1
    report = upload(daemon, district, "20260403-050000", HEADER + ANN.replace(",Ann,", ",Anne,"))
    assert report["counts"]["updated"] == 1
    changes = json.loads(daemon.cli("accounts", "history", district.name, "ANN@example.org").stdout)
    assert [c["action"] for c in changes] == ["created", "deleted", "reactivated", "updated"]
    assert [c["epoch"] for c in changes] == [
        "20260403-020000",
        "20260403-030000",
        "20260403-040000",
        "20260403-050000",
    ]
    # The creation's after-image is derived: today's values with the later update undone.
    assert changes[0]["after"] == {
        "first_name": "Ann",
        "last_name": "Lee",
        "middle_name": "",
        "staff_id": "A1",
        "title": "",
        "roles": "Special Education Teacher;Literacy Teacher",
        "buildings": "North Elementary,South Elementary;South Elementary",
    }
    assert changes[3]["before"] == {"first_name": "Ann"}
    assert changes[3]["after"] == {"first_name": "Anne"}


def test_full_sync_mass_deletion_is_held_until_approved(
    daemon: Daemon, district: Credentials
) -> None:
    everyone = "".join(f"p{i}@example.org,P,{i},,,,\r\n" for i in range(10))
    upload(daemon, district, "20260404-020000", HEADER + everyone)
    daemon.cli("district", "set-mode", district.name, "full-sync")
    report = upload(
        daemon,
        district,
        "20260404-030000",
        HEADER + "p0@example.org,P,0,,,,\r\np1@example.org,P,1,,,,\r\n",
    )
    assert report["status"] == "held"
    assert report["counts"]["would_delete"] == 8
    assert report["errors"][0]["code"] == "deletion_threshold"
    assert len(export(daemon, district.name)) == 10  # nothing applied
    text = (
        daemon.root(district.name) / "upload-processed" / "20260404-030000" / "report.txt"
    ).read_text()
    assert "ON HOLD" in text and "full-sync mode" in text
    # The decision and what the district can do first, the accounts it concerns after.
    assert text.index("[deletion_threshold]") < text.index("[would_delete]")
    assert "ask your operator to approve it" in text

    daemon.cli("epochs", "approve", district.name, "20260404-030000", "--by", "Dana Ops")
    daemon.wait_for("epoch.applied", district=district.name, epoch="20260404-030000")
    daemon.wait_for("epoch.published", district=district.name, epoch="20260404-030000", count=2)
    # Who approved, and when, is in the district's report and the operator's history.
    folder = daemon.root(district.name) / "upload-processed" / "20260404-030000"
    approved = json.loads((folder / "report.json").read_text())
    [action] = approved["operator_actions"]
    assert (action["action"], action["by"]) == ("approve", "Dana Ops")
    assert f"{action['at']}: Dana Ops approved it" in (folder / "report.txt").read_text()
    shown = daemon.cli("epochs", "show", district.name, "20260404-030000").stdout
    assert "operator: " + action["at"] + ": Dana Ops approved it" in shown
    assert [r["Email"] for r in export(daemon, district.name)] == [
        "p0@example.org",
        "p1@example.org",
    ]
    again = upload(daemon, district, "20260404-040000", HEADER + CYD)  # would delete 2 of 2
    assert again["status"] == "applied"  # not more than the minimum of 5: no hold


def test_held_epoch_can_be_discarded(daemon: Daemon, district: Credentials) -> None:
    everyone = "".join(f"q{i}@example.org,Q,{i},,,,\r\n" for i in range(10))
    upload(daemon, district, "20260405-020000", HEADER + everyone)
    daemon.cli("district", "set-mode", district.name, "full-sync")
    assert upload(daemon, district, "20260405-030000", HEADER + BOB)["status"] == "held"
    daemon.cli("epochs", "discard", district.name, "20260405-030000", env={"SUDO_USER": "lee"})
    daemon.wait_for("epoch.published", district=district.name, epoch="20260405-030000", count=2)
    report = json.loads(
        (
            daemon.root(district.name) / "upload-processed" / "20260405-030000" / "report.json"
        ).read_text()
    )
    assert report["status"] == "rejected"
    assert [e["code"] for e in report["errors"]] == ["epoch_discarded"]
    assert "an operator (lee) discarded" in report["errors"][0]["message"]
    assert [(a["action"], a["by"]) for a in report["operator_actions"]] == [("discard", "lee")]
    assert len(export(daemon, district.name)) == 10
    refused = daemon.cli("epochs", "approve", district.name, "20260405-030000", check=False)
    assert refused.returncode == 1 and "only a held epoch" in refused.stderr


def test_building_list_and_file_level_rejection(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    (tmp_path / "buildings.txt").write_text("North Elementary\nSouth Elementary\n")
    daemon.cli("district", "buildings", "set", district.name, str(tmp_path / "buildings.txt"))
    typo = ANN.replace("North Elementary", "Nrth Elementary")
    many = "".join(f"v{i}@example.org,V,{i},,,,\r\n" for i in range(30))
    report = upload(daemon, district, "20260406-020000", HEADER + typo + many)
    assert [e["code"] for e in report["errors"]] == ["building_unknown"]
    assert "did you mean 'North Elementary'" in report["errors"][0]["message"]
    utf16 = upload(daemon, district, "20260406-030000", (HEADER + BOB).encode("utf-16"))
    assert utf16["status"] == "rejected"
    assert [e["code"] for e in utf16["errors"]] == ["encoding_utf16"]
    assert "bob@example.org" not in {r["Email"] for r in export(daemon, district.name)}


def test_full_sync_never_deletes_for_a_skipped_row(daemon: Daemon, district: Credentials) -> None:
    everyone = "".join(f"r{i}@example.org,R,{i},,,,\r\n" for i in range(40))
    upload(daemon, district, "20260407-020000", HEADER + everyone)
    daemon.cli("district", "set-mode", district.name, "full-sync")
    # r0's row lacks its first name (skipped: its account stays); r39 is absent (deleted)
    kept = "".join(f"r{i}@example.org,R,{i},,,,\r\n" for i in range(1, 39))
    report = upload(
        daemon, district, "20260407-030000", HEADER + "r0@example.org,,0,,,,\r\n" + kept
    )
    assert report["status"] == "applied"
    assert report["counts"]["skipped"] == 1 and report["counts"]["deleted"] == 1
    emails = {r["Email"] for r in export(daemon, district.name)}
    assert "r0@example.org" in emails and "r39@example.org" not in emails
    # A row whose e-mail is not an address could be anyone's: no deletions by absence.
    fewer = "".join(f"r{i}@example.org,R,{i},,,,\r\n" for i in range(1, 30))
    report = upload(
        daemon, district, "20260407-040000", HEADER + "r0-at-example,R,0,,,,\r\n" + fewer
    )
    assert report["status"] == "applied" and report["counts"]["deleted"] == 0
    assert "full_sync_skipped" in {w["code"] for w in report["warnings"]}
    assert len(export(daemon, district.name)) == 39


def test_hostile_values_never_become_accounts_or_reach_a_terminal_raw(
    daemon: Daemon, district: Credentials
) -> None:
    """Control characters, invisible characters, look-alike letters and formulas: through
    the upload, the report, errors.csv, the export and `ingest epochs show`."""
    esc = "\x1b]0;owned\x07"
    content = (
        HEADER
        + "admin@example.org,Real,Admin,,,,\r\n"
        + "\u0430dmin@example.org,Fake,Admin,,,,\r\n"  # a Cyrillic a
        + f"x{esc}@example.org,Esc,Mail,,,,\r\n"
        + "z\u200bw@example.org,Zero,Width,,,,\r\n"
        + "=cmd@example.org,Formula,Mail,,,,\r\n"
        + f"bell@example.org,Be{esc}ll,Name,,,,\r\n"
        + "jos\u0065\u0301@example.org,Jose,Nfc,,,,\r\n"  # decomposed: stored composed
        + "sum@example.org,=SUM(A1),@Evil,,,,\r\n"
        + "".join(f"u{n}@example.org,U{n},Row,,,,\r\n" for n in range(200))
    )
    epoch = "20260420-020000"
    report = upload(daemon, district, epoch, content)
    assert report["status"] == "applied"
    by_line = {e["line"]: e["code"] for e in report["errors"]}
    assert by_line == {
        3: "email_mixed_script",
        4: "value_invalid",
        5: "value_invalid",
        6: "value_invalid",
        7: "value_invalid",
    }
    emails = {r["Email"] for r in export(daemon, district.name)}
    assert "admin@example.org" in emails and "jos\u00e9@example.org" in emails
    assert not any("\u0430" in e or "\x1b" in e or "\u200b" in e for e in emails)
    folder = daemon.root(district.name) / "upload-processed" / epoch
    text = (folder / "report.txt").read_text()
    assert "\x1b" not in text and "\x07" not in text and "\\x1b" in text
    assert ":7 (bell@example.org): First Name contains a control character" in text
    raw_errors = (folder / "errors.csv").read_bytes()
    assert raw_errors.startswith(b"\xef\xbb\xbf")  # Excel reads it as UTF-8
    assert b"\x1b" not in raw_errors
    listed = list(csv.DictReader(io.StringIO(raw_errors.decode("utf-8-sig"))))
    assert {r["line"]: r["email"] for r in listed}["7"] == "bell@example.org"
    shown = daemon.cli("epochs", "show", district.name, epoch).stdout
    assert "\x1b" not in shown and "email_mixed_script" in shown
    exported = {r["Email"]: r for r in export(daemon, district.name)}
    assert exported["sum@example.org"]["First Name"] == "'=SUM(A1)"  # formula-safe
    assert exported["sum@example.org"]["Last Name"] == "'@Evil"
    raw = daemon.cli("accounts", "export", district.name, "--raw").stdout
    assert ",=SUM(A1),@Evil," in raw  # exactly as stored, on request


def test_changes_csv_lists_who_was_created_updated_deleted_and_reactivated(
    daemon: Daemon, district: Credentials
) -> None:
    folder = daemon.root(district.name) / "upload-processed"

    def changes(epoch: str) -> list[list[str]]:
        data = (folder / epoch / "changes.csv").read_bytes()
        assert data.startswith(b"\xef\xbb\xbf")  # Excel reads it as UTF-8
        return list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))

    upload(daemon, district, "20260410-010000", HEADER + ANN + BOB + CYD)
    first = changes("20260410-010000")
    assert first[0] == ["email", "change", "columns", "before", "after"]
    assert sorted(r[:2] for r in first[1:]) == [
        ["ann@example.org", "created"],
        ["bob@example.org", "created"],
        ["cyd@example.org", "created"],
    ]
    renamed = CYD.replace(",Cyd,", ",=HYPERLINK(1),")  # a cell never starts with it
    gone = BOB.replace(",,,\r\n", ",,,yes\r\n")
    dan = "dan@example.org,Dan,Fox,,,,\r\n"
    upload(daemon, district, "20260410-020000", HEADER + ANN + gone + renamed + dan)
    assert sorted(changes("20260410-020000")[1:]) == [
        ["bob@example.org", "deleted", "", "", ""],
        [
            "cyd@example.org",
            "updated",
            "First Name",
            "First Name: Cyd",
            "First Name: =HYPERLINK(1)",
        ],
        ["dan@example.org", "created", "", "", ""],
    ]
    upload(daemon, district, "20260410-030000", HEADER + ANN + BOB + renamed + dan)
    assert changes("20260410-030000")[1:] == [["bob@example.org", "reactivated", "", "", ""]]
    # Nothing changed: no changes.csv at all.
    report = upload(daemon, district, "20260410-040000", HEADER + ANN + BOB + renamed + dan)
    assert report["counts"]["unchanged"] == 4
    assert not (folder / "20260410-040000" / "changes.csv").exists()
    # Processed again, an epoch lists the changes of that processing only (none here).
    daemon.cli("epochs", "reprocess", district.name, "20260410-020000")
    daemon.wait_for("epoch.published", district=district.name, epoch="20260410-020000", count=2)
    assert not (folder / "20260410-020000" / "changes.csv").exists()


def test_an_export_with_nothing_but_a_bom_deletes_nobody(
    daemon: Daemon, district: Credentials
) -> None:
    """Excel's "CSV UTF-8" of an empty sheet is three bytes, a BOM: in full-sync mode it
    was applied as a file of 0 rows, deleting every account (below the hold's minimum)."""
    upload(daemon, district, "20260411-010000", HEADER + ANN + BOB + CYD)
    daemon.cli("district", "set-mode", district.name, "full-sync")
    report = upload(daemon, district, "20260411-020000", b"\xef\xbb\xbf")
    assert report["status"] == "rejected"
    assert [e["code"] for e in report["errors"]] == ["file_empty"]
    assert len(export(daemon, district.name)) == 3
