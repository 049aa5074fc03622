"""An open file's life in worker threads: opened under one name only, then, for an
upload, ended once: the last queued writes, the holes check, the data and directory
synced, the journal told, the digest.

:mod:`ingest.sftp.fs` answers the SFTP requests and hands these functions to its worker
threads; they hold the rules for when a file counts as whole.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.logging import get_logger
from ingest.sftp.events import OpenUpload, UploadJournal
from ingest.sftp.paths import Denied, Resolved
from ingest.sftp.storage import Refusal
from ingest.sftp.writer import DigestAborted, FileWriter

FILE_MODE = 0o640  # chosen by the server; client-requested permissions are ignored

log = get_logger("ingest.sftp")


@dataclass(eq=False)
class Handle:
    """An open file of an SFTP session; ``writer`` and ``upload`` for uploads."""

    fd: int
    resolved: Resolved
    writer: FileWriter | None = None
    upload: OpenUpload | None = None
    append_at: int | None = None  # next offset for FXF_APPEND handles
    high: int = 0  # the file's size as far as this handle knows (quota: what it adds)
    opened: float = field(default_factory=time.monotonic)


INLINE_DIGEST_MAX = 1024 * 1024  # hash files up to this size inside the close hop


@dataclass
class HandleEnd:
    """How a write handle's last hop ended (see :func:`finish_writes`)."""

    size: int = 0
    digest: str | None = None
    same: bool = True  # the file at the handle's path is still the one it wrote
    error: Exception | None = None
    # Whole (the journal says so), but its digest was stopped by the shutdown: it is
    # hashed again after the restart.
    unannounced: bool = False


def finish_writes(
    writer: FileWriter,
    explicit: bool,
    journal: UploadJournal,
    upload: OpenUpload,
    check_holes: bool = True,
) -> HandleEnd:
    """Worker thread: the last writes, the journal, then the digest and close of a small
    finished upload.

    Only when the file at the handle's path is still the one it wrote does its end say
    anything about that file. Then an explicit close makes it whole: its data and its
    directory entry are synced to disk first, so that the journal never records as
    whole a file a power cut could still shorten, and the journal row goes before the
    client hears that its close succeeded, unless the file has a gap never written
    (:func:`holes`; ``check_holes`` is False while another handle writes the same file,
    whose close judges it). Any other end marks it cut off. A handle whose file was
    replaced or removed only takes its own row away. A large finished upload
    keeps its descriptor open for :func:`digest_and_close`, which runs after the client
    has its answer; every other outcome closes it here.
    """
    assert upload.intent is not None
    end, keep_open = HandleEnd(), False
    try:
        try:
            end.size = writer.finish_blocking()
        except OSError as exc:
            end.error = exc
        end.same = same_file(writer.fd, upload.real_path)
        if not end.same:
            best_effort(journal.forget, upload.intent)
        elif not explicit or end.error is not None:
            best_effort(journal.cut, upload.intent, end.size or writer.bytes_written)
        elif check_holes and (gap := holes(writer.fd, end.size)) is not None:
            end.error = gap
            best_effort(journal.cut, upload.intent, end.size)
        else:
            os.fdatasync(writer.fd)
            fsync_directory(upload.real_path.parent)
            journal.finished(upload.intent, upload.real_path)
            if end.size > INLINE_DIGEST_MAX:
                keep_open = True
            else:
                try:
                    end.digest = writer.digest.hexdigest(end.size)
                except DigestAborted:
                    end.unannounced = True
    except Exception as exc:  # the sync or the journal: the row stays, the file not whole
        end.error = end.error or exc
    finally:
        if not keep_open:
            os.close(writer.fd)
    return end


def holes(fd: int, size: int) -> Refusal | None:
    """A file with parts never written (a hole: sparse, from a write past the end or a
    truncate that grew it) is refused at its close, before anything hashes it: hashing
    costs time for every byte of its size, while a hole costs its writer nothing. A CSV
    never has one (it would read as NUL bytes); a client writing parts in parallel has
    filled them all by the close of its last handle."""
    try:
        first_hole = os.lseek(fd, 0, os.SEEK_HOLE)
    except OSError:  # the file system cannot tell: nothing to refuse
        return None
    if first_hole >= size:
        return None
    return Refusal(
        "file_has_holes",
        f"bytes {first_hole} and on were never written (the file has a gap: a write past "
        "its end, or a truncate that made it larger); upload the whole file again, "
        "from start to end",
    )


def open_one_name(path: Path, flags: int, own_link: Callable[[Path, os.stat_result], bool]) -> int:
    """Open ``path``, refusing a regular file that has another name (a hard link: the
    other name may be another district's file). The check comes before a truncation, so
    a refused file is left as it was."""
    fd = os.open(path, flags & ~os.O_TRUNC, FILE_MODE)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and not own_link(path, st):
            raise Denied(
                "hardlink",
                "this file also exists under another name on the server (a hard link) and "
                "is not served; tell your operator",
            )
        if flags & os.O_TRUNC:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def same_file(fd: int, path: Path) -> bool:
    try:
        at_path = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (at_path.st_dev, at_path.st_ino) == (mine.st_dev, mine.st_ino)


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def digest_and_close(writer: FileWriter, size: int) -> str:
    try:
        return writer.digest.hexdigest(size)
    finally:
        os.close(writer.fd)


def best_effort(fn: Callable[..., None], *args: Any) -> None:
    """A journal write whose failure errs on the safe side: a row that stays (open or cut)
    only flags a file as not whole, and a later upload of it clears that."""
    try:
        fn(*args)
    except Exception as exc:
        log.error("upload.journal_failed", operation=fn.__name__, error=repr(exc))
