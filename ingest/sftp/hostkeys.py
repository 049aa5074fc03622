"""SSH host keys: generated once, kept 0600, reused forever.

Districts pin the fingerprint; regenerating keys on a restart would make every district's
client refuse to connect, so keys are only ever created when missing.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import asyncssh

# (file name, asyncssh algorithm, RSA key size). ed25519 first: it is what modern
# clients pick; RSA 3072 (signing with rsa-sha2-256/512 only) serves older clients.
_HOST_KEYS: tuple[tuple[str, str, int], ...] = (
    ("ssh_host_ed25519_key", "ssh-ed25519", 0),
    ("ssh_host_rsa_key", "ssh-rsa", 3072),
)


@dataclass(frozen=True)
class HostKey:
    path: Path
    key: asyncssh.SSHKey

    @property
    def algorithm(self) -> str:
        return str(self.key.get_algorithm())

    @property
    def fingerprint(self) -> str:
        return str(self.key.get_fingerprint("sha256"))

    @property
    def public_line(self) -> str:
        return self.key.export_public_key("openssh").decode("ascii").strip()


def load_or_create_host_keys(directory: Path) -> list[HostKey]:
    """Load the host keys from ``directory``, generating any that are missing."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = []
    for name, algorithm, rsa_bits in _HOST_KEYS:
        path = directory / name
        if not path.exists():
            key = (
                asyncssh.generate_private_key(algorithm, key_size=rsa_bits)
                if rsa_bits
                else asyncssh.generate_private_key(algorithm)
            )
            _write_private(path, key)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            # A readable private key is a leaked key; tighten it rather than refuse to start.
            path.chmod(0o600)
        keys.append(HostKey(path, asyncssh.read_private_key(path)))
    return keys


def _write_private(path: Path, key: asyncssh.SSHKey) -> None:
    data = key.export_private_key("openssh")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)  # atomic: a crash never leaves a truncated key behind
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key("openssh"))
