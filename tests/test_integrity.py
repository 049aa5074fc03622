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
from tests.harness import (
    FAST_EPOCHS,
    Credentials,
    Daemon,
    ledger_row,
    report,
    run_daemon,
    run_in_process,
)

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
            handle.set_pipelined(True)
            handle.write(BIG)
        applied = daemon.wait_for("epoch.applied", district=creds.name, epoch=epoch, timeout=60)
        assert applied["summary"]["created"] == ROWS
        assert f"user{ROWS - 1}@example.org" in emails(daemon, creds.name)


class SlowExecutor(concurrent.futures.ThreadPoolExecutor):
    """A server's worker threads, with a way to hold back the next job that matches: a
    wide window between a request's check on the event loop and its file I/O here, or
    between a listing and the decision made on it. Nothing is mocked: jobs run as they
    would, later."""

    def __init__(self, workers: int = 16) -> None:
        super().__init__(max_workers=workers, thread_name_prefix="slow")
        self._hold: tuple[float, Callable[..., bool], bool] | None = None
        self.held = threading.Event()

    def hold_next(
        self, delay: float, when: Callable[..., bool] = lambda *_: True, after: bool = False
    ) -> None:
        """Delay the next job ``fn(*args)`` for which ``when(fn, *args)`` holds, by
        ``delay`` seconds before it runs (or ``after`` it ran, before its result is
        delivered)."""
        self.held.clear()
        self._hold = (delay, when, after)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        hold = self._hold
        if hold is None or not hold[1](fn, *args):
            return super().submit(fn, *args, **kwargs)
        self._hold = None
        delay, _, after = hold

        def late() -> Any:
            self.held.set()
            if not after:
                time.sleep(delay)
            result = fn(*args, **kwargs)
            if after:
                time.sleep(delay)
            return result

        return super().submit(late)


def slow_sftp_io(server: Any) -> SlowExecutor:
    """Replace an in-process server's SFTP I/O threads with a SlowExecutor."""
    slow, usual = SlowExecutor(), server.sftp.runtime.executor
    server.sftp.runtime.executor = slow
    usual.shutdown(wait=False)
    return slow


def test_a_writer_racing_the_freeze_never_changes_a_claimed_epoch(tmp_path: Path) -> None:
    first, second = users_csv(3), users_csv(3, first=100)
    epoch = "20260404-020000"
    with run_in_process(tmp_path, **FAST) as (server, view):
        creds = view.add_district("racer")
        assert server.sftp is not None
        slow = slow_sftp_io(server)
        with paramiko_client(view, creds) as a, paramiko_client(view, creds) as b:
            sa, sb = a.open_sftp(), b.open_sftp()
            sa.mkdir(f"/upload/{epoch}")
            with sa.open(f"/upload/{epoch}/users.csv", "wb") as fh:
                fh.write(first)
            marker = sa.open(f"/upload/{epoch}/COMPLETE", "wb")
            # B's open passes the policy now, but its file I/O runs 3 s later...
            slow.hold_next(3.0)
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


def cut_off(client: paramiko.SSHClient) -> None:
    """The connection goes away with a handle open and no close request."""
    transport = client.get_transport()
    assert transport is not None
    transport.close()


