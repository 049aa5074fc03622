"""Looking at a district's ``/upload/`` and deciding whether an epoch is ready.

``list_upload`` and ``read_epoch`` block (file system); the service runs them in a worker
thread. ``judge_epoch`` is pure: the readiness rules in one place, fed with what the SFTP
layer knows (open files, files it saw finish) so that a half-written file is never taken
for a finished one, and with a quiet period for files that arrived by other means.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ingest.epochs.handoff import Finding
from ingest.epochs.names import (
    EPOCH_FORMAT,
    MARKER,
    auto_target,
    is_misnamed_marker,
    is_temp_name,
    parse_epoch_name,
)


@dataclass(frozen=True)
class FileSeen:
    name: str
    path: Path
    size: int
    mtime: float


@dataclass(frozen=True)
class UploadListing:
    epochs: list[str] = field(default_factory=list)
    invalid_dirs: list[str] = field(default_factory=list)
    auto_files: list[FileSeen] = field(default_factory=list)
    temp_files: list[FileSeen] = field(default_factory=list)
    loose_files: list[FileSeen] = field(default_factory=list)


@dataclass(frozen=True)
class EpochContents:
    marker: FileSeen | None
    files: list[FileSeen]  # regular files other than the marker and temp names
    temp_files: list[FileSeen]
    misnamed_markers: list[str]
    subdirs: list[str]
    links: list[str]  # never followed, never processed


def _entries(directory: Path) -> list[tuple[os.DirEntry[str], os.stat_result]]:
    found = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                try:
                    found.append((entry, entry.stat(follow_symlinks=False)))
                except FileNotFoundError:
                    continue
    except FileNotFoundError:
        return []
    return found


def list_upload(upload_dir: Path) -> UploadListing:
    listing = UploadListing()
    for entry, st in _entries(upload_dir):
        if stat.S_ISDIR(st.st_mode):
            target = listing.epochs if parse_epoch_name(entry.name) else listing.invalid_dirs
            target.append(entry.name)
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:  # a hard link is never taken
            continue
        seen = FileSeen(entry.name, Path(entry.path), st.st_size, st.st_mtime)
        if is_temp_name(entry.name):
            listing.temp_files.append(seen)
        elif auto_target(entry.name):
            listing.auto_files.append(seen)
        else:
            listing.loose_files.append(seen)
    listing.epochs.sort()
    return listing


def read_epoch(epoch_dir: Path) -> EpochContents:
    marker = None
    files, temp, misnamed, subdirs, links = [], [], [], [], []
    for entry, st in _entries(epoch_dir):
        if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
            links.append(entry.name)  # a hard link may be another district's file
        elif stat.S_ISDIR(st.st_mode):
            subdirs.append(entry.name)
        elif stat.S_ISREG(st.st_mode):
            seen = FileSeen(entry.name, Path(entry.path), st.st_size, st.st_mtime)
            if entry.name == MARKER:
                marker = seen
            elif is_temp_name(entry.name):
                temp.append(seen)
            else:
                files.append(seen)
                if is_misnamed_marker(entry.name):
                    misnamed.append(entry.name)
    files.sort(key=lambda f: f.name)
    return EpochContents(marker, files, temp, sorted(misnamed), sorted(subdirs), sorted(links))


@dataclass(frozen=True)
class Verdict:
    ready: bool
    # ready | no_marker | stale | files_open | files_incomplete | marker_settling |
    # temp_files | settling
    reason: str
    recheck_at: float | None = None  # wall-clock time when waiting may end by itself
    warnings: tuple[Finding, ...] = ()
    files: tuple[FileSeen, ...] = ()  # what the epoch consists of, when ready


def judge_epoch(
    name: str,
    contents: EpochContents,
    *,
    open_paths: set[Path],
    trusted_sizes: dict[Path, int],
    incomplete: set[Path],
    now: float,
    quiet_period: float,
    stale_after: float,
    marker_settle: float,
    marker_seen_at: float | None = None,
) -> Verdict:
    """Is epoch ``name`` ready: COMPLETE present, nothing open, everything settled?

    ``open_paths``: what the SFTP layer is changing in the epoch right now (files open for
    writing, and files or names a request is about to change); any holds the epoch back,
    however long it has been quiet.
    ``trusted_sizes``: files our SFTP server saw closed explicitly, with their size then.
    Such a file is settled as soon as it still has that size; any other file must not
    have changed for ``quiet_period`` seconds. ``incomplete``: files whose last upload was
    cut off; they hold the epoch back until uploaded again or removed.
    An epoch that holds nothing but COMPLETE waits ``marker_settle`` seconds from the
    marker's arrival (``marker_seen_at``, when our SFTP server saw it closed, or its mtime)
    for its data files to start: parallel clients send the empty COMPLETE first.
    """
    everything = [*contents.files, *contents.temp_files]
    if contents.marker is None:
        newest = max((f.mtime for f in everything), default=None)
        if newest is not None and now - newest >= stale_after:
            return Verdict(False, "stale")
        return Verdict(False, "no_marker")
    candidates = [*everything, contents.marker]
    if open_paths:
        return Verdict(False, "files_open")
    if any(f.path in incomplete for f in candidates):
        return Verdict(False, "files_incomplete")  # a session ended mid-file
    if not everything:
        arrived = max(contents.marker.mtime, marker_seen_at or 0.0)
        if now < arrived + marker_settle:
            return Verdict(False, "marker_settling", arrived + marker_settle)

    temp_paths = {f.path for f in contents.temp_files}

    def settled_at(f: FileSeen) -> float:
        # A finished temp name is about to be renamed (WinSCP closes users.csv.filepart,
        # then renames it): only time settles it, never our having seen it closed.
        if f.path not in temp_paths and trusted_sizes.get(f.path) == f.size:
            return 0.0
        return f.mtime + quiet_period

    waits = [settled_at(f) for f in candidates if settled_at(f) > now]
    recheck = max(waits) if waits else None
    if any(settled_at(f) > now for f in contents.temp_files):
        return Verdict(False, "temp_files", recheck)
    if recheck is not None:
        return Verdict(False, "settling", recheck)
    warnings = list(_warnings(name, contents))
    return Verdict(True, "ready", None, tuple(warnings), tuple(contents.files))


def _warnings(name: str, contents: EpochContents) -> list[Finding]:
    found = []
    parsed = parse_epoch_name(name)
    if parsed is not None and not parsed.time_valid:
        found.append(
            Finding(
                "epoch_time_invalid",
                f"{name} is shaped like {EPOCH_FORMAT} but is not a real date and time; it was "
                "accepted, and epochs are ordered by name, so use the real upload time",
            )
        )
    if contents.marker is not None and contents.marker.size > 0:
        found.append(
            Finding(
                "marker_not_empty",
                f"{MARKER} should be an empty file; its {contents.marker.size} bytes were ignored",
                file=MARKER,
            )
        )
    for temp in contents.temp_files:
        found.append(
            Finding(
                "temp_file_ignored",
                f"{temp.name} looks like an unfinished transfer and was not processed; rename "
                "it when the transfer is complete, before writing COMPLETE",
                file=temp.name,
            )
        )
    for sub in contents.subdirs:
        found.append(
            Finding(
                "subdirectory_ignored",
                f"{sub}/ was ignored: put the CSV files directly in the epoch directory",
                file=sub,
            )
        )
    for link in contents.links:
        found.append(Finding("link_ignored", f"{link} is a link and was ignored", file=link))
    return found
