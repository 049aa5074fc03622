"""Epoch order that a wrong clock cannot poison, and no directories inside epochs.

Epochs apply in name order and an older snapshot never rolls accounts back; these tests
check that a client's clock cannot lock a district out, that the district is told why in
numbers, and that an operator can repair what got through anyway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import paramiko
import pytest

from ingest.epochs.names import epoch_name_for
from tests.clients import paramiko_client
from tests.harness import FAST_EPOCHS, Credentials, Daemon, report, run_daemon

ANN = b"Email,First Name,Last Name\nann@example.org,Ann,Lee\n"
BOB = b"Email,First Name,Last Name\nbob@example.org,Bob,Ray\n"
CAROL = b"Email,First Name,Last Name\ncarol@example.org,Carol,Kay\n"
SERVER_TIME = re.compile(r"the server's time is \d{8}-\d{6} UTC")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with run_daemon(tmp_path_factory.mktemp("order"), **FAST_EPOCHS) as running:
        yield running


def name_in(delta: timedelta = timedelta()) -> str:
    return epoch_name_for(datetime.now(UTC) + delta)


def put_epoch(sftp: paramiko.SFTPClient, epoch: str, users: bytes) -> None:
    sftp.mkdir(f"/upload/{epoch}")
    with sftp.open(f"/upload/{epoch}/users.csv", "wb") as fh:
        fh.write(users)
    with sftp.open(f"/upload/{epoch}/COMPLETE", "wb"):
        pass


def upload(daemon: Daemon, creds: Credentials, epoch: str, users: bytes) -> dict[str, Any]:
    """Upload an epoch and return its published report."""
    with paramiko_client(daemon, creds) as client:
        put_epoch(client.open_sftp(), epoch, users)
    return published(daemon, creds, epoch)


def upload_auto(daemon: Daemon, creds: Credentials, users: bytes) -> str:
    count = len(daemon.events("epoch.promoted", district=creds.name))
    with (
        paramiko_client(daemon, creds) as client,
        client.open_sftp().open("/upload/users_auto.csv", "wb") as fh,
    ):
        fh.write(users)
    return str(daemon.wait_for("epoch.promoted", district=creds.name, count=count + 1)["epoch"])


def published(daemon: Daemon, creds: Credentials, epoch: str, count: int = 1) -> dict[str, Any]:
    daemon.wait_for("epoch.published", district=creds.name, epoch=epoch, count=count, timeout=30)
    return report(daemon, creds.name, epoch)


def emails(daemon: Daemon, creds: Credentials) -> set[str]:
    exported = daemon.cli("accounts", "export", creds.name, "--format", "json").stdout
    return {account["Email"] for account in json.loads(exported)}


def test_far_future_and_impossible_names_are_refused_by_mkdir_and_rename(
    daemon: Daemon, district: Credentials
) -> None:
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        sftp.mkdir("/upload/20260601-020000")
        for name, said in (
            ("99999999-999999", "not a real date"),
            ("20261399-000000", "not a real date"),
            ("20991231-235959", "ahead of the server's clock"),
        ):
            with pytest.raises(PermissionError) as by_mkdir:
                sftp.mkdir(f"/upload/{name}")
            with pytest.raises(PermissionError) as by_rename:
                sftp.rename("/upload/20260601-020000", f"/upload/{name}")
            for refused in (by_mkdir, by_rename):
                message = str(refused.value)
                assert said in message and SERVER_TIME.search(message), message
                assert "date -u +%Y%m%d-%H%M%S" in message
            assert not (daemon.root(district.name) / "upload" / name).exists()
        assert (daemon.root(district.name) / "upload/20260601-020000").is_dir()
    for reason in ("epoch_date_invalid", "epoch_in_future"):
        for operation in ("mkdir", "rename_target_dir"):
            daemon.wait_for(
                "sftp.denied", district=district.name, reason=reason, operation=operation
            )


def test_a_name_nine_hours_ahead_is_refused_and_the_correct_upload_applies(
    daemon: Daemon, district: Credentials
) -> None:
    with (
        paramiko_client(daemon, district) as client,
        pytest.raises(PermissionError, match=r"9 h ahead of the server's clock.*local time"),
    ):
        client.open_sftp().mkdir(f"/upload/{name_in(timedelta(hours=9))}")
    assert upload(daemon, district, name_in(), ANN)["status"] == "applied"
    assert emails(daemon, district) == {"ann@example.org"}


def test_a_bogus_epoch_from_the_future_is_explained_and_an_operator_can_undo_it(
    daemon: Daemon, district: Credentials
) -> None:
    # Put straight onto the volume (as before names were checked): it is applied.
    bogus = name_in(timedelta(hours=9))
    directory = daemon.root(district.name) / "upload" / bogus
    directory.mkdir()
    (directory / "users.csv").write_bytes(ANN)
    (directory / "COMPLETE").write_bytes(b"")
    assert published(daemon, district, bogus)["status"] == "applied"

    correct = name_in()
    result = upload(daemon, district, correct, BOB)
    assert result["status"] == "superseded"
    message = result["errors"][0]["message"]
    assert re.search(r"named 9 h ahead of the server's clock \(now \d{8}-\d{6} UTC\)", message)
    assert f"ingest epochs retire {district.name} {bogus}" in message
    auto = upload_auto(daemon, district, CAROL)
    assert auto <= name_in(timedelta(minutes=16))  # never follows a bogus name far ahead
    assert published(daemon, district, auto)["status"] == "superseded"
    assert emails(daemon, district) == {"ann@example.org"}

    said = daemon.cli("epochs", "retire", district.name, bogus).stdout
    assert "no longer counts as the newest epoch" in said
    retired = published(daemon, district, bogus, count=2)
    assert retired["status"] == "applied" and retired["retired_at"]
    shown = json.loads(daemon.cli("epochs", "show", district.name, bogus, "--json").stdout)
    assert shown["retired_at"] == retired["retired_at"] and shown["forced_at"] is None
    text = (daemon.root(district.name) / "upload-processed" / bogus / "report.txt").read_text()
    assert "took it out of the epoch order" in text
    for epoch in (correct, auto):
        daemon.cli("epochs", "reprocess", district.name, epoch)
        assert published(daemon, district, epoch, count=2)["status"] == "applied"
    assert emails(daemon, district) == {"ann@example.org", "bob@example.org", "carol@example.org"}
    later = upload_auto(daemon, district, CAROL)
    assert published(daemon, district, later)["status"] == "applied"
    twice = daemon.cli("epochs", "retire", district.name, bogus, check=False)
    assert twice.returncode == 1 and "already retired" in twice.stderr


def test_a_superseded_report_says_why_in_numbers_and_force_apply_applies_it(
    daemon: Daemon, district: Credentials
) -> None:
    assert upload(daemon, district, name_in(), ANN)["status"] == "applied"
    older = name_in(timedelta(hours=-8, seconds=-1))
    result = upload(daemon, district, older, BOB)
    assert result["status"] == "superseded"
    message = result["errors"][0]["message"]
    assert "8 h behind the newest applied one" in message
    assert "Are you naming epochs with local time?" in message
    assert emails(daemon, district) == {"ann@example.org"}
    daemon.cli("epochs", "force-apply", district.name, older)
    forced = published(daemon, district, older, count=2)
    assert forced["status"] == "applied" and forced["forced_at"]
    assert emails(daemon, district) == {"ann@example.org", "bob@example.org"}
    again = daemon.cli("epochs", "force-apply", district.name, older, check=False)
    assert again.returncode == 1 and "only a superseded epoch" in again.stderr


def test_auto_epochs_sort_after_the_districts_newest_epoch(
    daemon: Daemon, district: Credentials
) -> None:
    ahead = name_in(timedelta(minutes=10))  # within epochs.max_clock_skew (15 min)
    assert upload(daemon, district, ahead, ANN)["status"] == "applied"
    auto = upload_auto(daemon, district, BOB)
    assert auto > ahead
    assert published(daemon, district, auto)["status"] == "applied"
    assert emails(daemon, district) == {"ann@example.org", "bob@example.org"}


def test_nothing_but_files_can_be_put_into_an_epoch(daemon: Daemon, district: Credentials) -> None:
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        sftp.mkdir("/upload/20260602-020000")
        sftp.mkdir("/upload/20260602-030000")
        with pytest.raises(PermissionError, match="files only"):
            sftp.rename("/upload/20260602-030000", "/upload/20260602-020000/nested")
        with pytest.raises(PermissionError, match="files only"):
            sftp.posix_rename("/upload/20260602-030000", "/upload/20260602-020000/nested")
        with sftp.open("/upload/20260602-020000/users.csv", "wb") as fh:
            fh.write(ANN)
        with pytest.raises(PermissionError, match="cannot go directly into /upload/"):
            sftp.rename("/upload/20260602-020000/users.csv", "/upload/20260602-040000")
        sftp.rename("/upload/20260602-030000", "/upload/20260602-050000")  # epoch to epoch: fine
    root = daemon.root(district.name) / "upload"
    assert not (root / "20260602-020000" / "nested").exists()
    assert not (root / "20260602-040000").exists() and (root / "20260602-050000").is_dir()
    denied = daemon.wait_for("sftp.denied", district=district.name, reason="epoch_subdirectory")
    assert denied["operation"] == "rename_target_dir"
