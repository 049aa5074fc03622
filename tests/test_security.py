"""Hostile clients: escapes, links, other districts, read-only areas, non-SFTP channels."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from tests.clients import paramiko_client, sftp_batch, ssh_options, ssh_sftp_subsystem
from tests.harness import Credentials, Daemon, report, require_tool


@pytest.fixture
def sftp(daemon: Daemon, district: Credentials):  # type: ignore[no-untyped-def]
    with paramiko_client(daemon, district) as client:
        yield client.open_sftp()


def _denied(daemon: Daemon, district: Credentials, operation: str, reason: str) -> None:
    daemon.wait_for("sftp.denied", district=district.name, operation=operation, reason=reason)


@pytest.mark.parametrize(
    "path",
    [
        "../../../../etc/passwd",
        "/../../etc/passwd",
        "/upload/../../../etc/passwd",
        "/etc/passwd",
        "//etc/passwd",
    ],
)
def test_traversal_and_absolute_paths_stay_inside_the_root(daemon: Daemon, sftp, path: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundError):
        sftp.stat(path)
    assert sftp.normalize("../../..") == "/"
    root = set(sftp.listdir("../../.."))  # the district's own root, with the server's files
    expected = {"upload", "upload-processed"}
    servers = {
        "STATUS.txt",
        "status.json",
        "index.json",
        "README.txt",
        "users-template.csv",
        "validate-users.pyz",
        "buildings.txt",
    }
    assert expected <= root <= expected | servers


def test_traversal_write_lands_inside_the_root(daemon: Daemon, district: Credentials, sftp) -> None:  # type: ignore[no-untyped-def]
    with sftp.open("/upload/../../../upload/20260101-000000/escape.csv", "wb") as fh:
        fh.write(b"x")
    assert (daemon.root(district.name) / "upload/20260101-000000/escape.csv").read_bytes() == b"x"
    assert not (daemon.data_dir / "districts" / "upload").exists()


def test_symlink_and_hardlink_creation_refused(daemon: Daemon, district: Credentials, sftp) -> None:  # type: ignore[no-untyped-def]
    with sftp.open("/upload/20260101-000000/target.csv", "wb") as fh:
        fh.write(b"x")
    with pytest.raises(PermissionError):
        sftp.symlink("/etc/passwd", "/upload/link")
    _denied(daemon, district, "symlink", "symlink_refused")
    transport = sftp.get_channel().get_transport()
    assert transport is not None
    assert not os.path.lexists(daemon.root(district.name) / "upload" / "link")
    # hardlink@openssh.com via OpenSSH's `ln` (without -s)
    result = sftp_batch(
        daemon,
        district,
        "-ln /upload/20260101-000000/target.csv /upload/20260101-000000/hard.csv",
        check=False,
    )
    assert not (daemon.root(district.name) / "upload/20260101-000000/hard.csv").exists(), (
        result.stdout
    )
    _denied(daemon, district, "link", "hardlink_refused")


def test_planted_symlinks_are_never_followed(daemon: Daemon, district: Credentials, sftp) -> None:  # type: ignore[no-untyped-def]
    other = daemon.add_district()
    secret = daemon.root(other.name) / "upload" / "secret.csv"
    secret.write_text("other district's data")
    upload = daemon.root(district.name) / "upload"
    os.symlink("/etc", upload / "etc")
    os.symlink(secret, upload / "stolen.csv")
    os.symlink(daemon.root(other.name), upload / "other")
    with pytest.raises(PermissionError):
        sftp.open("/upload/stolen.csv").read()
    with pytest.raises(PermissionError):
        sftp.listdir("/upload/etc")
    with pytest.raises(PermissionError):
        sftp.stat("/upload/other/upload/secret.csv")
    with pytest.raises(PermissionError):
        sftp.open("/upload/other/upload/new.csv", "wb")
    with pytest.raises(PermissionError):
        sftp.readlink("/upload/stolen.csv")  # reveals nothing about the target
    with pytest.raises(PermissionError):
        sftp.remove("/upload/etc/hostname")
    assert not (daemon.root(other.name) / "upload" / "new.csv").exists()
    _denied(daemon, district, "open", "symlink")


def test_planted_hard_links_are_never_served_or_processed(  # type: ignore[no-untyped-def]
    daemon: Daemon, district: Credentials, sftp
) -> None:
    """Someone with access to the volume links another district's file into this one's
    tree: it is neither read, nor written through, nor processed as an upload."""
    other = daemon.add_district()
    secret = daemon.root(other.name) / "upload" / "20260101-000000" / "secret.csv"
    secret.write_text("Email,First Name,Last Name\nceo@other.org,Their,Boss\n")
    folder = daemon.root(district.name) / "upload" / "20260101-000000"
    os.link(secret, folder / "stolen.csv")
    with pytest.raises(PermissionError, match="another name"):
        sftp.open("/upload/20260101-000000/stolen.csv").read()
    with pytest.raises(PermissionError, match="another name"):
        sftp.open("/upload/20260101-000000/stolen.csv", "wb")  # would truncate theirs
    assert secret.read_text().startswith("Email")
    _denied(daemon, district, "open", "hardlink")
    epoch = folder.parent / "20260102-020000"
    epoch.mkdir()
    os.link(secret, epoch / "users.csv")
    (epoch / "COMPLETE").write_bytes(b"")
    for written in (epoch / "users.csv", epoch / "COMPLETE"):  # long settled (quiet period)
        os.utime(written, (time.time() - 3600, time.time() - 3600))
    daemon.wait_for("epoch.published", district=district.name, epoch="20260102-020000")
    result = report(daemon, district.name, "20260102-020000")
    assert result["status"] == "rejected"  # file_missing: the link was not taken
    assert "link_ignored" in {w["code"] for w in result["warnings"]}
    # The server's own second name is fine: an epoch published by an older version, whose
    # archive copy was a hard link, can still be downloaded.
    published = daemon.root(district.name) / "upload-processed" / "20251231-020000"
    published.mkdir()
    (published / "users.csv").write_text("Email\n")
    archived = daemon.data_dir / "archive" / district.name / "20251231-020000"
    archived.mkdir(parents=True)
    os.link(published / "users.csv", archived / "users.csv")
    with sftp.open("/upload-processed/20251231-020000/users.csv") as fh:
        assert fh.read() == b"Email\n"


def test_cross_district_access_is_impossible(daemon: Daemon, district: Credentials, sftp) -> None:  # type: ignore[no-untyped-def]
    other = daemon.add_district()
    (daemon.root(other.name) / "upload" / "theirs.csv").write_text("private")
    for path in (
        f"/../{other.name}/upload/theirs.csv",
        f"../{other.name}/upload/theirs.csv",
        f"/upload/../../{other.name}/upload/theirs.csv",
    ):
        with pytest.raises(FileNotFoundError):
            sftp.stat(path)
    with pytest.raises(PermissionError):  # normalises to /<other>/..., outside /upload/
        sftp.open(f"/upload/../../{other.name}/upload/mine.csv", "wb")
    assert not (daemon.root(other.name) / "upload" / "mine.csv").exists()


def test_read_only_areas(daemon: Daemon, district: Credentials, sftp) -> None:  # type: ignore[no-untyped-def]
    report = daemon.root(district.name) / "upload-processed" / "report.txt"
    report.write_text("done")
    assert sftp.open("/upload-processed/report.txt").read() == b"done"
    attempts = [
        lambda: sftp.open("/upload-processed/new.csv", "wb"),
        lambda: sftp.remove("/upload-processed/report.txt"),
        lambda: sftp.mkdir("/upload-processed/dir"),
        lambda: sftp.rename("/upload-processed/report.txt", "/upload/report.txt"),
        lambda: sftp.open("/upload-processed/report.txt", "r+"),
        lambda: sftp.truncate("/upload-processed/report.txt", 0),
        lambda: sftp.mkdir("/newdir"),
        lambda: sftp.open("/root.csv", "wb"),
        lambda: sftp.rmdir("/upload"),
        lambda: sftp.rename("/upload", "/uploads"),
    ]
    for attempt in attempts:
        with pytest.raises(PermissionError):
            attempt()
    assert report.read_text() == "done"
    # setstat of times/permissions anywhere is accepted and ignored (clients send it)
    sftp.chmod("/upload-processed/report.txt", 0o777)
    assert report.stat().st_mode & 0o777 != 0o777
    daemon.wait_for("sftp.denied", district=district.name, reason="read_only")


def test_invalid_utf8_and_nul_paths_refused(daemon: Daemon, district: Credentials, sftp) -> None:  # type: ignore[no-untyped-def]
    channel_sftp: paramiko.SFTPClient = sftp
    with pytest.raises((PermissionError, OSError)):
        channel_sftp.open(b"/upload/\xff\xfe.csv".decode("latin-1").encode("latin-1"), "wb")  # type: ignore[arg-type]
    _denied(daemon, district, "open", "path_encoding")


def test_shell_exec_and_scp_are_refused(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    require_tool("ssh")
    base = [
        "ssh",
        "-p",
        str(daemon.port),
        *ssh_options(daemon, district),
        "-T",
        f"{district.name}@127.0.0.1",
    ]
    exec_result = subprocess.run([*base, "id"], capture_output=True, text=True, timeout=30)
    assert exec_result.returncode != 0 and "uid=" not in exec_result.stdout
    shell_result = subprocess.run(base, input="id\n", capture_output=True, text=True, timeout=30)
    assert shell_result.returncode != 0 and "uid=" not in shell_result.stdout
    (tmp_path / "f.csv").write_text("x")
    scp = subprocess.run(
        [
            "scp",
            "-O",
            "-P",
            str(daemon.port),
            *ssh_options(daemon, district),
            str(tmp_path / "f.csv"),
            f"{district.name}@127.0.0.1:/upload/f.csv",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert scp.returncode != 0
    assert not (daemon.root(district.name) / "upload" / "f.csv").exists()


def test_port_forwarding_is_refused(daemon: Daemon, district: Credentials) -> None:
    with paramiko_client(daemon, district) as client:
        transport = client.get_transport()
        assert transport is not None
        with pytest.raises(paramiko.ChannelException):
            transport.open_channel("direct-tcpip", ("127.0.0.1", daemon.port), ("127.0.0.1", 1))
        with pytest.raises(paramiko.SSHException):
            transport.request_port_forward("127.0.0.1", 0)


def test_wrong_password_wrong_key_and_unknown_district(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_client(daemon, district, password="wrong-password-123", use_key=False)
    failed = daemon.wait_for("auth.failed", district=district.name, reason="wrong_password")
    assert "wrong-password-123" not in "".join(daemon.raw)
    assert district.password not in "".join(daemon.raw)
    assert failed["method"] == "password"

    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    impostor = Credentials(district.name, "x", stranger)
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_client(daemon, impostor)
    daemon.wait_for("auth.failed", district=district.name, reason="unknown_key")

    nobody = Credentials("nobody-here", "whatever-password", district.key_path)
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_client(daemon, nobody, password="whatever-password", use_key=False)
    daemon.wait_for("auth.failed", district="nobody-here", reason="unknown_district")


def test_disabled_district_cannot_log_in_until_enabled(
    daemon: Daemon, district: Credentials
) -> None:
    store = daemon.store()
    store.set_enabled(district.name, False)
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_client(daemon, district)
    daemon.wait_for("auth.failed", district=district.name, reason="district_disabled")
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_client(daemon, district, password=district.password, use_key=False)
    store.set_enabled(district.name, True)  # takes effect without a restart
    with paramiko_client(daemon, district) as client:
        assert "upload" in client.open_sftp().listdir("/")


def test_too_many_auth_failures_disconnect(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    require_tool("ssh")
    identities = []
    for i in range(8):  # OpenSSH offers each key in turn; each refusal counts
        key = tmp_path / f"stranger{i}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        identities += ["-i", str(key)]
    options = [o for o in ssh_options(daemon, district) if o != str(district.key_path)]
    options = options[: options.index("-i")] if "-i" in options else options
    result = subprocess.run(
        [
            "ssh",
            "-p",
            str(daemon.port),
            *options,
            *identities,
            "-T",
            f"{district.name}@127.0.0.1",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    daemon.wait_for("connection.refused", district=district.name, reason="max_auth_attempts")
    assert len(daemon.events("auth.failed", district=district.name)) == 6


def test_only_modern_algorithms_are_offered(daemon: Daemon) -> None:
    from ingest.sftp.service import ENCRYPTION_ALGS, KEX_ALGS, MAC_ALGS

    probe = paramiko.Transport(("127.0.0.1", daemon.port))
    offered = probe.get_security_options()
    weak = {
        "ciphers": tuple(c for c in offered.ciphers if c not in ENCRYPTION_ALGS),
        "kex": tuple(k for k in offered.kex if k not in KEX_ALGS),
        "digests": tuple(m for m in offered.digests if m not in MAC_ALGS),
    }
    probe.close()
    assert all(weak.values()), weak  # paramiko still speaks some legacy algorithms
    for attribute, algorithms in weak.items():
        transport = paramiko.Transport(("127.0.0.1", daemon.port))
        setattr(transport.get_security_options(), attribute, algorithms)
        with pytest.raises(paramiko.SSHException):
            transport.start_client(timeout=20)
        transport.close()


@pytest.mark.parametrize("kex", ["ecdh-sha2-nistp256", "ecdh-sha2-nistp384", "ecdh-sha2-nistp521"])
def test_nist_curve_key_exchange_for_clients_without_x25519(
    daemon: Daemon, district: Credentials, kex: str
) -> None:
    # JCraft JSch 0.1.x and Ruby net-ssh without the x25519 gem offer nothing better.
    with paramiko_client(daemon, district, only_kex=kex) as client:
        assert client.open_sftp().listdir("/") is not None


@pytest.mark.parametrize(
    "kex", ["diffie-hellman-group-exchange-sha256", "diffie-hellman-group14-sha256"]
)
def test_finite_field_key_exchange_is_refused(
    daemon: Daemon, district: Credentials, kex: str
) -> None:
    with pytest.raises(paramiko.SSHException):
        paramiko_client(daemon, district, only_kex=kex)


def test_malformed_sftp_stream_ends_with_failure_status(
    daemon: Daemon, district: Credentials
) -> None:
    result = ssh_sftp_subsystem(daemon, district, b"\x7f\xff\xff\xff")  # length far too big
    assert result.returncode == 1, result.stderr


@pytest.mark.parametrize(
    ("host_key", "accepted"),
    [("ssh-ed25519", True), ("rsa-sha2-512", True), ("rsa-sha2-256", True), ("ssh-rsa", False)],
)
def test_host_key_signatures_are_pinned(
    daemon: Daemon, district: Credentials, host_key: str, accepted: bool
) -> None:
    """The RSA host key could sign with SHA-1 (ssh-rsa); the server never agrees to it.
    (paramiko 5 cannot even ask for ssh-rsa any more: OpenSSH can.)"""
    asked = ["-v", "-o", f"HostKeyAlgorithms={host_key}"]  # -v: say why it failed
    result = ssh_sftp_subsystem(daemon, district, options=asked)
    if accepted:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 255
        assert b"no matching host key type found" in result.stderr