@pytest.mark.parametrize("how", ["renamed-over", "removed", "same-file"])
def test_a_close_never_makes_a_cut_file_whole_unless_it_wrote_it_after_the_cut(
    daemon: Daemon, district: Credentials, how: str
) -> None:
    """Handle B is open on users.csv. Then a cut-off upload ends up at that path: renamed
    over it, uploaded after it was removed, or written into the same file by a second
    handle. B's close says nothing about that file: it stays not whole."""
    epoch, data = "20260406-020000", users_csv(2_000)
    half = data[: data.index(b"\n", len(data) // 2) + 1]
    users = f"/upload/{epoch}/users.csv"
    with paramiko_client(daemon, district) as a:
        sa = a.open_sftp()
        sa.mkdir(f"/upload/{epoch}")
        with sa.open(users, "wb") as fh:
            fh.write(data[:30])
        b = paramiko_client(daemon, district)
        resume = b.open_sftp().open(users, "r+")  # open for writing, not truncated
        c = paramiko_client(daemon, district)
        target = f"/upload/{epoch}/part.csv" if how == "renamed-over" else users
        if how == "removed":
            sa.remove(users)
        partial = c.open_sftp().open(target, "wb")
        partial.set_pipelined(True)
        partial.write(half)
        partial.flush()
        daemon.wait_until(
            lambda: on_disk(daemon, district, target) == len(half), "the partial file on disk"
        )
        cut_off(c)
        daemon.wait_for("upload.aborted", district=district.name, path=target)
        if how == "renamed-over":
            sa.posix_rename(target, users)
        with sa.open(f"/upload/{epoch}/COMPLETE", "wb"):
            pass
        resume.close()  # an explicit close, of a handle that did not write the partial file
        b.close()
        time.sleep(PAST_TIMERS)
        nothing_for(daemon, district.name, epoch)
        daemon.wait_for("epoch.notice", district=district.name, code="upload_incomplete")
        with sa.open(users, "wb") as fh:  # uploaded again: now it is whole
            fh.set_pipelined(True)
            fh.write(data)
    applied = daemon.wait_for("epoch.applied", district=district.name, epoch=epoch)
    assert applied["summary"]["created"] == 2_000


def test_a_file_removed_under_its_open_handle_leaves_nothing_behind(
    daemon: Daemon, district: Credentials
) -> None:
    """Open, remove, drop the session: no record of a cut file that does not exist (a
    client repeating that must not grow the journal)."""
    journal = daemon.data_dir / "state" / "uploads.db"

    def rows() -> int:
        db = sqlite3.connect(journal)
        try:
            query = "SELECT COUNT(*) FROM uploads WHERE district = ?"
            return int(db.execute(query, (district.name,)).fetchone()[0])
        finally:
            db.close()

    assert rows() == 0
    for run in range(3):
        client = paramiko_client(daemon, district)
        sftp = client.open_sftp()
        path = f"/upload/20260101-000000/gone{run}.csv"
        handle = sftp.open(path, "wb")
        handle.write(b"x")
        handle.flush()
        sftp.remove(path)
        cut_off(client)
        aborted = daemon.wait_for("upload.aborted", district=district.name, path=path)
        assert aborted["reason"] == "file_replaced"
    assert rows() == 0


def test_an_open_racing_a_rename_is_tracked_where_it_writes(tmp_path: Path) -> None:
    """A rename of E1/users.csv to E2/ and a new upload of E1/users.csv at the same time:
    the new upload must be known open in E1 (where it writes), not moved to E2 with the
    renamed file. Path operations that overlap run one after the other."""
    e1, e2 = "20260407-020000", "20260407-030000"
    with run_in_process(tmp_path, **FAST) as (server, view):
        creds = view.add_district("renamer")
        assert server.sftp is not None
        uploads, slow = server.sftp.uploads, slow_sftp_io(server)
        root = view.root("renamer").resolve() / "upload"
        with paramiko_client(view, creds) as a, paramiko_client(view, creds) as b:
            sa, sb = a.open_sftp(), b.open_sftp()
            for epoch in (e1, e2):
                sa.mkdir(f"/upload/{epoch}")
            with sa.open(f"/upload/{e1}/users.csv", "wb") as fh:
                fh.write(users_csv(3))
            background = concurrent.futures.ThreadPoolExecutor(2)
            # The rename's file I/O, in flight for a second...
            slow.hold_next(1.0, when=lambda fn, *_: "_rename.<locals>" in fn.__qualname__)
            moving = background.submit(
                sa.posix_rename, f"/upload/{e1}/users.csv", f"/upload/{e2}/users.csv"
            )
            assert slow.held.wait(10)
            # ...while B's open arrives, its own I/O later still
            slow.hold_next(2.0, when=lambda fn, *_: "open.<locals>" in fn.__qualname__)
            opening = background.submit(sb.open, f"/upload/{e1}/users.csv", "wb")
            moving.result(30)
            with opening.result(30) as fresh:
                fresh.write(b"Email,First Name,Last Name\n")
                fresh.flush()
                assert view.on_loop(lambda: uploads.is_open(root / e1 / "users.csv"))
                assert not view.on_loop(lambda: uploads.is_open(root / e2 / "users.csv"))
                with sa.open(f"/upload/{e1}/COMPLETE", "wb"):
                    pass
                time.sleep(PAST_TIMERS)  # B is still writing E1/users.csv: E1 waits
                assert ledger_row(view, "renamer", e1) is None
                fresh.write(users_csv(4)[len(b"Email,First Name,Last Name\n") :])
        view.wait_until(
            lambda: (ledger_row(view, "renamer", e1) or {}).get("outcome"), "E1 processed"
        )
        row = ledger_row(view, "renamer", e1)
        assert row is not None and row["state"] == "applied"
        assert json.loads(row["outcome"])["summary"]["created"] == 4


def test_a_change_between_the_look_and_the_freeze_is_seen(tmp_path: Path) -> None:
    """The epoch layer reads the listing, then freezes the epoch. A client that finishes
    its paused upload in between must not leave a decision made on the old listing (an
    epoch recorded with the size the file had before, then failed as archive_mismatch)."""
    from ingest.epochs.scan import read_epoch

    epoch, data = "20260408-020000", users_csv(3_000)
    with run_in_process(tmp_path, **FAST) as (server, view):
        creds = view.add_district("looker")
        assert server.epochs is not None
        slow = SlowExecutor(4)
        server.epochs._io_pool = slow
        with paramiko_client(view, creds) as a, paramiko_client(view, creds) as b:
            sa = a.open_sftp()
            sa.mkdir(f"/upload/{epoch}")
            handle = sa.open(f"/upload/{epoch}/users.csv", "wb")
            handle.write(data[:30_000])
            handle.flush()
            time.sleep(PAST_TIMERS)  # paused for longer than the quiet period
            # The next listing that sees COMPLETE is delivered 2 s after it was read...
            slow.hold_next(
                2.0,
                when=lambda fn, *args: fn is read_epoch and (args[0] / "COMPLETE").exists(),
                after=True,
            )
            with b.open_sftp().open(f"/upload/{epoch}/COMPLETE", "wb"):
                pass
            assert slow.held.wait(10)
            handle.write(data[30_000:])  # ...and meanwhile the client finishes
            handle.close()
        view.wait_until(
            lambda: (ledger_row(view, "looker", epoch) or {}).get("outcome"), "an outcome"
        )
        row = ledger_row(view, "looker", epoch)
        assert row is not None and row["state"] == "applied", row
        assert json.loads(row["files"])[0]["size"] == len(data)


def test_a_locked_journal_refuses_an_upload_quickly_and_blocks_no_one(
    daemon: Daemon, district: Credentials
) -> None:
    other = daemon.add_district()
    journal = sqlite3.connect(daemon.data_dir / "state" / "uploads.db", isolation_level=None)
    journal.execute("BEGIN IMMEDIATE")  # someone's sqlite3 shell holds the write lock
    try:
        with (
            paramiko_client(daemon, district) as client,
            paramiko_client(daemon, other) as bystander,
        ):
            sftp, started = client.open_sftp(), time.monotonic()
            with pytest.raises(OSError, match="cannot record this upload right now"):
                sftp.open("/upload/20260101-000000/users.csv", "wb")
            assert time.monotonic() - started < 5
            started = time.monotonic()
            assert bystander.open_sftp().listdir("/upload") == ["20260101-000000"]
            assert time.monotonic() - started < 1
    finally:
        journal.execute("ROLLBACK")
        journal.close()
    daemon.wait_for("upload.journal_failed", district=district.name)
    with (
        paramiko_client(daemon, district) as client,
        client.open_sftp().open("/upload/20260101-000000/users.csv", "wb") as fh,
    ):
        fh.write(b"works again")
    daemon.wait_for("upload.finished", district=district.name)


def test_a_cut_file_recorded_before_the_upgrade_stays_cut(tmp_path: Path) -> None:
    """The version before the upload journal recorded cut-off files in ingest.db
    (incomplete_uploads); upgrading must not forget them."""
    import os

    from ingest.store import Database
    from ingest.store.db import STATE_MIGRATIONS

    epoch, data = "20260409-020000", users_csv(2_000)
    state = tmp_path / "data" / "state"
    state.mkdir(parents=True)
    before = Database(f"sqlite:///{state / 'ingest.db'}", migrations=STATE_MIGRATIONS[:5])
    before.migrate()  # the schema of the version before
    districts = tmp_path / "data" / "districts"
    with before.connect() as conn:  # the district as the version before made it
        conn.execute(
            "INSERT INTO districts (name, password_hash, enabled, created_at, updated_at)"
            " VALUES ('upgrader', NULL, 1, 'x', 'x')"
        )
    directory = districts / "upgrader" / "upload" / epoch
    directory.mkdir(parents=True)
    (directory / "users.csv").write_bytes(data[: len(data) // 2])
    (directory / "COMPLETE").write_bytes(b"")
    with before.connect() as conn:
        conn.execute(
            "INSERT INTO incomplete_uploads (path, district, size, at) VALUES (?, ?, ?, ?)",
            (os.path.realpath(directory / "users.csv"), "upgrader", len(data) // 2, "x"),
        )
    with run_daemon(tmp_path, **FAST) as daemon:
        interrupted = daemon.wait_for("upload.interrupted", district="upgrader")
        assert interrupted["path"] == f"/upload/{epoch}/users.csv"
        time.sleep(PAST_TIMERS)
        nothing_for(daemon, "upgrader", epoch)
        db = sqlite3.connect(state / "ingest.db")
        assert db.execute("SELECT COUNT(*) FROM legacy_incomplete_uploads").fetchone() == (0,)
        db.close()
    with run_daemon(tmp_path, **FAST) as daemon:  # adopted once, remembered after
        daemon.wait_for("upload.interrupted", district="upgrader")
