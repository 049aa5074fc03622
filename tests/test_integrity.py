"""A file that is not whole is never processed, and nothing changes an epoch after its claim.

Real daemon, real clients. Tests that check that something does NOT happen wait past every
timer that could make it happen (``PAST_TIMERS``: the quiet period, the settle windows and
the reconcile interval of ``FAST_EPOCHS``, with a margin).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from tests.clients import lftp, paramiko_client, rclone
from tests.harness import FAST_EPOCHS, Credentials, Daemon, run_daemon, run_in_process

FAST = FAST_EPOCHS
# Longer than every timer of FAST_EPOCHS that could make an epoch ready or promote a file.
PAST_TIMERS = 1.5 + max(float(v) for k, v in FAST.items() if k != "epochs_publish_linger")
BATCH = 4 * 1024 * 1024  # the write-behind batch (ingest/sftp/writer.py)


def users_csv(rows: int, first: int = 0) -> bytes:
    return b"Email,First Name,Last Name\n" + b"".join(
        b"user%d@example.org,User,Last%d\n" % (i, i) for i in range(first, first + rows)
    )


ROWS = 200_000
BIG = users_csv(ROWS)  # about 6.5 MB: more than a write-behind batch
assert len(BIG) > BATCH + 1_000_000


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with run_daemon(tmp_path_factory.mktemp("integrity"), **FAST) as running:
        yield running


def ledger_row(daemon: Daemon, district: str, epoch: str) -> dict[str, Any] | None:
    db = sqlite3.connect(daemon.data_dir / "state" / "ingest.db")
    db.row_factory = sqlite3.Row
    try:
        row = db.execute(
            "SELECT * FROM epochs WHERE district = ? AND name = ?", (district, epoch)
        ).fetchone()
        return dict(row) if row else None
    finally:
        db.close()


def report(daemon: Daemon, district: str, epoch: str) -> dict[str, Any]:
    path = daemon.root(district) / "upload-processed" / epoch / "report.json"
    return json.loads(path.read_text())


def emails(daemon: Daemon, district: str) -> set[str]:
    exported = daemon.cli("accounts", "export", district, "--format", "json").stdout
    return {account["Email"] for account in json.loads(exported)}


def nothing_for(daemon: Daemon, district: str, epoch: str) -> None:
    """The epoch was neither found ready nor recorded: nothing was processed."""
    for event in ("epoch.ready", "epoch.claimed", "epoch.published"):
        assert not daemon.events(event, district=district, epoch=epoch), event
    assert ledger_row(daemon, district, epoch) is None


def start_with_complete(
    daemon: Daemon, creds: Credentials, epoch: str, data: bytes
) -> tuple[paramiko.SSHClient, paramiko.SFTPFile]:
    """Session A writes ``data`` into users.csv and keeps it open; session B uploads
    COMPLETE meanwhile (a parallel client's queue). Returns A and its open handle."""
    a = paramiko_client(daemon, creds)
    sa = a.open_sftp()
    sa.mkdir(f"/upload/{epoch}")
    handle = sa.open(f"/upload/{epoch}/users.csv", "wb")
    handle.set_pipelined(True)  # paramiko waits for each write's reply otherwise: slow
    handle.write(data)
    handle.flush()
    with paramiko_client(daemon, creds) as b, b.open_sftp().open(f"/upload/{epoch}/COMPLETE", "wb"):
        pass
    daemon.wait_for("upload.finished", district=creds.name, path=f"/upload/{epoch}/COMPLETE")
    return a, handle


def on_disk(daemon: Daemon, creds: Credentials, path: str) -> int:
    file = daemon.root(creds.name) / path.lstrip("/")
    return file.stat().st_size if file.exists() else -1


@pytest.mark.parametrize("split", [100_000, BATCH + 500_000], ids=["below-batch", "above-batch"])
def test_a_client_pausing_longer_than_the_quiet_period_is_waited_for(
    daemon: Daemon, district: Credentials, split: int
) -> None:
    epoch = "20260401-020000"
    a, handle = start_with_complete(daemon, district, epoch, BIG[:split])
    # What the client was told is written reaches the file promptly (write-behind timer).
    daemon.wait_until(
        lambda: on_disk(daemon, district, f"/upload/{epoch}/users.csv") == split,
        "the acknowledged bytes on disk",
        timeout=1.5,
    )
    time.sleep(PAST_TIMERS)  # the client pauses: nothing may happen, however long
    nothing_for(daemon, district.name, epoch)
    handle.write(BIG[split:])
    handle.close()
    a.close()
    applied = daemon.wait_for("epoch.applied", district=district.name, epoch=epoch, timeout=60)
    assert applied["summary"]["created"] == ROWS
    daemon.wait_for("epoch.published", district=district.name, epoch=epoch)
    assert report(daemon, district.name, epoch)["files"] == [
        {"name": "users.csv", "size": len(BIG), "sha256": hashlib.sha256(BIG).hexdigest()}
    ]


def test_a_slow_auto_csv_is_promoted_only_once_it_is_closed(
    daemon: Daemon, district: Credentials
) -> None:
    data = users_csv(2_000)
    with paramiko_client(daemon, district) as client:
        handle = client.open_sftp().open("/upload/users_auto.csv", "wb")
        written = 0
        while written < len(data) // 2:  # about 40 KB/s, as seen from curl
            handle.write(data[written : written + 4_000])
            handle.flush()
            written += 4_000
            time.sleep(0.1)
        time.sleep(PAST_TIMERS)  # and then a pause
        assert not daemon.events("epoch.promoted", district=district.name)
        handle.write(data[written:])
        handle.close()
    promoted = daemon.wait_for("epoch.promoted", district=district.name)
    applied = daemon.wait_for("epoch.applied", district=district.name, epoch=promoted["epoch"])
    assert applied["summary"]["created"] == 2_000
    assert len(daemon.events("epoch.promoted", district=district.name)) == 1


def test_both_layers_see_the_same_open_handle(tmp_path: Path) -> None:
    with run_in_process(tmp_path, **FAST) as (server, view):
        creds = view.add_district("shared")
        real = view.root("shared").resolve() / "upload/20260101-000000/users.csv"
        with paramiko_client(view, creds) as client:
            handle = client.open_sftp().open("/upload/20260101-000000/users.csv", "wb")
            handle.write(b"Email\n")
            handle.flush()
            assert server.sftp is not None and server.epochs is not None
            sftp_layer, epoch_layer = server.sftp, server.epochs
            assert view.on_loop(lambda: sftp_layer.uploads.is_open(real))
            assert view.on_loop(lambda: epoch_layer.uploads.is_open(real))
            assert sftp_layer.uploads is epoch_layer.uploads
            handle.close()


def test_sigterm_drains_open_uploads_and_never_processes_a_cut_file(tmp_path: Path) -> None:
    epoch, data = "20260402-020000", users_csv(20_000)
    settings = {**FAST, "server_shutdown_grace": PAST_TIMERS + 5}
    with run_daemon(tmp_path, **settings) as daemon:
        done, cut = daemon.add_district(), daemon.add_district()
        a, finishing = start_with_complete(daemon, done, epoch, data[:100_000])
        b, _ = start_with_complete(daemon, cut, epoch, data[:100_000])
        daemon.signal(signal.SIGTERM)
        daemon.wait_for("server.stopping")
        time.sleep(PAST_TIMERS)  # draining: the paused uploads must not be processed
        finishing.write(data[100_000:])
        finishing.close()
        daemon.wait_for("upload.finished", district=done.name, path=f"/upload/{epoch}/users.csv")
        assert daemon.wait_exit(timeout=30) == 0  # the second one is cut off at the grace
        assert not daemon.events("epoch.claimed")
        daemon.wait_for("upload.aborted", district=cut.name, reason="server_shutdown")
        a.close()
        b.close()
    with run_daemon(tmp_path, **FAST) as daemon:
        interrupted = daemon.wait_for("upload.interrupted", district=cut.name)
        assert interrupted["path"] == f"/upload/{epoch}/users.csv"
        assert interrupted["size"] == 100_000
        applied = daemon.wait_for("epoch.applied", district=done.name, epoch=epoch, timeout=60)
        assert applied["summary"]["created"] == 20_000
        time.sleep(PAST_TIMERS)
        nothing_for(daemon, cut.name, epoch)
        daemon.wait_for("epoch.notice", district=cut.name, code="upload_incomplete")


def test_kill_9_mid_upload_then_restart_waits_for_the_upload_again(tmp_path: Path) -> None:
    epoch = "20260403-020000"
    with run_daemon(tmp_path, **FAST) as daemon:
        creds = daemon.add_district()
        a, _ = start_with_complete(daemon, creds, epoch, BIG[:3_000_000])
        daemon.wait_until(
            lambda: on_disk(daemon, creds, f"/upload/{epoch}/users.csv") == 3_000_000,
            "the acknowledged bytes on disk",
        )
        daemon.signal(signal.SIGKILL)
        daemon.wait_exit()
        a.close()
    with run_daemon(tmp_path, **FAST) as daemon:
        interrupted = daemon.wait_for("upload.interrupted", district=creds.name)
        assert interrupted["path"] == f"/upload/{epoch}/users.csv"
        assert interrupted["size"] is None  # it was still open when the server died
        notice = daemon.wait_for("epoch.notice", district=creds.name, code="upload_incomplete")
        assert notice["path"] == f"/upload/{epoch}/users.csv"
        time.sleep(PAST_TIMERS)
        nothing_for(daemon, creds.name, epoch)
        with (
            paramiko_client(daemon, creds) as client,  # the nightly job uploads it again
            client.open_sftp().open(f"/upload/{epoch}/users.csv", "wb") as handle,
        ):
            handle.write(BIG)
        applied = daemon.wait_for("epoch.applied", district=creds.name, epoch=epoch, timeout=60)
        assert applied["summary"]["created"] == ROWS
        assert f"user{ROWS - 1}@example.org" in emails(daemon, creds.name)


class SlowExecutor(concurrent.futures.ThreadPoolExecutor):
    """The SFTP layer's I/O threads, with a way to hold back the next job: a wide window
    between a request's policy check (on the event loop) and its file I/O (here)."""

    def __init__(self) -> None:
        super().__init__(max_workers=16, thread_name_prefix="slow-io")
        self.hold_next = 0.0
        self.held = threading.Event()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        delay, self.hold_next = self.hold_next, 0.0
        if not delay:
            return super().submit(fn, *args, **kwargs)

        def late() -> Any:
            self.held.set()
            time.sleep(delay)
            return fn(*args, **kwargs)

        return super().submit(late)


def test_a_writer_racing_the_freeze_never_changes_a_claimed_epoch(tmp_path: Path) -> None:
    first, second = users_csv(3), users_csv(3, first=100)
    epoch = "20260404-020000"
    with run_in_process(tmp_path, **FAST) as (server, view):
        creds = view.add_district("racer")
        assert server.sftp is not None
        slow, usual = SlowExecutor(), server.sftp.runtime.executor
        server.sftp.runtime.executor = slow
        usual.shutdown(wait=False)
        with paramiko_client(view, creds) as a, paramiko_client(view, creds) as b:
            sa, sb = a.open_sftp(), b.open_sftp()
            sa.mkdir(f"/upload/{epoch}")
            with sa.open(f"/upload/{epoch}/users.csv", "wb") as fh:
                fh.write(first)
            marker = sa.open(f"/upload/{epoch}/COMPLETE", "wb")
            # B's open passes the policy now, but its file I/O runs 3 s later...
            slow.hold_next = 3.0
            late = concurrent.futures.ThreadPoolExecutor(1).submit(
                sb.open, f"/upload/{epoch}/users.csv", "wb"
            )
            assert slow.held.wait(10)
            marker.close()  # ...and meanwhile the epoch has its COMPLETE
            with late.result(30) as rewrite:
                rewrite.write(second)
        archived = view.data_dir / "archive" / "racer" / epoch / "users.csv"
        view.wait_until(archived.exists, "the epoch claimed and archived", timeout=30)
        view.wait_until(
            lambda: (ledger_row(view, "racer", epoch) or {}).get("outcome"), "an outcome"
        )
        row = ledger_row(view, "racer", epoch)
        assert row is not None and row["state"] == "applied"
        files = json.loads(row["files"])
    # The ledger, the archive and what was applied agree: the epoch is the rewritten file,
    # which was admitted before the epoch was complete.
    assert files == [
        {"name": "users.csv", "size": len(second), "sha256": hashlib.sha256(second).hexdigest()}
    ]
    assert archived.read_bytes() == second


def test_a_tampered_archive_is_never_applied(daemon: Daemon, district: Credentials) -> None:
    epoch = "20260405-020000"
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        sftp.mkdir(f"/upload/{epoch}")
        with sftp.open(f"/upload/{epoch}/users.csv", "wb") as fh:
            fh.write(users_csv(5))
        with sftp.open(f"/upload/{epoch}/COMPLETE", "wb"):
            pass
    daemon.wait_for("epoch.published", district=district.name, epoch=epoch)
    archived = daemon.data_dir / "archive" / district.name / epoch / "users.csv"
    with archived.open("ab") as fh:  # someone with access to the volume
        fh.write(b"intruder@example.org,In,Truder\n")
    daemon.cli("epochs", "reprocess", district.name, epoch)
    failed = daemon.wait_for("epoch.failed", district=district.name, epoch=epoch, timeout=40)
    assert failed["code"] == "archive_mismatch" and failed["file"] == "users.csv"
    assert (
        failed["expected_size"] == len(users_csv(5)) and failed["size"] == archived.stat().st_size
    )
    daemon.wait_for("epoch.published", district=district.name, epoch=epoch, count=2)
    row = ledger_row(daemon, district.name, epoch)
    assert row is not None and row["state"] == "failed"
    assert [e["code"] for e in report(daemon, district.name, epoch)["errors"]] == [
        "archive_mismatch"
    ]
    assert "intruder@example.org" not in emails(daemon, district.name)
    assert len(emails(daemon, district.name)) == 5


@pytest.mark.parametrize("client", ["rclone", "lftp"])
def test_a_folder_uploaded_in_one_command_is_applied_every_time(
    daemon: Daemon, district: Credentials, tmp_path: Path, client: str
) -> None:
    """rclone copy and lftp mirror -P send the epoch's files in parallel: the empty
    COMPLETE is often done before users.csv has even been opened."""
    folder = tmp_path / "epoch"
    folder.mkdir()
    (folder / "users.csv").write_bytes(users_csv(20_000))
    (folder / "COMPLETE").write_bytes(b"")
    for run in range(4):
        epoch = f"2026041{run}-020000"
        if client == "rclone":
            rclone(daemon, district, "copy", "--transfers", "4", str(folder), f"d:/upload/{epoch}")
        else:
            lftp(daemon, district, f"mirror -R -P 4 {folder} /upload/{epoch}")
        daemon.wait_for("epoch.published", district=district.name, epoch=epoch, timeout=30)
        result = report(daemon, district.name, epoch)
        assert (result["status"], result["errors"]) == ("applied", []), (run, result)
