"""File moves of the epoch layer, each crash-safe by construction. All functions block.

- promotion builds an epoch from ``*_auto.csv`` in a server-only staging directory and
  renames it into ``/upload/`` complete with its COMPLETE, so a half-built epoch is never
  visible and a crash leaves something :func:`finish_staged` can complete;
- archiving makes a private copy of a claimed epoch's files in ``archive/`` (a reflink
  where the file system has them), which the processor reads and ``ingest epochs
  reprocess`` reuses, and verifies it against the ledger's size and sha256 every time;
- publishing writes the reports into the epoch and renames it into ``/upload-processed/``;
  repeating it after a crash rewrites the reports and changes nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ingest.epochs.handoff import FileInfo
from ingest.epochs.names import MARKER, auto_target, epoch_name_for, parse_epoch_name
from ingest.epochs.reports import REPORT_NAMES

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
FILE_MODE = 0o640
DIR_MODE = 0o750
_CHUNK = 1024 * 1024
_FICLONE = 0x40049409  # linux/fs.h: share the source's extents (btrfs, XFS, bcachefs)


class ArchiveMismatch(Exception):
    """An archived file is not what the ledger recorded: never process it."""

    def __init__(self, expected: FileInfo, size: int, sha256: str | None) -> None:
        super().__init__(f"{expected.name}: size {size}, sha256 {sha256}")
        self.expected = expected
        self.size = size
        self.sha256 = sha256


class HashingStopped(Exception):
    """The server is shutting down: hashing stopped before the end of the file."""


def sha256_file(path: Path, stop: threading.Event | None = None) -> str:
    """The file's SHA-256; once ``stop`` is set, :class:`HashingStopped` within a chunk
    (a shutdown never waits for the rest of a big file)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            if stop is not None and stop.is_set():
                raise HashingStopped(path.name)
            digest.update(chunk)
    return digest.hexdigest()


def free_epoch_name(moment: datetime, taken: Callable[[str], bool]) -> str:
    """The epoch name for ``moment``, or the next second that is not taken."""
    while taken(name := epoch_name_for(moment)):
        moment += timedelta(seconds=1)
    return name


def promote(
    upload_dir: Path,
    staging_dir: Path,
    sources: Iterable[Path],
    taken: Callable[[str], bool],
    after: str | None,
    max_ahead: timedelta,
) -> tuple[str, dict[Path, Path]]:
    """Move ``*_auto.csv`` files into a new epoch named from the current UTC time, or
    later: it sorts after every epoch the district already has (``after``, the newest in
    the ledger, and the epoch directories on disk), so a district whose own names run a
    little ahead never sees its server-named epochs superseded. Never more than
    ``max_ahead`` ahead of the clock, though: a name beyond that is bogus, and an operator
    retires it (``ingest epochs retire``) rather than every later name following it."""

    def name_taken(name: str) -> bool:
        return taken(name) or (upload_dir / name).exists() or (staging_dir / name).exists()

    now = datetime.now(UTC)
    moment = now
    existing = [*_epoch_dirs(upload_dir), *_epoch_dirs(staging_dir), *([after] if after else [])]
    for name in existing:
        parsed = parse_epoch_name(name)
        follows = parsed.next_moment() if parsed else None
        if follows is not None and moment < follows <= now + max_ahead:
            moment = follows
    name = free_epoch_name(moment, name_taken)
    staged = staging_dir / name
    staged.mkdir(mode=DIR_MODE, parents=True)
    # What belongs to this epoch, written before the first move: a crash between two
    # moves must not split the files that arrived together into two epochs.
    manifest = _manifest(staged)
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text(json.dumps([source.name for source in sources]))
    os.replace(tmp, manifest)
    moved: dict[Path, Path] = {}
    for source in sources:
        target_name = auto_target(source.name)
        assert target_name is not None
        os.rename(source, staged / target_name)
        moved[source] = upload_dir / name / target_name
    manifest.unlink()
    _write_marker(staged)
    os.rename(staged, upload_dir / name)
    return name, moved


def _manifest(staged: Path) -> Path:
    """Beside the staged epoch (server-only), so it never becomes one of its files."""
    return staged.with_name(staged.name + ".sources")


