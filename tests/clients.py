"""Drive real SFTP clients against a test daemon: OpenSSH sftp, curl, lftp, rclone, paramiko."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko

from tests.harness import Credentials, Daemon, require_tool

CLIENT_TIMEOUT = 60


def ssh_options(daemon: Daemon, creds: Credentials) -> list[str]:
    """OpenSSH options: key auth, the daemon's real host key pinned, no agent, no prompts."""
    return [
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={daemon.known_hosts()}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-i",
        str(creds.key_path),
    ]


def sftp_batch(
    daemon: Daemon, creds: Credentials, commands: str, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run OpenSSH ``sftp -b -`` with ``commands``; a line starting with '-' may fail."""
    require_tool("sftp")
    result = subprocess.run(
        [
            "sftp",
            "-b",
            "-",
            "-P",
            str(daemon.port),
            *ssh_options(daemon, creds),
            f"{creds.name}@127.0.0.1",
        ],
        input=commands,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        cwd=cwd,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"sftp failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def ssh_sftp_subsystem(
    daemon: Daemon, creds: Credentials, stdin: bytes = b"", options: list[str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``ssh -s host sftp`` fed ``stdin`` raw: the exit status the server's channel gives.
    ``options``: more options for ssh (before ``-s``)."""
    require_tool("ssh")
    return subprocess.run(
        [
            "ssh",
            "-p",
            str(daemon.port),
            *ssh_options(daemon, creds),
            *(options or []),
            "-s",
            f"{creds.name}@127.0.0.1",
            "sftp",
        ],
        input=stdin,
        capture_output=True,
        timeout=CLIENT_TIMEOUT,
    )


def curl(
    daemon: Daemon, creds: Credentials, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """curl with password auth and the host key pinned by its SHA256."""
    require_tool("curl")
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--user",
            f"{creds.name}:{creds.password}",
            "--hostpubsha256",
            daemon.host_key_sha256(),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"curl failed ({result.returncode}): {result.stderr}")
    return result


def sftp_url(daemon: Daemon, path: str) -> str:
    return f"sftp://127.0.0.1:{daemon.port}{path}"


def lftp(
    daemon: Daemon, creds: Credentials, script: str, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """lftp over its sftp backend (which runs OpenSSH ssh) with key auth."""
    require_tool("lftp")
    connect = "ssh -a -x " + " ".join(ssh_options(daemon, creds))
    commands = (
        f'set sftp:connect-program "{connect}"; set net:max-retries 1; '
        f"set net:timeout 20; set cmd:fail-exit yes; "
        f"open -u {creds.name}, -p {daemon.port} sftp://127.0.0.1; {script}; bye"
    )
    result = subprocess.run(
        ["lftp", "-c", commands], capture_output=True, text=True, timeout=CLIENT_TIMEOUT, cwd=cwd
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"lftp failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def rclone(
    daemon: Daemon, creds: Credentials, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """rclone with an on-the-fly sftp remote named ``d:`` (key auth, host key pinned)."""
    require_tool("rclone")
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(daemon.data_dir.parent),
        "RCLONE_CONFIG": "/dev/null",
        "RCLONE_CONFIG_D_TYPE": "sftp",
        "RCLONE_CONFIG_D_HOST": "127.0.0.1",
        "RCLONE_CONFIG_D_PORT": str(daemon.port),
        "RCLONE_CONFIG_D_USER": creds.name,
        "RCLONE_CONFIG_D_KEY_FILE": str(creds.key_path),
        "RCLONE_CONFIG_D_KNOWN_HOSTS_FILE": str(daemon.known_hosts()),
        # Only the sftp subsystem exists: no shell to run md5sum/sha1sum in.
        "RCLONE_CONFIG_D_DISABLE_HASHCHECK": "true",
        "RCLONE_CONFIG_D_SHELL_TYPE": "none",
    }
    result = subprocess.run(
        ["rclone", *args], capture_output=True, text=True, env=env, timeout=CLIENT_TIMEOUT
    )
    if check and result.returncode != 0:
        raise AssertionError(f"rclone failed ({result.returncode}):\n{result.stderr}")
    return result


def paramiko_client(
    daemon: Daemon,
    creds: Credentials,
    *,
    password: str | None = None,
    use_key: bool = True,
    only_kex: str | None = None,
) -> paramiko.SSHClient:
    """A connected paramiko SSHClient with the daemon's host keys pinned.

    ``only_kex`` makes paramiko offer that one key exchange, as an older client would.
    """
    client = paramiko.SSHClient()
    client.load_host_keys(str(daemon.known_hosts()))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    kwargs: dict[str, object] = {}
    if password is not None:
        kwargs["password"] = password
    if use_key:
        kwargs["key_filename"] = str(creds.key_path)
    if only_kex is not None:
        offered = paramiko.Transport._preferred_kex
        assert only_kex in offered, f"paramiko {paramiko.__version__} cannot do {only_kex}"
        kwargs["disabled_algorithms"] = {"kex": [k for k in offered if k != only_kex]}
    client.connect(
        "127.0.0.1",
        port=daemon.port,
        username=creds.name,
        allow_agent=False,
        look_for_keys=False,
        timeout=20,
        banner_timeout=20,
        auth_timeout=20,
        **kwargs,
    )  # type: ignore[arg-type]
    return client


def put_epoch(daemon: Daemon, creds: Credentials, epoch: str, users: bytes) -> None:
    """A whole epoch as a district's nightly job sends it (paramiko): mkdir, users.csv,
    then an empty COMPLETE. Returns once the client has closed COMPLETE."""
    with paramiko_client(daemon, creds) as client:
        sftp = client.open_sftp()
        sftp.mkdir(f"/upload/{epoch}")
        with sftp.open(f"/upload/{epoch}/users.csv", "wb") as fh:
            fh.write(users)
        with sftp.open(f"/upload/{epoch}/COMPLETE", "wb"):
            pass
