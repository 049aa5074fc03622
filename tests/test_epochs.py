"""The epoch contract end to end: real clients upload, the daemon decides, the district reads.

Timings are shortened through configuration (settle windows, quiet period, linger) so the
suite stays fast; every wait is on a log event or a file, never a sleep.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from tests.clients import curl, paramiko_client, sftp_batch, sftp_url
from tests.harness import FAST_EPOCHS, Credentials, Daemon, ledger_row, report, run_daemon

USERS = b"Email,First Name,Last Name\nann@example.org,Ann,Lee\n"
MANY_USERS = b"Email,First Name,Last Name\n" + b"".join(
    b"user%d@example.org,User,%d\n" % (i, i) for i in range(200)
)
FAST = FAST_EPOCHS


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with run_daemon(tmp_path_factory.mktemp("epochs"), **FAST) as running:
        yield running


def index_of(daemon: Daemon, record: dict[str, Any]) -> int:
    return next(i for i, e in enumerate(daemon.logs) if e is record)


def put_epoch(
    sftp: paramiko.SFTPClient, epoch: str, files: dict[str, bytes], marker: bytes = b""
) -> None:
    sftp.mkdir(f"/upload/{epoch}")
    for name, data in files.items():
        with sftp.open(f"/upload/{epoch}/{name}", "wb") as fh:
            fh.write(data)
    with sftp.open(f"/upload/{epoch}/COMPLETE", "wb") as fh:
        fh.write(marker)


def complete_while_open(
    daemon: Daemon, creds: Credentials, epoch: str, name: str, data: bytes, split: int
) -> paramiko.SFTPClient:
    """Session A holds ``name`` open mid-upload while session B uploads COMPLETE (a
    parallel client's background queue); then A writes the rest and closes. Returns A's
    SFTP client, still connected, for what the client does next."""
    a, b = paramiko_client(daemon, creds), paramiko_client(daemon, creds)
    sa, sb = a.open_sftp(), b.open_sftp()
    sa.mkdir(f"/upload/{epoch}")
    fh = sa.open(f"/upload/{epoch}/{name}", "wb")
    fh.write(data[:split])
    fh.flush()
    with sb.open(f"/upload/{epoch}/COMPLETE", "wb"):
        pass
    b.close()
    daemon.wait_for("upload.finished", district=creds.name, path=f"/upload/{epoch}/COMPLETE")
    fh.write(data[split:])
    fh.close()
    return sa


def test_happy_path_with_openssh_sftp(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    (tmp_path / "users.csv").write_bytes(USERS)
    (tmp_path / "COMPLETE").write_bytes(b"")
    sftp_batch(
        daemon,
        district,
        "\n".join(
            [
                "mkdir /upload/20260301-020000",
                "put users.csv /upload/20260301-020000/users.csv",
                "put COMPLETE /upload/20260301-020000/COMPLETE",
            ]
        ),
        cwd=tmp_path,
    )
    ready = daemon.wait_for("epoch.ready", district=district.name, epoch="20260301-020000")
    assert ready["files"] == ["users.csv"] and "since_marker_ms" in ready
    daemon.wait_for("epoch.published", district=district.name, epoch="20260301-020000")
    result = report(daemon, district.name, "20260301-020000")
    assert result["status"] == "applied" and result["origin"] == "upload"
    assert result["files"] == [
        {"name": "users.csv", "size": len(USERS), "sha256": hashlib.sha256(USERS).hexdigest()}
    ]
    processed = daemon.root(district.name) / "upload-processed" / "20260301-020000"
    assert (processed / "users.csv").read_bytes() == USERS
    assert "processed" in (processed / "report.txt").read_text()
    assert not (daemon.root(district.name) / "upload" / "20260301-020000").exists()
    row = ledger_row(daemon, district.name, "20260301-020000")
    assert row is not None and row["state"] == "applied" and row["published_at"]
    assert row["attempts"] == 1


def test_auto_csv_with_curl(daemon: Daemon, district: Credentials, tmp_path: Path) -> None:
    (tmp_path / "users_auto.csv").write_bytes(USERS)
    curl(daemon, district, "-T", str(tmp_path / "users_auto.csv"), sftp_url(daemon, "/upload/"))
    promoted = daemon.wait_for("epoch.promoted", district=district.name)
    epoch = promoted["epoch"]
    assert promoted["files"] == ["users.csv"]
    daemon.wait_for("epoch.published", district=district.name, epoch=epoch)
    result = report(daemon, district.name, epoch)
    assert result["status"] == "applied" and result["origin"] == "auto"
    assert [f["name"] for f in result["files"]] == ["users.csv"]
    assert not (daemon.root(district.name) / "upload" / "users_auto.csv").exists()


def test_several_auto_files_in_one_window_make_one_epoch(
    daemon: Daemon, district: Credentials
) -> None:
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        for name in ("users_auto.csv", "staff_auto.csv"):
            with sftp.open(f"/upload/{name}", "wb") as fh:
                fh.write(USERS)
    promoted = daemon.wait_for("epoch.promoted", district=district.name)
    assert promoted["files"] == ["staff.csv", "users.csv"]
    daemon.wait_for("epoch.published", district=district.name, epoch=promoted["epoch"])
    result = report(daemon, district.name, promoted["epoch"])
    assert [w["code"] for w in result["warnings"]] == ["file_unknown"]
    assert len(daemon.events("epoch.promoted", district=district.name)) == 1


def test_winscp_filepart_while_complete_arrives_in_parallel(
    daemon: Daemon, district: Credentials
) -> None:
    data = os.urandom(300_000)
    epoch = "20260302-020000"
    sa = complete_while_open(daemon, district, epoch, "users.csv.filepart", data, 100_000)
    sa.utime(f"/upload/{epoch}/users.csv.filepart", (1_700_000_000, 1_700_000_000))
    sa.posix_rename(f"/upload/{epoch}/users.csv.filepart", f"/upload/{epoch}/users.csv")
    sa.get_channel().get_transport().close()  # type: ignore[union-attr]
    ready = daemon.wait_for("epoch.ready", district=district.name, epoch=epoch)
    renamed = daemon.wait_for("sftp.renamed", district=district.name)
    assert index_of(daemon, ready) > index_of(daemon, renamed)
    daemon.wait_for("epoch.published", district=district.name, epoch=epoch)
    files = report(daemon, district.name, epoch)["files"]
    assert files == [
        {"name": "users.csv", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    ]


def test_complete_while_another_session_still_uploads(
    daemon: Daemon, district: Credentials
) -> None:
    data = os.urandom(200_000)
    epoch = "20260303-020000"
    sa = complete_while_open(daemon, district, epoch, "users.csv", data, 50_000)
    sa.get_channel().get_transport().close()  # type: ignore[union-attr]
    finished = daemon.wait_for(
        "upload.finished", district=district.name, path=f"/upload/{epoch}/users.csv"
    )
    ready = daemon.wait_for("epoch.ready", district=district.name, epoch=epoch)
    assert index_of(daemon, ready) > index_of(daemon, finished)
    daemon.wait_for("epoch.published", district=district.name, epoch=epoch)
    assert report(daemon, district.name, epoch)["files"][0]["sha256"] == (
        hashlib.sha256(data).hexdigest()
    )


def test_session_dropped_mid_file_is_never_processed(daemon: Daemon, district: Credentials) -> None:
    epoch = "20260304-020000"
    client = paramiko_client(daemon, district)
    sftp = client.open_sftp()
    sftp.mkdir(f"/upload/{epoch}")
    fh = sftp.open(f"/upload/{epoch}/users.csv", "wb")
    fh.write(USERS[:20])
    fh.flush()
    with sftp.open(f"/upload/{epoch}/COMPLETE", "wb"):
        pass
    transport = client.get_transport()
    assert transport is not None
    transport.sock.close()  # gone mid-file
    daemon.wait_for("upload.aborted", district=district.name, path=f"/upload/{epoch}/users.csv")
    daemon.wait_for("epoch.notice", district=district.name, code="upload_incomplete")
    assert not daemon.events("epoch.ready", district=district.name, epoch=epoch)
    with (
        paramiko_client(daemon, district) as again,  # the nightly job retries
        again.open_sftp().open(f"/upload/{epoch}/users.csv", "wb") as fh2,
    ):
        fh2.write(USERS)
    daemon.wait_for("epoch.published", district=district.name, epoch=epoch)
    assert report(daemon, district.name, epoch)["files"][0]["size"] == len(USERS)


def test_gotchas_are_refused_at_once_with_a_clear_message(
    daemon: Daemon, district: Credentials
) -> None:
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        with pytest.raises(PermissionError, match="YYYYMMDD-HHMMSS"):
            sftp.mkdir("/upload/2026-03-05")
        with pytest.raises(PermissionError, match=r"users_auto\.csv"):
            sftp.open("/upload/users.csv", "wb")
        sftp.mkdir("/upload/20260305-020000")
        for marker in ("complete", "Complete", "COMPLETE.txt", "COMPLETE.csv", " COMPLETE"):
            with pytest.raises(PermissionError, match="exactly COMPLETE"):
                sftp.open(f"/upload/20260305-020000/{marker}", "wb")
        with pytest.raises(PermissionError, match="files only"):
            sftp.mkdir("/upload/20260305-020000/nested")
        sftp.mkdir("/upload/20200101-139029")  # the vendor's own example: accepted
    daemon.wait_for("epoch.notice", district=district.name, code="epoch_time_invalid")
    for reason in ("epoch_name_invalid", "epoch_missing", "marker_misnamed", "epoch_subdirectory"):
        daemon.wait_for("sftp.denied", district=district.name, reason=reason)


def test_report_codes_for_misnamed_file_nonempty_marker_and_odd_time(
    daemon: Daemon, district: Credentials
) -> None:
    epoch = "20200101-139029"
    with paramiko_client(daemon, district) as client:
        put_epoch(client.open_sftp(), epoch, {"Users.csv": USERS}, marker=b"done\n")
    daemon.wait_for("epoch.published", district=district.name, epoch=epoch)
    result = report(daemon, district.name, epoch)
    assert result["status"] == "rejected"
    assert [e["code"] for e in result["errors"]] == ["file_misnamed"]
    assert "did you mean users.csv" in result["errors"][0]["message"]
    assert {w["code"] for w in result["warnings"]} == {"marker_not_empty", "epoch_time_invalid"}
    text = (daemon.root(district.name) / "upload-processed" / epoch / "report.txt").read_text()
    assert "REJECTED" in text and "[file_misnamed]" in text


def test_missing_users_csv_is_rejected(daemon: Daemon, district: Credentials) -> None:
    with paramiko_client(daemon, district) as client:
        put_epoch(client.open_sftp(), "20260306-020000", {})
    daemon.wait_for("epoch.published", district=district.name, epoch="20260306-020000")
    result = report(daemon, district.name, "20260306-020000")
    assert result["status"] == "rejected"
    assert [e["code"] for e in result["errors"]] == ["file_missing"]


def test_stale_epoch_without_marker_is_reported(daemon: Daemon, district: Credentials) -> None:
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        sftp.mkdir("/upload/20260307-020000")
        with sftp.open("/upload/20260307-020000/users.csv", "wb") as fh:
            fh.write(USERS)
    old = time.time() - 2 * 86400  # as if uploaded two days ago
    os.utime(daemon.root(district.name) / "upload/20260307-020000/users.csv", (old, old))
    stale = daemon.wait_for("epoch.stale", district=district.name, epoch="20260307-020000")
    assert stale["code"] == "marker_missing"
    assert (daemon.root(district.name) / "upload/20260307-020000/users.csv").exists()


def test_submitted_epoch_is_frozen_but_stays_addressable(
    daemon: Daemon, district: Credentials
) -> None:
    epoch = "20260308-020000"
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        put_epoch(sftp, epoch, {"users.csv": USERS})
        daemon.wait_for("epoch.applied", district=district.name, epoch=epoch)
        # WinSCP / FileZilla / lftp touch files right after closing them: still fine
        sftp.utime(f"/upload/{epoch}/COMPLETE", (1_700_000_000, 1_700_000_000))
        sftp.chmod(f"/upload/{epoch}/users.csv", 0o644)
        assert sftp.stat(f"/upload/{epoch}/users.csv").st_size == len(USERS)
        with pytest.raises(PermissionError, match="submitted for processing"):
            sftp.open(f"/upload/{epoch}/extra.csv", "wb")
        with pytest.raises(PermissionError, match="submitted for processing"):
            sftp.remove(f"/upload/{epoch}/users.csv")
        with pytest.raises(PermissionError, match="submitted for processing"):
            sftp.rename(f"/upload/{epoch}", "/upload/20260308-030000")
        assert not daemon.events("epoch.published", district=district.name, epoch=epoch)
    published = daemon.wait_for("epoch.published", district=district.name, epoch=epoch)
    closed = daemon.wait_for("session.closed", district=district.name)
    assert index_of(daemon, published) > index_of(daemon, closed)
    with (
        paramiko_client(daemon, district) as client,
        pytest.raises(PermissionError, match="already submitted"),
    ):
        client.open_sftp().mkdir(f"/upload/{epoch}")


def test_out_of_order_epoch_is_superseded(daemon: Daemon, district: Credentials) -> None:
    with paramiko_client(daemon, district) as client:
        put_epoch(client.open_sftp(), "20260310-020000", {"users.csv": USERS})
    daemon.wait_for("epoch.published", district=district.name, epoch="20260310-020000")
    with paramiko_client(daemon, district) as client:
        put_epoch(client.open_sftp(), "20260309-020000", {"users.csv": USERS})
    daemon.wait_for("epoch.superseded", district=district.name, epoch="20260309-020000")
    daemon.wait_for("epoch.published", district=district.name, epoch="20260309-020000")
    result = report(daemon, district.name, "20260309-020000")
    assert result["status"] == "superseded"
    assert [e["code"] for e in result["errors"]] == ["epoch_superseded"]
    assert (
        "NOT applied"
        in (
            daemon.root(district.name) / "upload-processed" / "20260309-020000" / "report.txt"
        ).read_text()
    )


def test_two_districts_at_once(daemon: Daemon) -> None:
    districts = [daemon.add_district(), daemon.add_district()]
    errors: list[BaseException] = []

    def upload(creds: Credentials) -> None:
        try:
            with paramiko_client(daemon, creds) as client:
                put_epoch(client.open_sftp(), "20260311-020000", {"users.csv": MANY_USERS})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(c,)) for c in districts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for creds in districts:
        daemon.wait_for("epoch.published", district=creds.name, epoch="20260311-020000")
        assert report(daemon, creds.name, "20260311-020000")["status"] == "applied"


def _stage_on_disk(root: Path, epoch: str, age: float = 3600, marker: bool = True) -> None:
    """An epoch that arrived by other means (shared volume, or while the daemon was down)."""
    directory = root / "upload" / epoch
    directory.mkdir(parents=True)
    (directory / "users.csv").write_bytes(USERS)
    old = time.time() - age
    os.utime(directory / "users.csv", (old, old))
    if marker:  # last, as a district would
        (directory / "COMPLETE").write_bytes(b"")
        os.utime(directory / "COMPLETE", (old, old))


def test_restart_finds_pending_epochs_and_files_from_other_writers(tmp_path: Path) -> None:
    with run_daemon(tmp_path, **FAST) as daemon:
        creds = daemon.add_district()
    _stage_on_disk(daemon.root(creds.name), "20260312-020000")  # written while down
    with run_daemon(tmp_path, **FAST) as daemon:
        daemon.wait_for("epoch.published", district=creds.name, epoch="20260312-020000")
        # while running, straight onto the volume with fresh mtimes: quiet period applies
        _stage_on_disk(daemon.root(creds.name), "20260313-020000", age=0)
        ready = daemon.wait_for("epoch.ready", district=creds.name, epoch="20260313-020000")
        assert "since_marker_ms" not in ready  # not an SFTP upload
        daemon.wait_for("epoch.published", district=creds.name, epoch="20260313-020000")


def test_kill_9_mid_stream_then_restart_applies_each_epoch_exactly_once(tmp_path: Path) -> None:
    epochs = [f"20260320-0200{i:02d}" for i in range(12)]
    with run_daemon(tmp_path, **FAST) as daemon:
        creds = daemon.add_district()
    for epoch in reversed(epochs):  # all there at startup: processed in name order
        _stage_on_disk(daemon.root(creds.name), epoch)
    with run_daemon(tmp_path, **FAST) as daemon:
        daemon.wait_for("epoch.claimed", district=creds.name, count=3)
        daemon.signal(signal.SIGKILL)
        daemon.wait_exit()
    with run_daemon(tmp_path, **FAST) as daemon:
        # some were published before the kill: wait on the ledger, not on this run's log
        daemon.wait_until(
            lambda: all(
                (ledger_row(daemon, creds.name, e) or {}).get("published_at") for e in epochs
            ),
            what="every epoch published",
        )
    processed = daemon.root(creds.name) / "upload-processed"
    assert sorted(p.name for p in processed.iterdir()) == epochs  # no duplicates, no .2
    for epoch in epochs:
        row = ledger_row(daemon, creds.name, epoch)
        assert row is not None and row["state"] == "applied" and row["published_at"]
        assert report(daemon, creds.name, epoch)["status"] == "applied"
        assert not (daemon.root(creds.name) / "upload" / epoch).exists()
        assert (daemon.data_dir / "archive" / creds.name / epoch / "users.csv").exists()


def test_epochs_ready_together_are_processed_in_name_order(tmp_path: Path) -> None:
    with run_daemon(tmp_path, **FAST) as daemon:
        creds = daemon.add_district()
    names = ["20260315-020000", "20260314-020000", "20260316-020000"]
    for name in names:
        _stage_on_disk(daemon.root(creds.name), name)
    with run_daemon(tmp_path, **FAST) as daemon:
        for name in names:
            daemon.wait_for("epoch.published", district=creds.name, epoch=name)
        claimed = [e["epoch"] for e in daemon.events("epoch.claimed", district=creds.name)]
    assert claimed == sorted(names)
    for name in names:
        row = ledger_row(daemon, creds.name, name)
        assert row is not None and row["state"] == "applied"


def test_operator_cli_lists_shows_and_reprocesses(daemon: Daemon, district: Credentials) -> None:
    epoch = "20260317-020000"
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        put_epoch(sftp, epoch, {"users.csv": USERS})
        sftp.mkdir("/upload/20260318-020000")  # still waiting for COMPLETE
        with sftp.open("/upload/20260318-020000/users.csv", "wb") as fh:
            fh.write(USERS)
    _stage_on_disk(daemon.root(district.name), "20260101-010101", age=3 * 86400, marker=False)
    daemon.wait_for("epoch.published", district=district.name, epoch=epoch)

    listed = json.loads(daemon.cli("epochs", "list", "--district", district.name, "--json").stdout)
    states = {row["epoch"]: row["state"] for row in listed}
    # the harness's empty work epoch (no files, no marker) is not listed
    assert states == {epoch: "applied", "20260318-020000": "waiting", "20260101-010101": "stale"}
    stale = daemon.cli("epochs", "list", "--state", "stale").stdout
    assert f"{district.name}\t20260101-010101\tstale" in stale
    shown = daemon.cli("epochs", "show", district.name, epoch).stdout
    assert "Your upload was processed." in shown and "state=applied" in shown

    assert "queued" in daemon.cli("epochs", "reprocess", district.name, epoch).stdout
    daemon.wait_for("epoch.claimed", district=district.name, epoch=epoch, count=2)
    daemon.wait_for("epoch.published", district=district.name, epoch=epoch, count=2)
    row = ledger_row(daemon, district.name, epoch)
    assert row is not None and row["attempts"] == 2 and row["state"] == "applied"
    assert sorted(p.name for p in (daemon.root(district.name) / "upload-processed").iterdir()) == [
        epoch
    ]  # reports rewritten in place, nothing duplicated

    missing = daemon.cli("epochs", "reprocess", district.name, "20991231-000000", check=False)
    assert missing.returncode == 1 and "no epoch" in missing.stderr


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_watchdog_observer_finds_files_from_other_writers(tmp_path: Path, observer: str) -> None:
    settings = {
        **FAST,
        "epochs_reconcile_interval": 600,
        "epochs_observer": observer,
        "epochs_polling_interval": 0.2,
        "epochs_loose_files": "report",
    }
    with run_daemon(tmp_path, **settings) as daemon:
        # The startup scan ran before server.started; the district and its epoch come
        # later, and the next reconcile is 10 minutes away: only the observer can see them.
        creds = daemon.add_district()
        _stage_on_disk(daemon.root(creds.name), "20260319-020000")
        daemon.wait_for("epoch.published", district=creds.name, epoch="20260319-020000")
        with (
            paramiko_client(daemon, creds) as client,  # loose_files = report: accepted
            client.open_sftp().open("/upload/notes.txt", "wb") as fh,
        ):
            fh.write(b"hello")
        daemon.wait_for("epoch.notice", district=creds.name, code="epoch_missing")
        assert (daemon.root(creds.name) / "upload" / "notes.txt").exists()


def test_relative_data_dir_still_sees_open_files(tmp_path: Path) -> None:
    """The default data_dir is relative (./var): the epoch layer must compare its paths
    with the SFTP layer's resolved ones, or an open file would go unnoticed."""
    with run_daemon(tmp_path, **FAST, storage_data_dir="data") as daemon:
        creds = daemon.add_district()
        epoch = "20260321-020000"
        sa = complete_while_open(daemon, creds, epoch, "users.csv", USERS, 10)
        sa.get_channel().get_transport().close()  # type: ignore[union-attr]
        finished = daemon.wait_for(
            "upload.finished", district=creds.name, path=f"/upload/{epoch}/users.csv"
        )
        ready = daemon.wait_for("epoch.ready", district=creds.name, epoch=epoch)
        assert index_of(daemon, ready) > index_of(daemon, finished)
        assert "since_marker_ms" in ready  # SFTP-trusted files: no quiet period
        daemon.wait_for("epoch.published", district=creds.name, epoch=epoch)
        assert report(daemon, creds.name, epoch)["files"][0]["size"] == len(USERS)
