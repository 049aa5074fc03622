"""Daemon lifecycle and limits: SIGTERM drain, connection limits, timeouts, host keys."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest

from tests.clients import paramiko_client
from tests.harness import run_daemon, wait_until


def test_sigterm_lets_running_upload_finish_then_exits_zero(tmp_path: Path) -> None:
    with run_daemon(tmp_path, server_shutdown_grace=20) as daemon:
        creds = daemon.add_district()
        idle = daemon.add_district()
        idle_client = paramiko_client(daemon, idle)  # an idle session must not hold us up
        client = paramiko_client(daemon, creds)
        sftp = client.open_sftp()
        fh = sftp.open("/upload/20260101-000000/users.csv", "wb")
        fh.write(b"a" * 10_000)
        fh.flush()
        daemon.wait_for("upload.started", district=creds.name)
        daemon.signal(signal.SIGTERM)
        stopping = daemon.wait_for("server.stopping")
        assert stopping["open_uploads"] == 1
        with pytest.raises(OSError):  # the listener is closed: no new sessions
            socket.create_connection(("127.0.0.1", daemon.port), timeout=5).close()
        with pytest.raises(OSError):  # no new uploads on existing sessions either
            sftp.open("/upload/20260101-000000/other.csv", "wb")
        daemon.wait_for("sftp.denied", reason="shutting_down")
        fh.write(b"b" * 10_000)
        fh.close()
        finished = daemon.wait_for("upload.finished", district=creds.name)
        assert finished["size"] == 20_000
        assert daemon.wait_exit() == 0
        assert daemon.wait_for("server.stopped")["drained"] is True
        client.close()
        idle_client.close()
        assert (
            daemon.root(creds.name) / "upload/20260101-000000/users.csv"
        ).stat().st_size == 20_000


def test_sigterm_grace_expires_and_open_upload_is_aborted(tmp_path: Path) -> None:
    with run_daemon(tmp_path, server_shutdown_grace=0.5) as daemon:
        creds = daemon.add_district()
        client = paramiko_client(daemon, creds)
        fh = client.open_sftp().open("/upload/20260101-000000/slow.csv", "wb")
        fh.write(b"a" * 1000)
        fh.flush()
        daemon.wait_for("upload.started", district=creds.name)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0
        aborted = daemon.wait_for("upload.aborted", district=creds.name)
        assert aborted["reason"] == "server_shutdown"
        assert daemon.wait_for("server.stopped")["drained"] is False
        client.close()


def test_sigint_on_idle_server_exits_zero(tmp_path: Path) -> None:
    with run_daemon(tmp_path, logging_asyncssh_level="info") as daemon:
        socket.create_connection(("127.0.0.1", daemon.port), timeout=5).close()
        # asyncssh's stdlib records arrive through the same JSON pipeline, renamed
        library = daemon.wait_for("lib.log", logger="asyncssh")
        assert library["message"] and library["level"] == "info"
        daemon.signal(signal.SIGINT)
        assert daemon.wait_exit() == 0
        daemon.wait_for("server.stopped")
        for line in daemon.raw:  # every line is one JSON object with the core fields
            record = json.loads(line)
            assert {"timestamp", "level", "event"} <= record.keys()
            assert record["timestamp"].endswith("Z")


def test_connection_limits(tmp_path: Path) -> None:
    with run_daemon(
        tmp_path, server_max_connections=3, server_max_sessions_per_district=2
    ) as daemon:
        a, b = daemon.add_district(), daemon.add_district()
        first, second = paramiko_client(daemon, a), paramiko_client(daemon, a)
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            paramiko_client(daemon, a).open_sftp()
        daemon.wait_for("connection.refused", reason="max_sessions_per_district", district=a.name)
        third = paramiko_client(daemon, b)  # another district is not affected
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            paramiko_client(daemon, b).open_sftp()
        daemon.wait_for("connection.refused", reason="max_connections")
        for client in (first, second, third):
            client.close()
        # 2 + 1 sessions closed by us, 1 refused after authenticating (per-district limit)
        wait_until(lambda: len(daemon.events("session.closed")) >= 4, what="sessions closed")
        with paramiko_client(daemon, a) as again:  # capacity comes back
            assert again.open_sftp().listdir("/upload") == ["20260101-000000"]


def test_login_timeout_closes_silent_connections(tmp_path: Path) -> None:
    with run_daemon(tmp_path, server_login_timeout=1) as daemon:
        sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
        assert sock.recv(64).startswith(b"SSH-2.0-ingest")
        sock.settimeout(10)
        while sock.recv(4096):  # the server hangs up; recv returns b"" then
            pass
        sock.close()
        daemon.wait_for("session.closed", authenticated=False)


def test_host_keys_generated_once_private_and_reused(tmp_path: Path) -> None:
    with run_daemon(tmp_path) as daemon:
        first = daemon.wait_for("server.started")["fingerprints"]
        keys = sorted((daemon.data_dir / "keys").glob("ssh_host_*_key"))
    assert [k.name for k in keys] == ["ssh_host_ed25519_key", "ssh_host_rsa_key"]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with run_daemon(tmp_path) as daemon:
        assert daemon.wait_for("server.started")["fingerprints"] == first
    assert set(first) == {"ssh-ed25519", "ssh-rsa"}


def test_port_in_use_fails_cleanly(tmp_path: Path) -> None:
    with run_daemon(tmp_path / "first") as first:
        env = {
            **first.env,
            "INGEST_SERVER_PORT": str(first.port),
            "INGEST_STORAGE_DATA_DIR": str(tmp_path / "second"),
        }
        result = subprocess.run(
            [sys.executable, "-m", "ingest", "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    failed = [json.loads(line) for line in result.stdout.splitlines()]
    assert failed[-1]["event"] == "server.failed"
    assert "Traceback" not in result.stdout + result.stderr


def test_a_lost_state_database_stops_uploads_and_says_so(tmp_path: Path) -> None:
    with run_daemon(tmp_path) as daemon:
        creds = daemon.add_district()
        state = daemon.data_dir / "state"
        with paramiko_client(daemon, creds) as client:  # a session from before
            sftp = client.open_sftp()
            for name in ("ingest.db", "ingest.db-wal", "ingest.db-shm"):
                (state / name).unlink(missing_ok=True)  # someone cleans up the volume
            lost = daemon.wait_for("database.lost", timeout=10)
            assert lost["reason"] == "deleted"
            assert "upload" in sftp.listdir("/")  # reading goes on
            with pytest.raises(PermissionError, match="cannot record uploads"):
                sftp.open("/upload/20260101-000000/users.csv", "wb")
        daemon.wait_for("sftp.denied", district=creds.name, reason="database_lost")
        assert not (state / "ingest.db").exists()  # nothing made a new, empty one
        listed = daemon.cli("district", "list", check=False)  # nor does the admin CLI
        assert listed.returncode == 2 and "the state database was lost" in listed.stderr
        assert not (state / "ingest.db").exists()
