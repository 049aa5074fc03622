"""End-to-end uploads with the clients districts really use."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from pathlib import Path

import asyncssh
import pytest

from tests.clients import (
    CLIENT_TIMEOUT,
    curl,
    lftp,
    paramiko_client,
    rclone,
    sftp_batch,
    sftp_url,
    ssh_options,
    ssh_sftp_subsystem,
)
from tests.harness import Credentials, Daemon, require_tool


def _payload(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _assert_finished(
    daemon: Daemon, creds: Credentials, virtual: str, digest: str, size: int
) -> None:
    event = daemon.wait_for("upload.finished", district=creds.name, path=virtual)
    assert event["sha256"] == digest
    assert event["size"] == size
    real = daemon.root(creds.name) / virtual.lstrip("/")
    assert hashlib.sha256(real.read_bytes()).hexdigest() == digest


def test_openssh_sftp_put_get_and_listing(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    digest = _payload(tmp_path / "users.csv", 300_000)
    result = sftp_batch(
        daemon,
        district,
        "\n".join(
            [
                "mkdir /upload/20260101-020000",
                "put users.csv /upload/20260101-020000/users.csv",
                "ls -l /upload/20260101-020000",
                "get /upload/20260101-020000/users.csv back.csv",
                "df -h /upload",
                "chmod 777 /upload/20260101-020000/users.csv",
            ]
        ),
        cwd=tmp_path,
    )
    assert "users.csv" in result.stdout
    _assert_finished(daemon, district, "/upload/20260101-020000/users.csv", digest, 300_000)
    assert (tmp_path / "back.csv").read_bytes() == (tmp_path / "users.csv").read_bytes()
    real = daemon.root(district.name) / "upload/20260101-020000/users.csv"
    # client-requested permissions are accepted but never applied
    assert oct(real.stat().st_mode & 0o777) == oct(0o640)
    assert daemon.wait_for("session.closed", district=district.name)["bytes_in"] >= 300_000


def test_curl_upload_with_password(daemon: Daemon, district: Credentials, tmp_path: Path) -> None:
    digest = _payload(tmp_path / "users_auto.csv", 50_000)
    curl(daemon, district, "-T", str(tmp_path / "users_auto.csv"), sftp_url(daemon, "/upload/"))
    _assert_finished(daemon, district, "/upload/users_auto.csv", digest, 50_000)
    assert daemon.wait_for("auth.succeeded", district=district.name)["method"] == "password"


def test_lftp_put_and_parallel_mirror(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    source = tmp_path / "20260102-030000"
    source.mkdir()
    digests = {f"part{i}.csv": _payload(source / f"part{i}.csv", 20_000 + i) for i in range(6)}
    lftp(daemon, district, "cd upload; mirror -R -P 4 20260102-030000", cwd=tmp_path)
    for name, digest in digests.items():
        _assert_finished(
            daemon,
            district,
            f"/upload/20260102-030000/{name}",
            digest,
            (source / name).stat().st_size,
        )


def test_rclone_copy(daemon: Daemon, district: Credentials, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    digest = _payload(source / "users.csv", 70_000)
    rclone(daemon, district, "copy", str(source), "d:upload/20260103-040000")
    _assert_finished(daemon, district, "/upload/20260103-040000/users.csv", digest, 70_000)
    listing = rclone(daemon, district, "lsf", "d:upload/20260103-040000").stdout
    assert "users.csv" in listing


def test_paramiko_put_with_password_only(daemon: Daemon, tmp_path: Path) -> None:
    creds = daemon.add_district(key=False)
    digest = _payload(tmp_path / "users.csv", 40_000)
    with paramiko_client(daemon, creds, password=creds.password, use_key=False) as client:
        sftp = client.open_sftp()
        sftp.put(str(tmp_path / "users.csv"), "/upload/20260101-000000/users.csv")
        assert sftp.stat("/upload/20260101-000000/users.csv").st_size == 40_000
    _assert_finished(daemon, creds, "/upload/20260101-000000/users.csv", digest, 40_000)


def test_winscp_style_filepart_setstat_rename(daemon: Daemon, district: Credentials) -> None:
    data = os.urandom(64_000)
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        sftp.mkdir("/upload/20260104-050000")
        with sftp.open("/upload/20260104-050000/users.csv.filepart", "wb") as fh:
            fh.write(data)
        sftp.utime("/upload/20260104-050000/users.csv.filepart", (1_700_000_000, 1_700_000_000))
        sftp.chmod("/upload/20260104-050000/users.csv.filepart", 0o666)
        sftp.posix_rename(
            "/upload/20260104-050000/users.csv.filepart", "/upload/20260104-050000/users.csv"
        )
        sftp.utime("/upload/20260104-050000/users.csv", None)
        assert sftp.stat("/upload/20260104-050000/users.csv").st_size == len(data)
    finished = daemon.wait_for(
        "upload.finished", district=district.name, path="/upload/20260104-050000/users.csv.filepart"
    )
    assert finished["sha256"] == hashlib.sha256(data).hexdigest()
    renamed = daemon.wait_for("sftp.renamed", district=district.name)
    assert renamed["new_path"] == "/upload/20260104-050000/users.csv"


def test_plain_rename_refuses_to_overwrite(daemon: Daemon, district: Credentials) -> None:
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        for name in ("a.csv", "b.csv"):
            with sftp.open(f"/upload/20260101-000000/{name}", "wb") as fh:
                fh.write(name.encode())
        with pytest.raises(OSError):
            sftp.rename("/upload/20260101-000000/a.csv", "/upload/20260101-000000/b.csv")
        assert sftp.open("/upload/20260101-000000/b.csv").read() == b"b.csv"


def test_resume_with_reput(daemon: Daemon, district: Credentials, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    (tmp_path / "big.csv").write_bytes(data)
    target = daemon.root(district.name) / "upload/20260101-000000/big.csv"
    # an earlier, interrupted transfer left the first 80,000 bytes
    with (
        paramiko_client(daemon, district) as client,
        client.open_sftp().open("/upload/20260101-000000/big.csv", "wb") as fh,
    ):
        fh.write(data[:80_000])
    sftp_batch(daemon, district, "reput big.csv /upload/20260101-000000/big.csv", cwd=tmp_path)
    assert target.read_bytes() == data
    finished = daemon.wait_for(
        "upload.finished", district=district.name, path="/upload/20260101-000000/big.csv", count=2
    )
    assert finished["sha256"] == hashlib.sha256(data).hexdigest()
    assert finished["bytes"] == 120_000


def test_append_mode(daemon: Daemon, district: Credentials) -> None:
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        with sftp.open("/upload/20260101-000000/log.csv", "wb") as fh:
            fh.write(b"a,b\n")
        with sftp.open("/upload/20260101-000000/log.csv", "ab") as fh:
            fh.write(b"1,2\n")
    assert (
        daemon.root(district.name) / "upload/20260101-000000/log.csv"
    ).read_bytes() == b"a,b\n1,2\n"


def test_large_file_integrity(daemon: Daemon, district: Credentials, tmp_path: Path) -> None:
    size = 48 * 1024 * 1024 + 123
    digest = _payload(tmp_path / "large.csv", size)
    sftp_batch(daemon, district, "put large.csv /upload/20260101-000000/large.csv", cwd=tmp_path)
    _assert_finished(daemon, district, "/upload/20260101-000000/large.csv", digest, size)


def test_scp_exits_zero(daemon: Daemon, district: Credentials, tmp_path: Path) -> None:
    # OpenSSH 9+ scp speaks SFTP and fails unless the channel reports exit status 0.
    require_tool("scp")
    digest = _payload(tmp_path / "users.csv", 30_000)
    target = f"{district.name}@127.0.0.1:/upload/20260101-000000/scp.csv"
    options = ["-P", str(daemon.port), *ssh_options(daemon, district)]
    for args in (
        [str(tmp_path / "users.csv"), target],
        [target, str(tmp_path / "back.csv")],
    ):
        result = subprocess.run(
            ["scp", *options, *args], capture_output=True, text=True, timeout=CLIENT_TIMEOUT
        )
        assert result.returncode == 0, result.stderr
    _assert_finished(daemon, district, "/upload/20260101-000000/scp.csv", digest, 30_000)
    assert (tmp_path / "back.csv").read_bytes() == (tmp_path / "users.csv").read_bytes()


def test_sftp_subsystem_exits_zero_on_eof(daemon: Daemon, district: Credentials) -> None:
    result = ssh_sftp_subsystem(daemon, district)
    assert result.returncode == 0, result.stderr


def test_asyncssh_client_get_and_copy(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    # asyncssh clients ask for ranges@asyncssh.com before a download if it is offered.
    digest = _payload(tmp_path / "users.csv", 250_000)

    async def transfer() -> None:
        async with (
            asyncssh.connect(
                "127.0.0.1",
                daemon.port,
                username=district.name,
                client_keys=[str(district.key_path)],
                known_hosts=str(daemon.known_hosts()),
                agent_path=None,
            ) as conn,
            conn.start_sftp_client() as sftp,
        ):
            await sftp.put(str(tmp_path / "users.csv"), "/upload/20260101-000000/async.csv")
            await sftp.get("/upload/20260101-000000/async.csv", str(tmp_path / "back.csv"))
            await sftp.copy(
                "/upload/20260101-000000/async.csv", "/upload/20260101-000000/async-copy.csv"
            )

    asyncio.run(asyncio.wait_for(transfer(), CLIENT_TIMEOUT))
    _assert_finished(daemon, district, "/upload/20260101-000000/async.csv", digest, 250_000)
    _assert_finished(daemon, district, "/upload/20260101-000000/async-copy.csv", digest, 250_000)
    assert (tmp_path / "back.csv").read_bytes() == (tmp_path / "users.csv").read_bytes()
