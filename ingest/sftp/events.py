"""What the SFTP layer tells the layers above it, and what it knows about open files.

The SFTP layer is protocol only. It does not decide what an upload means; it reports facts
as typed events to an :class:`SFTPEventHandler` (aiosmtpd style) and answers "is anything
under this directory open for writing right now?" through :class:`OpenUploads`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class UploadStarted:
    district: str
    path: str  # as the district sees it, e.g. /upload/20260101-020000/users.csv
    real_path: Path
    session_id: str


@dataclass(frozen=True)
class UploadFinished:
    """The client closed the handle explicitly: the file is as the client meant it."""

    district: str
    path: str
    real_path: Path
    session_id: str
    bytes: int  # bytes written in this handle's lifetime
    size: int  # size of the file on disk after the close
    duration: float
    sha256: str  # of the whole file as it is on disk after the close


@dataclass(frozen=True)
class UploadAborted:
    """The handle went away without a close request (session dropped, server shutdown)."""

    district: str
    path: str
    real_path: Path
    session_id: str
    bytes: int
    duration: float
    reason: str


@dataclass(frozen=True)
class PathRenamed:
    district: str
    old_path: str
    new_path: str
    old_real_path: Path
    new_real_path: Path
    session_id: str


@dataclass(frozen=True)
class SessionClosed:
    """An authenticated SSH connection ended (its handles are already closed)."""

    district: str
    session_id: str


SFTPEvent = UploadStarted | UploadFinished | UploadAborted | PathRenamed | SessionClosed


class SFTPEventHandler(Protocol):
    """Receives SFTP facts on the event loop; must not block (hand work off instead)."""

    def handle_sftp_event(self, event: SFTPEvent) -> None: ...


class UploadPolicy(Protocol):
    """Rules above the SFTP layer for changes inside ``/upload/`` (e.g. the epoch contract).

    Called on the event loop for every request that would change something, with the
    district's normalised path, before the file system is touched; raises
    :class:`~ingest.sftp.paths.Denied` to refuse. Must be fast and must not block.
    ``operation`` is one of ``open`` (for writing), ``mkdir``, ``remove``, ``rmdir``,
    ``setstat`` (a size change), ``rename_source``, ``rename_target``.
    """

    def check(self, district: str, operation: str, path: str) -> None: ...


class AllowAll:
    """The policy used when no layer above adds rules: the chroot's zones apply alone."""

    def check(self, district: str, operation: str, path: str) -> None:
        return None


class IgnoreEvents:
    """The handler used when nothing above the SFTP layer is listening."""

    def handle_sftp_event(self, event: SFTPEvent) -> None:
        return None


class FanOut:
    """Deliver every event to several handlers, in order."""

    def __init__(self, *handlers: SFTPEventHandler) -> None:
        self.handlers = handlers

    def handle_sftp_event(self, event: SFTPEvent) -> None:
        for handler in self.handlers:
            handler.handle_sftp_event(event)


@dataclass(eq=False)
class OpenUpload:
    """One handle open for writing; ``real_path`` follows renames of the file or its dirs."""

    district: str
    real_path: Path
    session_id: str


@dataclass
class OpenUploads:
    """Every file open for writing, across all sessions, at this moment.

    Readiness decisions above this layer ask :meth:`open_under`; shutdown waits on
    :meth:`wait_empty` so running transfers can finish.
    """

    _uploads: set[OpenUpload] = field(default_factory=set)
    _empty: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._empty.set()

    def add(self, upload: OpenUpload) -> None:
        self._uploads.add(upload)
        self._empty.clear()

    def discard(self, upload: OpenUpload) -> None:
        self._uploads.discard(upload)
        if not self._uploads:
            self._empty.set()

    def renamed(self, old: Path, new: Path) -> None:
        """Follow a rename of a file or of a directory holding open files."""
        for upload in self._uploads:
            if upload.real_path == old:
                upload.real_path = new
            elif upload.real_path.is_relative_to(old):
                upload.real_path = new / upload.real_path.relative_to(old)

    def is_open(self, path: Path) -> bool:
        return any(u.real_path == path for u in self._uploads)

    def open_under(self, directory: Path) -> list[Path]:
        return sorted(u.real_path for u in self._uploads if u.real_path.is_relative_to(directory))

    def __len__(self) -> int:
        return len(self._uploads)

    async def wait_empty(self) -> None:
        await self._empty.wait()
