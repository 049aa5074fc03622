"""The admin CLI, run as operators run it: a separate process on the server's state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest

from tests.clients import paramiko_client
from tests.harness import Credentials, Daemon


def ingest(
    daemon: Daemon, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return daemon.cli(*args, stdin=stdin, check=check)


def _keypair(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True
    )
    return path


def test_district_lifecycle_against_running_server(daemon: Daemon, tmp_path: Path) -> None:
    key = _keypair(tmp_path, "cli-key")
    ingest(
        daemon,
        "district",
        "add",
        "cli-district",
        "--password-stdin",
        "--key",
        f"{key}.pub",
        stdin="first-password-123\n",
    )
    root = daemon.root("cli-district")
    assert (root / "upload").is_dir() and (root / "upload-processed").is_dir()
    creds = Credentials("cli-district", "first-password-123", key)
    with paramiko_client(daemon, creds, password=creds.password, use_key=False):
        pass  # the running server sees the new district immediately

    listing = json.loads(ingest(daemon, "district", "list", "--json").stdout)
    entry = next(d for d in listing if d["name"] == "cli-district")
    assert entry["enabled"] and entry["has_password"] and len(entry["keys"]) == 1
    fingerprint = entry["keys"][0]["fingerprint"]
    assert fingerprint.startswith("SHA256:")
    assert "first-password" not in json.dumps(listing)
    state = daemon.data_dir / "state"  # the database and its write-ahead log
    stored = b"".join(p.read_bytes() for p in state.glob("ingest.db*"))
    assert b"first-password-123" not in stored and b"$argon2id$" in stored

    ingest(
        daemon,
        "district",
        "passwd",
        "cli-district",
        "--password-stdin",
        stdin="second-password-456",
    )
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_client(daemon, creds, password="first-password-123", use_key=False)
    with paramiko_client(daemon, creds, password="second-password-456", use_key=False):
        pass

    second = _keypair(tmp_path, "cli-key2")
    assert (
        "added key SHA256:"
        in ingest(daemon, "district", "add-key", "cli-district", f"{second}.pub").stdout
    )
    ingest(daemon, "district", "remove-key", "cli-district", fingerprint)
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_client(daemon, creds)  # the removed key no longer works
    with paramiko_client(daemon, Credentials("cli-district", "", second)):
        pass

    ingest(daemon, "district", "disable", "cli-district")
    assert "DISABLED" in ingest(daemon, "district", "list").stdout
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_client(daemon, Credentials("cli-district", "", second))
    ingest(daemon, "district", "enable", "cli-district")
    with paramiko_client(daemon, Credentials("cli-district", "", second)):
        pass


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["district", "add", "Bad Name"], None, "invalid district name"),
        (["district", "add", "x"], None, "invalid district name"),
        (["district", "add", "shortpw", "--password-stdin"], "short\n", "too short"),
        (
            ["district", "passwd", "no-such-district", "--password-stdin"],
            "long-enough-pass",
            "no district named",
        ),
        (["district", "remove-key", "no-such-district", "SHA256:x"], None, "no district named"),
    ],
)
def test_cli_errors_are_clear(
    daemon: Daemon, args: list[str], stdin: str | None, message: str
) -> None:
    result = ingest(daemon, *args, stdin=stdin, check=False)
    assert result.returncode == 1
    assert message in result.stderr


def test_weak_and_malformed_keys_are_refused(daemon: Daemon, tmp_path: Path) -> None:
    ingest(daemon, "district", "add", "keytest")
    rsa = tmp_path / "rsa1024"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "1024", "-N", "", "-f", str(rsa)], check=True
    )
    weak = ingest(daemon, "district", "add-key", "keytest", f"{rsa}.pub", check=False)
    assert weak.returncode == 1 and "too weak" in weak.stderr
    (tmp_path / "junk.pub").write_text("ssh-ed25519 not-base64 x\n")
    junk = ingest(daemon, "district", "add-key", "keytest", str(tmp_path / "junk.pub"), check=False)
    assert junk.returncode == 1 and "not an OpenSSH public key" in junk.stderr


def test_hostkey_prints_the_fingerprints_the_server_uses(daemon: Daemon) -> None:
    started = daemon.wait_for("server.started")
    out = ingest(daemon, "hostkey").stdout
    for algorithm, fingerprint in started["fingerprints"].items():
        assert f"{fingerprint} {algorithm}" in out


def test_output_into_a_closed_pipe_is_no_error(daemon: Daemon) -> None:
    """`ingest accounts export NAME | head`: the reader leaves early; the command stops
    quietly with 141 (as if killed by SIGPIPE), without a traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write
    try:
        result = subprocess.run(
            [sys.executable, "-m", "ingest", "hostkey"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=daemon.env,
            timeout=60,
        )
    finally:
        os.close(write)
    assert result.returncode == 141
    assert result.stderr == ""


def test_healthcheck(daemon: Daemon) -> None:
    assert "healthy" in ingest(daemon, "healthcheck", "--port", str(daemon.port)).stdout
    closed = ingest(daemon, "healthcheck", "--port", "1", check=False)
    assert closed.returncode == 1 and "unhealthy" in closed.stderr


def test_config_error_exit_code(daemon: Daemon) -> None:
    env = {**daemon.env, "INGEST_SERVER_PORT": "not-a-port"}
    result = subprocess.run(
        [sys.executable, "-m", "ingest", "serve"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "INGEST_SERVER_PORT" in result.stderr


def test_version_and_console_script(daemon: Daemon) -> None:
    assert ingest(daemon, "--version").stdout.startswith("ingest ")
    script = Path(sys.executable).parent / "ingest"
    if script.exists():
        out = subprocess.run(
            [str(script), "--help"], capture_output=True, text=True, env={**os.environ}, timeout=60
        )
        assert "district" in out.stdout


def test_an_unusable_config_data_dir_or_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an SQLite database, whatever its name" * 100)
    base = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    cases = [
        (["--config", str(tmp_path)], {}, "Is a directory"),  # the config "file"
        ([], {"INGEST_STORAGE_DATA_DIR": str(afile)}, "afile"),  # data dir is a file
        (
            [],
            {
                "INGEST_STORAGE_DATA_DIR": str(tmp_path),
                "INGEST_DATABASE_URL": f"sqlite:///{garbage}",
            },
            "state database cannot be used",
        ),
    ]
    for args, env, said in cases:
        result = subprocess.run(
            [sys.executable, "-m", "ingest", *args, "district", "list"],
            capture_output=True,
            text=True,
            env={**base, **env},
            timeout=60,
            cwd=tmp_path,
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and said in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
