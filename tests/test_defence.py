"""Defence: what one host, or one district, can take from the server is bounded.

Attackers connect from other loopback addresses (127.0.0.2, ...) than the legitimate
districts (127.0.0.1), so that per-source rules can be seen on one machine.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import paramiko
import pytest

from tests.clients import paramiko_client, put_epoch, sftp_batch
from tests.harness import FAST_EPOCHS, Daemon, run_daemon, wait_until

LIMITS = {
    "server_max_unauthenticated": 16,
    "server_max_unauthenticated_per_source": 4,
    "server_kex_timeout": 2,
    "server_max_channels_per_connection": 3,
    "server_max_handles_per_session": 5,
    "provisioning_max_file_bytes": 1 << 20,
    "storage_district_quota_bytes": 5 << 19,  # 2.5 MiB
    "storage_district_quota_files": 12,
}
MIB = b"x" * (1 << 20)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with run_daemon(tmp_path_factory.mktemp("defence"), **LIMITS) as running:
        yield running


def idle_connections(daemon: Daemon, sources: list[str], each: int) -> list[socket.socket]:
    """TCP connections that never send a byte (not even the SSH banner)."""
    opened = []
    for source in sources:
        for _ in range(each):
            sock = socket.create_connection(
                ("127.0.0.1", daemon.port), timeout=5, source_address=(source, 0)
            )
            opened.append(sock)
    return opened


def refused(daemon: Daemon, reason: str) -> int:
    return len(daemon.events("connection.refused", reason=reason))


def test_an_unauthenticated_flood_never_locks_a_known_district_out(daemon: Daemon) -> None:
    creds = daemon.add_district()
    with paramiko_client(daemon, creds):  # the district's address becomes known
        pass
    sources = [f"127.0.0.{n}" for n in range(2, 10)]
    flood = idle_connections(daemon, sources, each=8)  # 64 from 8 addresses
    try:
        # at most 4 per address, at most 16 (with early drop from 8) in all
        # 4 per address at most, 16 in all (with early drop from 8): 48 or more refused,
        # the first two addresses' surplus for the per-address cap at least
        daemon.wait_until(
            lambda: (
                refused(daemon, "max_unauthenticated_per_source")
                + refused(daemon, "max_unauthenticated")
                >= 64 - 16
            ),
            "the flood refused",
        )
        assert refused(daemon, "max_unauthenticated_per_source") >= 2 * 4
        assert refused(daemon, "max_unauthenticated") >= 1
        started = time.monotonic()
        with paramiko_client(daemon, creds) as client:  # the known district gets in
            assert "upload" in client.open_sftp().listdir("/")
        assert time.monotonic() - started < 5
        # the flood's admitted connections never finish a key exchange: closed at 2 s
        daemon.wait_until(lambda: refused(daemon, "kex_timeout") >= 8, "kex deadlines")
    finally:
        for sock in flood:
            sock.close()
    stranger = daemon.add_district()
    with paramiko_client(daemon, stranger) as client:  # and the pool is free again
        assert "upload" in client.open_sftp().listdir("/")


def test_a_silent_connection_is_closed_at_the_key_exchange_deadline(daemon: Daemon) -> None:
    (sock,) = idle_connections(daemon, ["127.0.0.20"], each=1)
    started = time.monotonic()
    sock.settimeout(10)
    assert sock.recv(64).startswith(b"SSH-2.0-ingest")
    while sock.recv(4096):  # the server hangs up long before login_timeout (60 s)
        pass
    assert time.monotonic() - started < 5
    sock.close()


def test_channels_per_connection_are_capped(daemon: Daemon) -> None:
    creds = daemon.add_district()
    with paramiko_client(daemon, creds) as client:
        transport = client.get_transport()
        assert transport is not None
        channels = [transport.open_session() for _ in range(3)]
        with pytest.raises(paramiko.ChannelException):
            transport.open_session()
        daemon.wait_for("limit.reached", district=creds.name, limit="max_channels_per_connection")
        channels[0].close()

        def reopened() -> paramiko.Channel | None:
            try:
                return transport.open_session(timeout=10)
            except paramiko.ChannelException:
                return None  # the server has not seen the close yet

        again = wait_until(reopened, what="a slot back once a channel closed")
        again.invoke_subsystem("sftp")
        sftp = paramiko.SFTPClient(again)
        assert "upload" in sftp.listdir("/")


def test_open_files_per_session_are_capped(daemon: Daemon) -> None:
    creds = daemon.add_district()
    with paramiko_client(daemon, creds) as client:
        sftp = client.open_sftp()
        handles = [sftp.open(f"/upload/20260101-000000/f{i}.csv", "wb") for i in range(5)]
        with pytest.raises(OSError, match="too many open files"):
            sftp.open("/upload/20260101-000000/f5.csv", "wb")
        with pytest.raises(OSError, match="too many open files"):
            sftp.open("/upload/20260101-000000/f0.csv", "rb")  # reads count too
        daemon.wait_for("limit.reached", district=creds.name, limit="max_handles_per_session")
        handles[0].close()
        with sftp.open("/upload/20260101-000000/f5.csv", "wb") as fh:  # room again
            fh.write(b"x")
        for handle in handles[1:]:
            handle.close()


def test_a_file_cannot_grow_beyond_max_file_bytes(daemon: Daemon) -> None:
    creds = daemon.add_district()
    path = "/upload/20260101-000000/big.csv"
    with paramiko_client(daemon, creds) as client:
        sftp = client.open_sftp()
        handle = sftp.open(path, "wb")
        handle.write(MIB)  # exactly the limit: fine
        with pytest.raises(OSError, match="at most 1048576 bytes"):
            handle.write(b"one byte too many")
        handle.close()  # fails on the server (paramiko does not report a failed close)
        with pytest.raises(OSError, match="at most 1048576 bytes"):
            sftp.truncate("/upload/20260101-000000/sparse.csv", 16 << 40)  # 16 TiB
        with sftp.open("/upload/20260101-000000/other.csv", "wb") as other:
            with pytest.raises(OSError, match="at most 1048576 bytes"):
                other.truncate(24 << 30)  # 24 GiB, through the handle
            other.write(b"fine")
    refusal = daemon.wait_for("upload.refused", district=creds.name, path=path)
    assert refusal["code"] == "file_too_large"
    aborted = daemon.wait_for("upload.aborted", district=creds.name, path=path)
    assert aborted["reason"] == "write_error"
    assert (daemon.root(creds.name) / "upload/20260101-000000/sparse.csv").exists() is False


@pytest.mark.parametrize("how", ["write past the end", "truncate to grow"])
def test_a_file_with_holes_is_refused_at_its_close_and_never_hashed(
    daemon: Daemon, how: str
) -> None:
    """A hole costs its writer nothing and the hashing of it a full read: a sparse file
    is refused at its close, stays not whole, and its epoch is never processed."""
    creds = daemon.add_district()
    epoch = "20260101-000000"
    path = f"/upload/{epoch}/users.csv"
    with paramiko_client(daemon, creds) as client:
        sftp = client.open_sftp()
        handle = sftp.open(path, "wb")
        handle.write(b"Email,First Name,Last Name\n")
        if how == "write past the end":
            handle.seek(600 * 1024)
            handle.write(b"a@example.org,A,B\n")
        else:
            handle.truncate(900 * 1024)
        handle.close()  # fails on the server (paramiko does not report a failed close)
        with sftp.open(f"/upload/{epoch}/COMPLETE", "wb"):
            pass
    refusal = daemon.wait_for("upload.refused", district=creds.name, path=path)
    assert refusal["code"] == "file_has_holes"
    assert "never written" in refusal["message"]
    aborted = daemon.wait_for("upload.aborted", district=creds.name, path=path)
    assert aborted["reason"] == "file_has_holes"
    notice = daemon.wait_for("epoch.notice", district=creds.name, code="upload_incomplete")
    assert epoch in notice["path"]
    assert not daemon.events("upload.finished", district=creds.name, path=path)
    assert not daemon.events("epoch.ready", district=creds.name)


def test_a_district_quota_bounds_bytes_and_files_in_its_upload_folder(daemon: Daemon) -> None:
    creds, other = daemon.add_district(), daemon.add_district()
    folder = "/upload/20260101-000000"
    with paramiko_client(daemon, creds) as client:
        sftp = client.open_sftp()
        for name in ("a.csv", "b.csv"):
            with sftp.open(f"{folder}/{name}", "wb") as fh:
                fh.set_pipelined(True)
                fh.write(MIB)
        with sftp.open(f"{folder}/c.csv", "wb") as fh:
            fh.write(MIB[: 1 << 19])  # 2.5 MiB in the folder: the quota, reached
        with pytest.raises(OSError, match="quota"):
            sftp.open(f"{folder}/d.csv", "wb")  # full: no new upload starts
        sftp.remove(f"{folder}/c.csv")
        handle = sftp.open(f"{folder}/c.csv", "wb")
        handle.write(MIB[: 1 << 19])  # the quota again, reached while writing
        with pytest.raises(OSError, match="quota"):
            handle.write(b"z")  # beyond it
        handle.close()
        sftp.remove(f"{folder}/c.csv")
        sftp.remove(f"{folder}/b.csv")  # room again
        for n in range(11):  # 11 files and a.csv: the 12 the quota allows
            with sftp.open(f"{folder}/small{n}.csv", "wb") as fh:
                fh.write(b"x")
        with pytest.raises(OSError, match="holds 12 files"):
            sftp.open(f"{folder}/one-more.csv", "wb")
        with sftp.open(f"{folder}/small0.csv", "wb") as fh:  # replacing one is fine
            fh.write(b"y")
    codes = {e["code"] for e in daemon.events("upload.refused", district=creds.name)}
    assert codes == {"quota_bytes", "quota_files"}
    with (
        paramiko_client(daemon, other) as client,  # the quota is per district
        client.open_sftp().open(f"{folder}/a.csv", "wb") as fh,
    ):
        fh.set_pipelined(True)
        fh.write(MIB)
    aborted = daemon.wait_for("upload.aborted", district=creds.name, path=f"{folder}/c.csv")
    assert aborted["reason"] == "write_error"


def test_no_upload_starts_below_the_free_space_reserve(tmp_path: Path) -> None:
    with run_daemon(tmp_path, storage_min_free_bytes=1 << 60) as daemon:
        creds = daemon.add_district()
        with paramiko_client(daemon, creds) as client:
            sftp = client.open_sftp()
            with pytest.raises(OSError, match="short of disk space"):
                sftp.open("/upload/20260101-000000/users.csv", "wb")
            assert "upload" in sftp.listdir("/")  # reading goes on
        refusal = daemon.wait_for("upload.refused", district=creds.name)
        assert refusal["code"] == "disk_full"


def test_buffered_upload_bytes_share_one_budget(tmp_path: Path) -> None:
    """Many handles writing faster than the disk takes it hold at most the budget in
    memory together: past it, their sessions wait for the disk. Nothing is lost."""
    budget = 256 * 1024
    with run_daemon(tmp_path, server_max_buffered_upload_bytes=budget) as daemon:
        creds = daemon.add_district()
        data = {f"f{n}.csv": bytes([65 + n]) * (3 << 20) for n in range(4)}
        folder = "/upload/20260101-000000"

        errors: list[BaseException] = []

        def upload(name: str) -> None:
            try:
                with (
                    paramiko_client(daemon, creds) as client,
                    client.open_sftp().open(f"{folder}/{name}", "wb") as fh,
                ):
                    fh.set_pipelined(True)
                    fh.write(data[name])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=upload, args=(name,)) for name in data]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors
        for name, content in data.items():
            finished = daemon.wait_for(
                "upload.finished", district=creds.name, path=f"{folder}/{name}"
            )
            assert finished["size"] == len(content)
            assert (daemon.root(creds.name) / folder.lstrip("/") / name).read_bytes() == content
        reached = daemon.wait_for(
            "limit.reached", district=creds.name, limit="max_buffered_upload_bytes"
        )
        assert reached["value"] == budget


def test_disk_space_shown_is_the_districts_own_quota(daemon: Daemon) -> None:
    """statvfs (OpenSSH's df) tells a district its quota and what is left of it, not the
    size of the host's disk or how much the other districts use."""
    creds = daemon.add_district()
    with (
        paramiko_client(daemon, creds) as client,
        client.open_sftp().open("/upload/20260101-000000/users.csv", "wb") as fh,
    ):
        fh.set_pipelined(True)
        fh.write(MIB)
    shown = sftp_batch(daemon, creds, "df /upload").stdout.splitlines()
    header = shown.index(next(line for line in shown if "Size" in line))
    size, used, avail = (int(v) for v in shown[header + 1].split()[:3])  # KiB
    assert size == (5 << 19) // 1024  # the quota: 2.5 MiB
    assert avail == size - 1024  # less the MiB this district uploaded
    assert used == 1024


def test_a_password_flood_never_keeps_a_known_district_waiting(tmp_path: Path) -> None:
    with run_daemon(
        tmp_path, server_max_password_checks_waiting=4, server_auth_failure_delay=1
    ) as daemon:
        creds = daemon.add_district()
        with paramiko_client(daemon, creds, password=creds.password, use_key=False):
            pass  # the district's address is known from now on
        stop = threading.Event()

        def guess(source: str) -> None:
            while not stop.is_set():
                try:
                    sock = socket.create_connection(
                        ("127.0.0.1", daemon.port), timeout=10, source_address=(source, 0)
                    )
                    transport = paramiko.Transport(sock)
                    transport.start_client(timeout=10)
                    for _ in range(6):
                        with contextlib.suppress(paramiko.AuthenticationException):
                            transport.auth_password(creds.name, "not-the-password-123")
                    transport.close()
                except (paramiko.SSHException, OSError, EOFError):
                    pass  # refused or cut off: guess again

        guessers = [
            threading.Thread(target=guess, args=(f"127.0.0.{2 + n % 4}",), daemon=True)
            for n in range(16)
        ]
        for thread in guessers:
            thread.start()
        try:
            daemon.wait_until(
                lambda: len(daemon.events("auth.failed", reason="server_busy")) >= 20,
                "the flood turned away",
                timeout=30,
            )
            for login in ("password", "key"):
                for _ in range(3):
                    started = time.monotonic()
                    with paramiko_client(
                        daemon,
                        creds,
                        password=creds.password if login == "password" else None,
                        use_key=login == "key",
                    ) as client:
                        assert "upload" in client.open_sftp().listdir("/")
                    assert time.monotonic() - started < 1, login
        finally:
            stop.set()
            for thread in guessers:
                thread.join(15)


DEFENDER = {
    "defender_threshold": 5,
    "defender_observation_time": 120,
    "defender_ban_time": 120,
    "defender_safe_list": "127.0.0.5",
    "defender_block_list": "127.0.0.6/32",
    "defender_refresh_interval": 0.5,
}


def transport_from(daemon: Daemon, source: str) -> paramiko.Transport:
    """An SSH transport, key exchange done, from ``source`` (an attacker's address)."""
    sock = socket.create_connection(
        ("127.0.0.1", daemon.port), timeout=10, source_address=(source, 0)
    )
    transport = paramiko.Transport(sock)
    transport.start_client(timeout=10)
    return transport


def guess(daemon: Daemon, source: str, name: str, times: int) -> None:
    """``times`` wrong passwords for ``name`` from ``source``, one a connection (paramiko
    cannot try a second password on a connection that was told no)."""
    for _ in range(times):
        try:
            transport = transport_from(daemon, source)
        except (paramiko.SSHException, OSError, EOFError):
            return  # refused: banned
        try:
            with contextlib.suppress(paramiko.AuthenticationException):
                transport.auth_password(name, "not-the-password-123")
        except (paramiko.SSHException, OSError, EOFError):
            pass  # disconnected: banned meanwhile
        finally:
            transport.close()


def refused_from(daemon: Daemon, source: str) -> bool:
    try:
        transport_from(daemon, source).close()
    except (paramiko.SSHException, OSError, EOFError):
        return True
    return False


def test_a_guesser_is_banned_and_the_district_it_guesses_at_is_not(tmp_path: Path) -> None:
    with run_daemon(tmp_path, **DEFENDER) as daemon:
        creds = daemon.add_district()
        guess(daemon, "127.0.0.2", creds.name, times=8)
        banned = daemon.wait_for("defender.banned", source="127.0.0.2")
        assert banned["score"] >= 5 and banned["reason"] == "wrong_password"
        assert refused_from(daemon, "127.0.0.2")
        daemon.wait_for("connection.refused", reason="banned")
        # names that are no district: 2 points a connection
        for _ in range(3):
            with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
                transport = transport_from(daemon, "127.0.0.3")
                with contextlib.suppress(paramiko.AuthenticationException):
                    transport.auth_password("no-such-district", "whatever-password")
                transport.close()
        daemon.wait_for("defender.banned", source="127.0.0.3", reason="unknown_district")
        # the district itself is not locked out, by password from its own address
        with paramiko_client(daemon, creds, password=creds.password, use_key=False) as client:
            assert "upload" in client.open_sftp().listdir("/")
        # the safe list is never banned, the block list always refused
        guess(daemon, "127.0.0.5", creds.name, times=12)
        assert not refused_from(daemon, "127.0.0.5")
        assert not daemon.events("defender.banned", source="127.0.0.5")
        assert refused_from(daemon, "127.0.0.6")
        daemon.wait_for("connection.refused", reason="blocked")


def test_bans_are_shared_with_the_cli_and_outlive_a_restart(tmp_path: Path) -> None:
    with run_daemon(tmp_path, **DEFENDER) as daemon:
        creds = daemon.add_district()
        guess(daemon, "127.0.0.2", creds.name, times=8)
        daemon.wait_for("defender.banned", source="127.0.0.2")
        listed = json.loads(daemon.cli("bans", "list", "--json").stdout)
        assert [b["source"] for b in listed] == ["127.0.0.2"]
        daemon.cli("bans", "remove", "127.0.0.2")
        daemon.wait_for("defender.unbanned", source="127.0.0.2", reason="operator")
        assert not refused_from(daemon, "127.0.0.2")
        daemon.cli("bans", "add", "127.0.0.8/29", "--minutes", "10", "--reason", "abuse")
        daemon.wait_for("defender.banned", source="127.0.0.8/29", by="operator")
        assert refused_from(daemon, "127.0.0.9")  # inside the network
        bad = daemon.cli("bans", "add", "not-an-address", check=False)
        assert bad.returncode == 1 and "not an IP address" in bad.stderr
    with run_daemon(tmp_path, **DEFENDER) as daemon:
        assert refused_from(daemon, "127.0.0.10")  # the ban outlived the restart
        assert not refused_from(daemon, "127.0.0.2")


def test_a_district_may_be_limited_to_its_own_networks(daemon: Daemon) -> None:
    creds = daemon.add_district()
    said = daemon.cli("district", "allow", creds.name, "127.0.0.30/32", "10.0.0.0/8").stdout
    assert "127.0.0.30/32, 10.0.0.0/8" in said

    def sftp_from(source: str) -> list[str]:
        client = paramiko.SSHClient()
        client.load_host_keys(str(daemon.known_hosts()))
        sock = socket.create_connection(
            ("127.0.0.1", daemon.port), timeout=10, source_address=(source, 0)
        )
        client.connect(
            "127.0.0.1",
            port=daemon.port,
            username=creds.name,
            key_filename=str(creds.key_path),
            sock=sock,
            allow_agent=False,
            look_for_keys=False,
        )
        try:
            return client.open_sftp().listdir("/")
        finally:
            client.close()

    with pytest.raises(paramiko.AuthenticationException):
        sftp_from("127.0.0.1")  # the right key, from elsewhere
    daemon.wait_for("auth.failed", district=creds.name, reason="source_not_allowed")
    assert "upload" in sftp_from("127.0.0.30")
    listed = json.loads(daemon.cli("district", "list", "--json").stdout)
    assert next(d for d in listed if d["name"] == creds.name)["allowed_sources"] == [
        "127.0.0.30/32",
        "10.0.0.0/8",
    ]
    daemon.cli("district", "allow", creds.name, "--anywhere")
    assert "upload" in sftp_from("127.0.0.1")
    bad = daemon.cli("district", "allow", creds.name, "the-office", check=False)
    assert bad.returncode == 1 and "not an IP address or network" in bad.stderr


def place_epoch(daemon: Daemon, district: str, epoch: str, size: int) -> None:
    """An epoch written straight to the volume (a shared-volume writer, not our SFTP
    server): its users.csv is a sparse file of ``size`` bytes, which the epoch layer must
    hash itself, at full cost, before taking the epoch."""
    folder = daemon.root(district) / "upload" / epoch
    folder.mkdir()
    with (folder / "users.csv").open("wb") as fh:
        fh.truncate(size)
    (folder / "COMPLETE").touch()


def test_hashing_one_districts_files_never_stalls_another_district(tmp_path: Path) -> None:
    with run_daemon(tmp_path, **FAST_EPOCHS) as daemon:
        big, small = daemon.add_district(), daemon.add_district()
        place_epoch(daemon, big.name, "20260102-000000", 3 << 30)  # 3 GiB: seconds
        daemon.wait_for("epoch.hashing", district=big.name)
        epoch = "20260102-000001"
        put_epoch(daemon, small, epoch, b"Email,First Name,Last Name\na@example.org,A,B\n")
        daemon.wait_for("epoch.ready", district=small.name, epoch=epoch)
        assert not daemon.events("epoch.ready", district=big.name)  # still hashing


def test_sigterm_while_hashing_exits_promptly(tmp_path: Path) -> None:
    with run_daemon(tmp_path, **FAST_EPOCHS) as daemon:
        creds = daemon.add_district()
        place_epoch(daemon, creds.name, "20260102-000000", 64 << 30)  # 64 GiB: minutes
        daemon.wait_for("epoch.hashing", district=creds.name)
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(timeout=30) == 0
        assert time.monotonic() - started < 5 + 5  # the grace (5 s in tests), and a little
        assert daemon.events("server.stopped")
        assert not daemon.events("server.failed")


def inotify_watches(pid: int) -> int:
    """The inotify watches a process holds, as the kernel counts them."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == "anon_inode:inotify":
                info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
                count += sum(line.startswith("inotify wd:") for line in info.splitlines())
    return count


def test_processed_epochs_are_not_watched(tmp_path: Path) -> None:
    """Only upload/ trees are watched: the count does not grow with every published
    epoch (upload-processed/ was watched recursively before)."""
    with run_daemon(tmp_path, **FAST_EPOCHS) as daemon:
        creds = daemon.add_district()
        with paramiko_client(daemon, creds) as client:
            client.open_sftp().listdir("/")
        pid = daemon.proc.pid
        daemon.wait_until(lambda: inotify_watches(pid) >= 3, "the district's watches")
        before = inotify_watches(pid)  # the root, upload/ and its work epoch folder
        for n in range(4):
            epoch = f"20260102-00000{n}"
            put_epoch(daemon, creds, epoch, b"Email,First Name,Last Name\na@example.org,A,B\n")
            daemon.wait_for("epoch.published", district=creds.name, epoch=epoch)
        processed = daemon.root(creds.name) / "upload-processed"
        assert len([p for p in processed.iterdir() if p.is_dir()]) == 4
        daemon.wait_until(lambda: inotify_watches(pid) == before, "the epochs' watches gone")


def test_a_district_without_a_watch_is_polled(tmp_path: Path) -> None:
    """Past epochs.max_watches (as past the kernel's limit) a district is logged and
    polled: an epoch written straight to its folder is still found, long before the
    reconcile scan."""
    settings = {
        **FAST_EPOCHS,
        "epochs_reconcile_interval": 600,
        "epochs_max_watches": 3,  # the root, and one district's upload/ and work epoch
        "epochs_polling_interval": 0.5,
    }
    with run_daemon(tmp_path, **settings) as daemon:
        watched = daemon.add_district()
        daemon.wait_until(lambda: inotify_watches(daemon.proc.pid) == 3, "the first district")
        polled = daemon.add_district()
        failed = daemon.wait_for("observer.watch_failed", district=polled.name)
        assert failed["fallback"] == "polling" and "max_watches" in failed["error"]
        assert not daemon.events("observer.watch_failed", district=watched.name)
        epoch = daemon.root(polled.name) / "upload/20260102-000000"
        epoch.mkdir()
        (epoch / "users.csv").write_bytes(b"Email,First Name,Last Name\na@example.org,A,B\n")
        (epoch / "COMPLETE").touch()
        daemon.wait_for("epoch.ready", district=polled.name, epoch=epoch.name, timeout=30)


def test_listings_show_the_district_as_owner(daemon: Daemon) -> None:
    """Not the server's account names or ids (the daemon's own user)."""
    creds = daemon.add_district()
    with paramiko_client(daemon, creds) as client:
        sftp = client.open_sftp()
        with sftp.open("/upload/20260101-000000/users.csv", "wb") as fh:
            fh.write(b"Email\n")
        attrs = sftp.stat("/upload/20260101-000000/users.csv")
        assert (attrs.st_uid, attrs.st_gid) == (1000, 1000)
    listing = sftp_batch(daemon, creds, "ls -l /upload/20260101-000000\nls -l /").stdout
    rows = [line.split() for line in listing.splitlines() if line[:1] in ("-", "d")]
    assert len(rows) >= 3  # users.csv, upload, upload-processed
    for row in rows:
        assert row[2:4] == [creds.name, creds.name], row
    numeric = sftp_batch(daemon, creds, "ls -ln /upload/20260101-000000").stdout
    assert [line.split()[2:4] for line in numeric.splitlines() if line[:1] == "-"] == [
        ["1000", "1000"]
    ]


def test_a_failed_password_is_answered_only_after_the_failure_delay(tmp_path: Path) -> None:
    """OpenSSH's fail delay: a timer that holds the guesser, not the server's CPU; every
    failure alike, so the delay tells nothing about why it failed."""
    with run_daemon(tmp_path, server_auth_failure_delay=1.5) as daemon:
        creds = daemon.add_district()
        for user in (creds.name, "no-such-district"):
            with contextlib.closing(transport_from(daemon, "127.0.0.2")) as transport:
                started = time.monotonic()
                with pytest.raises(paramiko.AuthenticationException):
                    transport.auth_password(user, "not-the-password-123")
                assert time.monotonic() - started >= 1.5, user
        started = time.monotonic()
        with paramiko_client(daemon, creds, password=creds.password, use_key=False):
            assert time.monotonic() - started < 1.5  # a right one is not held


def test_password_attempts_sent_without_waiting_are_checked_one_by_one(tmp_path: Path) -> None:
    """asyncssh cancels an attempt's check when the next one arrives. A guesser that does
    not wait for answers must still have each attempt checked, scored and counted, one
    at a time, each failure held for the delay: never faster than one that waits."""
    from paramiko.common import cMSG_SERVICE_REQUEST, cMSG_USERAUTH_REQUEST
    from paramiko.message import Message

    delay = 0.5
    with run_daemon(tmp_path, server_auth_failure_delay=delay) as daemon:
        creds = daemon.add_district()
        transport = transport_from(daemon, "127.0.0.2")
        try:
            request = Message()
            request.add_byte(cMSG_SERVICE_REQUEST)
            request.add_string("ssh-userauth")
            transport._send_message(request)
            for n in range(6):
                guess = Message()
                guess.add_byte(cMSG_USERAUTH_REQUEST)
                guess.add_string(creds.name)
                guess.add_string("ssh-connection")
                guess.add_string("password")
                guess.add_boolean(False)
                guess.add_string(f"not-the-password-{n}")
                transport._send_message(guess)
            failed = daemon.wait_for(
                "auth.failed", count=6, district=creds.name, reason="wrong_password"
            )
        finally:
            transport.close()
        assert failed["attempt"] == 6  # every attempt counted (then the disconnect)
        daemon.wait_for("connection.refused", reason="max_auth_attempts")
        stamps = [
            datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00")).timestamp()
            for r in daemon.events("auth.failed", district=creds.name)
        ]
        assert len(stamps) == 6
        assert all(b - a >= delay * 0.9 for a, b in itertools.pairwise(stamps)), stamps


def test_folders_count_against_the_quota(daemon: Daemon) -> None:
    """Each folder is an inode and an inotify watch: a district makes as many as its
    quota allows files, no more."""
    creds = daemon.add_district()
    with paramiko_client(daemon, creds) as client:
        sftp = client.open_sftp()
        for n in range(1, 12):  # and the work epoch: the 12 the quota allows
            sftp.mkdir(f"/upload/20260102-0000{n:02d}")
        with pytest.raises(OSError, match="holds 12 folders"):
            sftp.mkdir("/upload/20260102-000099")
    refusal = daemon.wait_for("upload.refused", district=creds.name, code="quota_files")
    assert refusal["path"] == "/upload/20260102-000099"


def test_a_district_with_many_folders_is_polled_not_the_others(tmp_path: Path) -> None:
    settings = {**FAST_EPOCHS, "epochs_max_watches_per_district": 3}
    with run_daemon(tmp_path, **settings) as daemon:
        many, few = daemon.add_district(), daemon.add_district()
        with paramiko_client(daemon, many) as client:
            sftp = client.open_sftp()
            for n in range(4):  # and the work epoch: 5 folders
                sftp.mkdir(f"/upload/20260102-00000{n}")
        failed = daemon.wait_for("observer.watch_failed", district=many.name)
        assert "max_watches_per_district" in failed["error"]
        with paramiko_client(daemon, few) as client:
            client.open_sftp().mkdir("/upload/20260102-000000")
        put_direct = daemon.root(few.name) / "upload/20260102-000000"
        (put_direct / "users.csv").write_bytes(b"Email,First Name,Last Name\na@example.org,A,B\n")
        (put_direct / "COMPLETE").touch()
        daemon.wait_for("epoch.ready", district=few.name, epoch=put_direct.name)
        assert not daemon.events("observer.watch_failed", district=few.name)


def test_parts_written_through_two_handles_are_judged_at_the_last_close(daemon: Daemon) -> None:
    """The second half, written and closed first through its own handle, leaves a gap
    that the first handle fills: no hole is refused, the file is whole."""
    creds = daemon.add_district()
    path = "/upload/20260101-000000/users.csv"
    first, second = b"a" * (64 << 10), b"b" * (64 << 10)
    with paramiko_client(daemon, creds) as client:
        sftp = client.open_sftp()
        head = sftp.open(path, "wb")
        tail = sftp.open(path, "r+")
        tail.seek(len(first))
        tail.write(second)
        tail.close()
        head.write(first)
        head.close()
        assert sftp.stat(path).st_size == len(first) + len(second)
    finished = daemon.wait_for("upload.finished", count=2, district=creds.name, path=path)
    assert finished["size"] == len(first) + len(second)
    assert not daemon.events("upload.refused", district=creds.name)
    assert (daemon.root(creds.name) / path.lstrip("/")).read_bytes() == first + second


def test_a_known_address_is_still_known_after_a_restart(tmp_path: Path) -> None:
    """The reserve for addresses that logged in before survives a restart: a flood of
    strangers right after one does not keep the district out."""
    settings = {"server_max_unauthenticated": 4, "server_max_unauthenticated_per_source": 4}
    with run_daemon(tmp_path, **settings) as daemon:
        creds = daemon.add_district()
        with paramiko_client(daemon, creds):  # 127.0.0.1 becomes known
            pass
    with run_daemon(tmp_path, **settings) as daemon:
        flood = idle_connections(daemon, [f"127.0.0.{n}" for n in range(2, 8)], each=4)
        try:
            daemon.wait_until(
                lambda: any(
                    r["unauthenticated"] == 4
                    for r in daemon.events("connection.refused", reason="max_unauthenticated")
                ),
                "the pool full",
            )
            with paramiko_client(daemon, creds) as client:
                assert "upload" in client.open_sftp().listdir("/")
        finally:
            for sock in flood:
                sock.close()
