"""Where the processor runs: a child process by default (its death applies nothing and the
epoch can be redone), or a thread of the daemon on request."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.clients import paramiko_client
from tests.harness import FAST_EPOCHS, Credentials, Daemon, run_daemon, wait_until
from tests.test_provisioning import export

HEADER = "Email,First Name,Last Name,Staff Id\r\n"
EPOCH = "20260501-020000"
LARGE_ROWS = 150_000  # 6 MB: processed in a child


def processing_children(daemon: Daemon) -> list[int]:
    """PIDs of the daemon's processing children (multiprocessing's spawn workers, not its
    resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == daemon.proc.pid and "spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def reading_users_csv(pid: int) -> bool:
    """The child has users.csv open: it is in the pass over the file (``prepare``), the
    longest part of the epoch's work."""
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return False
    return any(link.endswith("/users.csv") for link in links)


def put_epoch(daemon: Daemon, district: Credentials, epoch: str, content: str) -> None:
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        sftp.mkdir(f"/upload/{epoch}")
        with sftp.open(f"/upload/{epoch}/users.csv", "wb") as fh:
            fh.set_pipelined(True)
            fh.write(content.encode())
        with sftp.open(f"/upload/{epoch}/COMPLETE", "wb"):
            pass


def start_large_epoch(daemon: Daemon) -> tuple[Credentials, int]:
    """A new district uploads EPOCH with LARGE_ROWS rows; returns it and the processing
    child once that child is in its pass over users.csv."""
    district = daemon.add_district()
    rows = "".join(f"user{i}@example.org,User,{i},S{i}\r\n" for i in range(LARGE_ROWS))
    put_epoch(daemon, district, EPOCH, HEADER + rows)
    daemon.wait_for("epoch.claimed", district=district.name, epoch=EPOCH)
    child = wait_until(lambda: processing_children(daemon), 30, "a processing child")[0]
    wait_until(lambda: reading_users_csv(child), 30, "the child to read users.csv")
    return district, child


def test_a_killed_processing_child_applies_nothing_and_the_epoch_can_be_redone(
    tmp_path: Path,
) -> None:
    with run_daemon(tmp_path, **FAST_EPOCHS) as daemon:
        district, child = start_large_epoch(daemon)
        # The pass over the file holds no write lock: other districts' epochs, the ledger
        # and the CLI can write meanwhile (only applying the result takes it).
        other = sqlite3.connect(daemon.data_dir / "state" / "ingest.db", timeout=0)
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        other.close()
        assert reading_users_csv(child)  # still in the pass: the check above was meaningful
        os.kill(child, signal.SIGKILL)  # inside the epoch's work (its transaction follows)

        failed = daemon.wait_for("epoch.failed", district=district.name, epoch=EPOCH)
        assert "exited before it finished" in failed["error"]
        daemon.wait_for("epoch.published", district=district.name, epoch=EPOCH)
        report = daemon.root(district.name) / "upload-processed" / EPOCH / "report.json"
        published = json.loads(report.read_text())
        assert published["status"] == "failed"
        assert [e["code"] for e in published["errors"]] == ["processor_error"]
        assert export(daemon, district.name) == []  # the transaction died with the child

        # A fresh child takes the reprocessed epoch; every account arrives exactly once.
        daemon.cli("epochs", "reprocess", district.name, EPOCH, check=True)
        applied = daemon.wait_for("epoch.applied", district=district.name, epoch=EPOCH)
        assert applied["summary"]["created"] == LARGE_ROWS
        assert len(export(daemon, district.name)) == LARGE_ROWS


@pytest.mark.parametrize(
    "settings",
    [{"epochs_isolation": "thread"}, {}],  # by default, a small epoch stays in a thread too
    ids=["thread", "small-epoch"],
)
def test_processing_inside_the_daemon(tmp_path: Path, settings: dict[str, str]) -> None:
    with run_daemon(tmp_path, **settings, **FAST_EPOCHS) as daemon:
        district = daemon.add_district()
        epoch = "20260501-020000"
        put_epoch(daemon, district, epoch, HEADER + "ann@example.org,Ann,Lee,\r\n")
        applied = daemon.wait_for("epoch.applied", district=district.name, epoch=EPOCH)
        assert applied["summary"]["created"] == 1
        assert processing_children(daemon) == []
        assert [row["Email"] for row in export(daemon, district.name)] == ["ann@example.org"]


def test_processing_children_do_not_outlive_a_killed_daemon(tmp_path: Path) -> None:
    with run_daemon(tmp_path, epochs_isolation_min_bytes=0, **FAST_EPOCHS) as daemon:
        district = daemon.add_district()
        put_epoch(daemon, district, "20260501-020000", HEADER + "ann@example.org,Ann,Lee,\r\n")
        daemon.wait_for("epoch.applied", district=district.name)
        [child] = processing_children(daemon)
        # SQLite's temporary files go to the data volume, not /tmp (a tmpfs in the container)
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        assert f"SQLITE_TMPDIR={daemon.data_dir.resolve() / 'tmp'}".encode() in environ
        daemon.proc.kill()
        daemon.proc.wait()
        wait_until(lambda: not Path(f"/proc/{child}").exists(), 10, "the child to exit")


def test_shutdown_lets_the_running_epoch_finish_and_report(tmp_path: Path) -> None:
    with run_daemon(tmp_path, **FAST_EPOCHS) as daemon:
        district, _ = start_large_epoch(daemon)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_for("epochs.draining")["running"] == 1
        assert daemon.wait_exit() == 0
        names = [e["event"] for e in daemon.logs]
        assert names.index("epoch.applied") < names.index("server.stopped")
        applied = daemon.wait_for("epoch.applied", district=district.name, epoch=EPOCH)
        assert applied["summary"]["created"] == LARGE_ROWS


def test_a_child_killed_during_shutdown_leaves_the_epoch_to_the_next_start(
    tmp_path: Path,
) -> None:
    with run_daemon(tmp_path, **FAST_EPOCHS) as daemon:
        district, child = start_large_epoch(daemon)
        daemon.signal(signal.SIGTERM)  # the daemon waits for the epoch...
        daemon.wait_for("epochs.draining")
        os.kill(child, signal.SIGKILL)  # ...whose process dies meanwhile
        daemon.wait_for("epoch.interrupted", district=district.name, epoch=EPOCH)
        assert daemon.wait_exit() == 0
        assert not daemon.events("epoch.failed")
    with run_daemon(tmp_path, **FAST_EPOCHS) as daemon:  # same data dir: a restart
        daemon.wait_for("epoch.recovered")
        applied = daemon.wait_for("epoch.applied", district=district.name, epoch=EPOCH)
        assert applied["summary"]["created"] == LARGE_ROWS
        assert len(export(daemon, district.name)) == LARGE_ROWS