def _epoch_dirs(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return [p.name for p in directory.iterdir() if p.is_dir() and parse_epoch_name(p.name)]


def finish_staged(upload_dir: Path, staging_dir: Path, taken: Callable[[str], bool]) -> list[str]:
    """After a crash: complete epochs left in staging and move them into ``/upload/``."""
    finished: list[str] = []
    if not staging_dir.is_dir():
        return finished
    for staged in sorted(p for p in staging_dir.iterdir() if p.is_dir()):
        manifest = _manifest(staged)
        if manifest.exists():  # crashed while moving: move the rest first
            for source_name in json.loads(manifest.read_text()):
                source, target_name = upload_dir / source_name, auto_target(source_name)
                if target_name and source.is_file() and not (staged / target_name).exists():
                    os.rename(source, staged / target_name)
            manifest.unlink()
        if not any(staged.iterdir()):
            staged.rmdir()  # crashed before the first file moved in
            continue
        _write_marker(staged)
        name = staged.name
        if taken(name) or (upload_dir / name).exists():
            name = free_epoch_name(
                datetime.now(UTC), lambda n: taken(n) or (upload_dir / n).exists()
            )
        os.rename(staged, upload_dir / name)
        finished.append(name)
    for leftover in staging_dir.glob("*.sources.tmp"):  # crashed while writing a manifest
        leftover.unlink()
    return finished


def _write_marker(directory: Path) -> None:
    marker = directory / MARKER
    if not marker.exists():
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        os.close(fd)


def archive(source_dir: Path, archive_dir: Path, files: Iterable[FileInfo]) -> Path:
    """The epoch's files as the processor must see them: a private copy (never a hard
    link: the uploaded file's inode stays reachable by clients and other writers), made
    once, then checked against the ledger's size and sha256 on every use (a claim, a
    restart redoing it, a reprocess). Raises :class:`ArchiveMismatch`."""
    archive_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    for info in files:
        target = archive_dir / info.name
        if not target.exists():
            tmp = archive_dir / f".{info.name}.tmp"
            tmp.unlink(missing_ok=True)  # left by a crash between copy and rename
            private_copy(source_dir / info.name, tmp)
            os.replace(tmp, target)
        verify(target, info)
    return archive_dir


def private_copy(source: Path, target: Path) -> None:
    """Copy ``source`` to a new file ``target``: a reflink where the file system can
    (instant, and copy-on-write keeps the two independent), else a plain copy."""
    with source.open("rb") as src:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "wb") as dst:
            with contextlib.suppress(OSError):
                fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
                return
            shutil.copyfileobj(src, dst, _CHUNK)


def verify(path: Path, expected: FileInfo) -> None:
    size = path.stat().st_size
    if size != expected.size:
        raise ArchiveMismatch(expected, size, None)
    digest = sha256_file(path)
    if digest != expected.sha256:
        raise ArchiveMismatch(expected, size, digest)


def publish(
    upload_dir: Path,
    processed_dir: Path,
    name: str,
    archive_dir: Path,
    reports: dict[str, str | None],
) -> Path:
    """Put the epoch and its ``reports`` (file name: text, or None for a report this
    outcome does not have) under ``/upload-processed/<name>/``."""
    source = upload_dir / name
    target = processed_dir / name
    if source.is_dir():
        _write_reports(source, reports)
        if target.exists():  # only after a reprocess of an already published epoch
            target = _free_path(processed_dir, name)
        os.rename(source, target)
        return target
    # Reprocessed, or published before a crash: the files are there or in the archive.
    target.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    for path in sorted(archive_dir.iterdir()) if archive_dir.is_dir() else []:
        if path.name not in REPORT_NAMES and not (target / path.name).exists():
            shutil.copy2(path, target / path.name)
    _write_reports(target, reports)
    return target


def _free_path(parent: Path, name: str) -> Path:
    counter = 2
    while (parent / f"{name}.{counter}").exists():
        counter += 1
    return parent / f"{name}.{counter}"


def _write_reports(directory: Path, reports: dict[str, str | None]) -> None:
    for filename, text in reports.items():
        if text is None:
            (directory / filename).unlink(missing_ok=True)  # from an earlier processing
            continue
        tmp = directory / f".{filename}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, directory / filename)
