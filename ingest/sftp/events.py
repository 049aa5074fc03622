"""What the SFTP layer tells the layers above it, and what it knows about open files.

The SFTP layer is protocol only. It does not decide what an upload means; it reports facts
as typed events to an :class:`SFTPEventHandler` (aiosmtpd style) and answers "is anything
under this directory open for writing right now, and was that file cut off?" through
:class:`UploadRegistry`; what must survive a crash it writes to an :class:`UploadJournal`.
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


@dataclass(frozen=True)
class RequestRefused:
    """A request was refused (the policy, a storage limit): the client may only have seen
    "Permission denied", so the district is told in full elsewhere (its status files)."""

    district: str
    path: str
    code: str
    message: str


SFTPEvent = (
    UploadStarted | UploadFinished | UploadAborted | PathRenamed | SessionClosed | RequestRefused
)


class SFTPEventHandler(Protocol):
    """Receives SFTP facts on the event loop; must not block (hand work off instead)."""

    def handle_sftp_event(self, event: SFTPEvent) -> None: ...


class UploadPolicy(Protocol):
    """Rules above the SFTP layer for changes inside ``/upload/`` (e.g. the epoch contract).

    Called on the event loop for every request that would change something, with the
    district's normalised path, before the file system is touched; raises
    :class:`~ingest.sftp.paths.Denied` to refuse. Must be fast and must not block.
    ``operation`` is one of ``open`` (for writing), ``mkdir``, ``remove``, ``rmdir``,
    ``setstat`` (a size change), ``rename_source``, ``rename_target`` (a file arrives
    there by rename) and ``rename_target_dir`` (a directory does).
    """

    def check(self, district: str, operation: str, path: str) -> None: ...


class FanOut:
    """Deliver every event to several handlers, in order."""

    def __init__(self, *handlers: SFTPEventHandler) -> None:
        self.handlers = handlers

    def handle_sftp_event(self, event: SFTPEvent) -> None:
        for handler in self.handlers:
            handler.handle_sftp_event(event)


@dataclass(eq=False)
class OpenUpload:
    """One change in progress: a handle open for writing (``intent`` is its row in the
    :class:`UploadJournal`), or for the length of one request a rename, removal or
    truncation (``intent`` None). ``real_path`` follows renames of the file or its dirs.

    ``settled`` is set once the change's own file system operation is over (the open of a
    handle, or the whole request): path operations that overlap wait for each other, so
    a rename never has to guess whether an open that raced it opened the old file or made
    a new one. ``may_clear`` turns False when the file is cut off by another handle while
    this one is registered: this handle's close then no longer proves the file whole."""

    district: str
    real_path: Path
    session_id: str
    intent: int | None = None
    may_clear: bool = True
    settled: asyncio.Event = field(default_factory=asyncio.Event)


class UploadJournal(Protocol):
    """The durable record of uploads that are not known to be whole (implemented by
    :class:`ingest.store.journal.UploadJournal`).

    A row is written before a handle opened for writing touches the file and deleted by
    the explicit close that makes the file whole (which also clears what was cut off at
    that path before the handle opened); a handle that ends any other way leaves its row
    marked cut off, unless its file is gone, and after a crash every row is. Methods block:
    they are called from worker threads.
    """

    def begin(self, district: str, path: Path, session_id: str) -> int: ...

    def finished(self, intent: int, path: Path) -> None: ...

    def cut(self, intent: int, size: int) -> None: ...

    def forget(self, intent: int) -> None: ...

    def rename_begin(self, old: Path, new: Path) -> list[int]: ...

    def rename_end(self, old: Path, new: Path, copies: list[int], done: bool) -> None: ...

    def removed(self, path: Path) -> None: ...


def _at_or_under(path: Path, directory: Path) -> bool:
    return path == directory or path.is_relative_to(directory)


def _overlap(a: Path, b: Path) -> bool:
    return _at_or_under(a, b) or _at_or_under(b, a)


def _moved(path: Path, old: Path, new: Path) -> Path:
    return new if path == old else new / path.relative_to(old)


class UploadRegistry:
    """What the SFTP layer knows, at this moment, about files changing under it: changes
    in progress (handles open for writing, and renames, removals and truncations while
    they run) and files cut off (their last upload handle ended without a close request,
    or was open when the server died).

    One instance per server, made by :class:`~ingest.server.Server` and passed to both the
    SFTP layer, which keeps it current, and the epoch layer, which asks it whether a file
    is whole: a second instance would silently answer "nothing is open". It deliberately
    has no ``__len__``, so that no ``registry or UploadRegistry()`` can mistake an empty
    registry for a missing one. Used on the event loop only.
    """

    def __init__(self) -> None:
        self._open: set[OpenUpload] = set()
        self._incomplete: set[Path] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    # --- changes in progress ---------------------------------------------------------

    def unsettled(self, *paths: Path) -> OpenUpload | None:
        """A change whose file system operation is still running at, above or below one
        of ``paths``: a new operation there waits for it (``settled``)."""
        for upload in self._open:
            if not upload.settled.is_set() and any(_overlap(upload.real_path, p) for p in paths):
                return upload
        return None

    def add(self, upload: OpenUpload) -> None:
        self._open.add(upload)
        self._empty.clear()

    def discard(self, upload: OpenUpload) -> None:
        upload.settled.set()
        self._open.discard(upload)
        if not self._open:
            self._empty.set()

    def is_open(self, path: Path) -> bool:
        return any(u.real_path == path for u in self._open)

    def others_writing(self, upload: OpenUpload) -> bool:
        """Whether another handle open for writing has the same file as ``upload``."""
        return any(
            u is not upload and u.intent is not None and u.real_path == upload.real_path
            for u in self._open
        )

    def open_under(self, directory: Path) -> list[Path]:
        """Paths at or below ``directory`` with a change in progress."""
        return sorted(u.real_path for u in self._open if _at_or_under(u.real_path, directory))

    def open_count(self) -> int:
        return len(self._open)

    async def wait_empty(self) -> None:
        await self._empty.wait()

    # --- files cut off ---------------------------------------------------------------

    def mark_incomplete(self, path: Path) -> None:
        self._incomplete.add(path)
        for upload in self._open:
            if upload.real_path == path:
                upload.may_clear = False

    def clear_incomplete(self, path: Path) -> None:
        self._incomplete.discard(path)

    def is_incomplete(self, path: Path) -> bool:
        return path in self._incomplete

    def incomplete_under(self, directory: Path) -> list[Path]:
        return sorted(p for p in self._incomplete if _at_or_under(p, directory))

    # --- both ------------------------------------------------------------------------

    def involves(self, *paths: Path) -> bool:
        """Whether a handle open for writing or a file cut off is at or below one of
        ``paths`` (a rename or removal there must update the journal too)."""
        known = [*(u.real_path for u in self._open if u.intent is not None), *self._incomplete]
        return any(_at_or_under(k, path) for path in paths for k in known)

    def renamed(self, old: Path, new: Path) -> None:
        """Follow a rename of a file or of a directory: what was at ``new`` was replaced,
        what was at or below ``old`` is now at or below ``new``."""
        moved = {p for p in self._incomplete if _at_or_under(p, old)}
        self._incomplete = {p for p in self._incomplete - moved if not _at_or_under(p, new)}
        self._incomplete |= {_moved(p, old, new) for p in moved}
        for upload in self._open:
            if _at_or_under(upload.real_path, old):
                upload.real_path = _moved(upload.real_path, old, new)
