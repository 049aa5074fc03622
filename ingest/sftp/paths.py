"""The chroot: how a district's SFTP path maps to a real path, and what it may do there.

A district sees ``/`` = ``<data_dir>/districts/<name>/``. Paths are normalised lexically
(``..`` cannot climb above ``/``), must be valid UTF-8 without NUL, and may not pass through
a symbolic link anywhere below the root: districts cannot create links, so a link there was
planted by someone else and is never followed. Only ``/upload/**`` is writable.
"""

from __future__ import annotations

import enum
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

UPLOAD = "/upload"
PROCESSED = "/upload-processed"


class Access(enum.Enum):
    READ = "read"
    WRITE = "write"  # create, modify, rename or delete the entry itself


class Denied(Exception):
    """An SFTP request the policy refuses; ``reason`` is a stable code for logs."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Resolved:
    virtual: str  # normalised, absolute, as the district sees it
    real: Path


class Chroot:
    """Path resolution and the access policy for one district's root."""

    def __init__(self, root: Path) -> None:
        # Resolve once so that a data_dir reached through a symlink (e.g. /tmp on macOS)
        # does not look like a planted link below the root.
        self.root = Path(os.path.realpath(root))

    def virtual(self, path: bytes) -> str:
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            raise Denied("path_encoding", "path is not valid UTF-8") from None
        if "\x00" in text:
            raise Denied("path_encoding", "path contains a NUL byte")
        return posixpath.normpath(posixpath.join("/", text)).replace("//", "/")

    def real(self, virtual: str) -> Path:
        """The real path of a normalised virtual path, lexically (no file system access)."""
        return self.root / virtual.lstrip("/") if virtual != "/" else self.root

    def resolve(self, path: bytes, access: Access) -> Resolved:
        virtual = self.virtual(path)
        real = self.real(virtual)
        # realpath follows every link in the existing part of the path; any difference
        # from the lexical path means a link is involved.
        if os.path.realpath(real) != str(real):
            raise Denied("symlink", "path goes through a symbolic link, which is not allowed")
        if access is Access.WRITE:
            self._check_writable(virtual)
        return Resolved(virtual, real)

    def _check_writable(self, virtual: str) -> None:
        if virtual.startswith(UPLOAD + "/"):
            return
        if virtual == UPLOAD:
            raise Denied("read_only", f"{UPLOAD} itself cannot be changed; write inside it")
        if virtual == PROCESSED or virtual.startswith(PROCESSED + "/"):
            raise Denied(
                "read_only",
                f"{PROCESSED} is read-only: it holds the server's results; upload into {UPLOAD}/",
            )
        raise Denied("read_only", f"only {UPLOAD}/ is writable; upload your files there")

    def to_virtual(self, real: Path) -> str:
        """The district's view of a real path below the root."""
        relative = real.relative_to(self.root).as_posix()
        return "/" if relative == "." else "/" + relative
