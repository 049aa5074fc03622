"""What uploads may take from the disk: file size, each district's quota, a free reserve.

Checked where the bytes arrive, not afterwards:

- no file beyond ``max_file_bytes``: a write past that offset, and a truncate (setstat)
  to a larger size, are refused (a sparse file of 16 TiB was accepted before, and hashing
  it stalled every district);
- each district's ``upload/`` tree holds at most ``quota_bytes`` and ``quota_files``: the
  tree is counted at every open for writing (a district's tree is small: a few epochs;
  ``quota_files`` bounds the walk), and each handle's growth is added as it is written;
- below ``min_free_bytes`` free on the data volume no upload starts and no buffered write
  reaches the disk, so one district cannot fill the disk under the others (or under the
  state database).

A refusal is a :class:`Refusal` with a stable code; the SFTP layer answers the client
with it and logs ``upload.refused``. A write refused mid-file makes the handle fail, so
its close fails too and the file is cut off, never taken for whole.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

FREE_SPACE_TTL = 1.0  # seconds a free-space reading is reused by the write path
_ERRNO = {"file_too_large": errno.EFBIG, "disk_full": errno.ENOSPC}  # quota_*: EDQUOT


@dataclass(frozen=True)
class StorageLimits:
    max_file_bytes: int
    quota_bytes: int
    quota_files: int
    min_free_bytes: int


class Refusal(OSError):
    """A change that would exceed a storage limit; ``code`` is stable, for logs. An
    OSError, so that one raised while queued writes reach the disk fails the handle like
    any write error does (``FileWriter``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(_ERRNO.get(code, errno.EDQUOT), message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class DistrictSpace:
    """What ``statvfs`` tells a district: its own quota and what is left of it (never more
    than the volume has left above the reserve), not the host's disk."""

    quota_bytes: int
    free_bytes: int
    quota_files: int
    free_files: int


class Storage:
    """Shared by all SFTP sessions. ``admit_open`` and ``check_free_space`` block (call
    them from worker threads); ``check_size`` and ``grow`` are for the event loop."""

    def __init__(self, limits: StorageLimits, data_dir: Path) -> None:
        self.limits = limits
        self.data_dir = data_dir
        self._used: dict[str, int] = {}  # bytes in each district's upload/ tree
        self._lock = threading.Lock()  # the free-space reading, from several threads
        self._free_at = 0.0
        self._free = 0

    def check_size(self, size: int) -> None:
        limit = self.limits.max_file_bytes
        if size > limit:
            raise Refusal(
                "file_too_large",
                f"files may be at most {limit} bytes; this one would be {size} bytes",
            )

    def admit_open(self, district: str, upload_root: Path, target: Path) -> None:
        """Worker thread, before a file is opened for writing: the district's tree is
        counted afresh and the disk's free space checked."""
        self.check_free_space(fresh=True)
        used, files, _ = _count(upload_root, self.limits.quota_files + 1)
        self._used[district] = used
        limits = self.limits
        if files >= limits.quota_files and not target.exists():
            raise Refusal(
                "quota_files",
                f"your upload folder holds {files} files, the most it may hold; remove old "
                "files, or wait for your epochs to be processed",
            )
        if used >= limits.quota_bytes:
            raise Refusal(
                "quota_bytes",
                f"your upload folder holds {used} bytes, its quota is {limits.quota_bytes}; "
                "remove old files, or wait for your epochs to be processed",
            )

    def admit_mkdir(self, upload_root: Path) -> None:
        """Worker thread, before a folder is made: as many folders as files at most (each
        is an inode, and each epoch folder an inotify watch)."""
        _, _, folders = _count(upload_root, self.limits.quota_files + 1)
        if folders >= self.limits.quota_files:
            raise Refusal(
                "quota_files",
                f"your upload folder holds {folders} folders, the most it may hold; remove "
                "empty ones, or wait for your epochs to be processed",
            )

    def grow(self, district: str, added: int) -> None:
        """Event loop: a handle made its file ``added`` bytes longer."""
        used = self._used.get(district, 0) + added
        self._used[district] = used
        if used > self.limits.quota_bytes:
            raise Refusal(
                "quota_bytes",
                f"your upload folder would hold {used} bytes, its quota is "
                f"{self.limits.quota_bytes}; remove old files and upload this file again",
            )

    def space(self, district: str, upload_root: Path) -> DistrictSpace:
        """Worker thread: what ``statvfs`` tells the district."""
        limits = self.limits
        used, files, _ = _count(upload_root, limits.quota_files + 1)
        self._used[district] = used
        stats = os.statvfs(self.data_dir)
        volume_free = max(0, stats.f_bavail * stats.f_frsize - limits.min_free_bytes)
        return DistrictSpace(
            limits.quota_bytes,
            max(0, min(limits.quota_bytes - used, volume_free)),
            limits.quota_files,
            max(0, limits.quota_files - files),
        )

    def check_free_space(self, fresh: bool = False) -> None:
        """Any thread but the event loop (statvfs may block on network volumes)."""
        with self._lock:
            now = time.monotonic()
            if fresh or now - self._free_at > FREE_SPACE_TTL:
                stats = os.statvfs(self.data_dir)
                self._free, self._free_at = stats.f_bavail * stats.f_frsize, now
            free = self._free
        if free < self.limits.min_free_bytes:
            raise Refusal(
                "disk_full",
                "the server is short of disk space and accepts no uploads right now; "
                "try again later (the operators are alerted)",
            )


def _count(root: Path, stop_after: int) -> tuple[int, int, int]:
    """Bytes, files and folders below ``root``; stops counting at ``stop_after`` of either."""
    used = files = folders = 0
    for directory, subdirs, names in os.walk(root):
        folders += len(subdirs)
        if folders >= stop_after:
            return used, files, folders
        for name in names:
            try:
                st = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            used += st.st_size
            files += 1
            if files >= stop_after:
                return used, files, folders
    return used, files, folders
