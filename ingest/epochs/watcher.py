"""File system events -> asyncio: "look at this district (epoch) again".

Events only say *where* to look; what is ready is always decided by a fresh look at the
directory, so lost or duplicated events (inotify overflow) cost latency at worst, which
the periodic reconcile scan bounds. Each event is handed to the event loop with
``call_soon_threadsafe``.

Only what can become an epoch is watched: the data root (for new districts), each
district's ``upload/`` folder and the epoch folders in it, each with a non-recursive
inotify watch of its own (:mod:`~ingest.epochs.inotify`: one reader thread for all).
Watching the whole tree recursively, as before, added a watch for every published epoch
under ``upload-processed/``, so the count grew every night until the kernel's limit was
hit, silently. Now an epoch's watch goes when the epoch leaves ``upload/``; at most
``max_watches`` are held, at most ``max_watches_per_district`` epoch folders of one
district are watched, and a district whose watch cannot be added (those bounds, or the
kernel's ``fs.inotify.max_user_watches``) is logged (``observer.watch_failed``) and polled
from then on (watchdog's polling observer, its ``upload/`` tree only).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from ingest.epochs import inotify
from ingest.epochs.names import UPLOAD

# (path, is_directory) for any event below <root>/<district>/upload/
Notify = Callable[[Path, bool], None]

# Not modifications: every write of every upload would be an event (a 256 MiB upload is
# a thousand), and none is needed. A file that appears is looked at, and a file that is
# not settled yet schedules its own re-look (scan.judge_epoch's recheck_at); closes and
# renames say when a writer is done. inotify filters in the kernel.
EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]


class _Bridge(FileSystemEventHandler):
    def __init__(self, root: Path, loop: asyncio.AbstractEventLoop, notify: Notify) -> None:
        self.root = root
        self.loop = loop
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            path = raw.decode() if isinstance(raw, bytes) else raw
            try:
                parts = Path(path).relative_to(self.root).parts
            except ValueError:
                continue
            if len(parts) < 3 or parts[1] != UPLOAD:
                continue
            try:
                self.loop.call_soon_threadsafe(self.notify, Path(path), event.is_directory)
            except RuntimeError:
                return  # loop closed during shutdown


class _NewDistricts(FileSystemEventHandler):
    """The root's own watch (not recursive): a district folder that appears is watched at
    once, not at the next reconcile scan."""

    def __init__(self, loop: asyncio.AbstractEventLoop, found: Callable[[str], None]) -> None:
        self.loop = loop
        self.found = found

    def on_any_event(self, event: FileSystemEvent) -> None:
        raw = getattr(event, "dest_path", "") or event.src_path
        if not event.is_directory or not raw:
            return
        name = Path(raw.decode() if isinstance(raw, bytes) else raw).name
        try:
            self.loop.call_soon_threadsafe(self.found, name)
        except RuntimeError:
            return  # loop closed during shutdown


_ROOT = ("", None)  # the owner of the root's watch
_HOME = "/"  # as the epoch of an owner: the district's own folder, until upload/ exists


class UploadWatcher:
    """The watches on districts' ``upload/`` trees. Its methods block briefly: call them
    from worker threads. ``polling``: every district is polled (shared volumes that
    inotify does not see), and so is everything where inotify is not available.
    """

    def __init__(
        self,
        root: Path,
        loop: asyncio.AbstractEventLoop,
        notify: Notify,
        *,
        polling: bool,
        interval: float,
        max_watches: int,
        max_watches_per_district: int,
        on_failure: Callable[[str, str], None],
        on_new_district: Callable[[str], None],
        on_overflow: Callable[[], None],
    ) -> None:
        """``on_failure(district, error)`` (a worker thread): a district could not be
        watched; it is polled from now on. ``on_new_district(name)`` (the event loop): a
        folder appeared in ``root``. ``on_overflow()`` (the event loop): events were lost."""
        self.root = root
        self._loop = loop
        self._notify = notify
        self._bridge = _Bridge(root, loop, notify)
        self._new_districts = _NewDistricts(loop, on_new_district)
        self._on_new_district = on_new_district
        self._on_overflow = on_overflow
        self._polling_only = polling or not inotify.available()
        self._interval = interval
        self._max_watches = max_watches
        self._max_per_district = max_watches_per_district
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._inotify: inotify.Inotify | None = None
        self._poller: BaseObserver | None = None
        self._owners: dict[int, tuple[str, str | None]] = {}  # watch -> (district, epoch)
        self._districts: dict[str, int] = {}  # district -> its upload/ watch
        self._epochs: dict[tuple[str, str], int] = {}  # (district, epoch) -> watch
        self._polled: set[str] = set()

    def start(self) -> None:
        if self._polling_only:
            self._poller = self._start_poller()
            self._poller.schedule(
                self._new_districts,
                str(self.root),
                recursive=False,
                event_filter=[DirCreatedEvent, DirMovedEvent],
            )
            return
        self._inotify = inotify.Inotify(self._event)
        wd = self._inotify.add(self.root, inotify.IN_CREATE | inotify.IN_MOVED_TO)
        with self._lock:
            self._owners[wd] = _ROOT

    def stop(self, timeout: float) -> None:
        if self._inotify is not None:
            self._inotify.close(timeout)
        if self._poller is not None:
            self._poller.stop()
            if self._poller.is_alive():
                self._poller.join(timeout)

    def watch_district(self, district: str) -> bool:
        """Watch the district's ``upload/`` and each epoch folder in it (idempotent); drop
        the watches of epoch folders that left it. True when a watch was added (what
        happened before it is not in any event: look once more)."""
        upload = self.root / district / UPLOAD
        with self._lock:
            if district in self._polled:
                return False
            if self._inotify is None:
                return self._poll(district)
            added = False
            if district not in self._districts:
                if not upload.is_dir():  # a district being made: watch for its upload/
                    self._watch_home(district)
                    return False
                wd = self._add(district, None, upload)
                if wd is None:
                    return district in self._polled
                self._districts[district] = wd
                self._unwatch_home(district)
                added = True
            present = {p.name for p in _subdirs(upload)}
            for key in [k for k in self._epochs if k[0] == district and k[1] not in present]:
                self._drop(key)
            for name in sorted(present):
                if (district, name) not in self._epochs:
                    if self._add(district, name, upload / name) is None:
                        return district in self._polled
                    added = True
            return added

    def watch_epoch(self, district: str, epoch: str) -> bool:
        """A folder appeared in the district's ``upload/`` (or moved in): watch it. True
        when a watch was added (files made before it are in no event: look once more)."""
        path = self.root / district / UPLOAD / epoch
        with self._lock:
            if (
                self._inotify is None
                or district in self._polled
                or district not in self._districts
                or (district, epoch) in self._epochs
                or not path.is_dir()
            ):
                return False
            return self._add(district, epoch, path) is not None or district in self._polled

    def forget_epoch(self, district: str, epoch: str) -> None:
        """The epoch folder left ``upload/`` (published, removed): its watch goes. A moved
        folder keeps its inotify watch in the kernel until it is removed here."""
        with self._lock:
            self._drop((district, epoch))

    # --- called with the lock held -------------------------------------------------------

    def _add(self, district: str, epoch: str | None, path: Path) -> int | None:
        """A watch on ``path``, or None when there is none to be had (the district was
        switched to polling, or the folder is gone)."""
        assert self._inotify is not None
        per_district = sum(1 for key in self._epochs if key[0] == district)
        if len(self._owners) >= self._max_watches:
            error = f"epochs.max_watches ({self._max_watches}) reached"
        elif epoch is not None and per_district >= self._max_per_district:
            error = (
                f"more than epochs.max_watches_per_district ({self._max_per_district}) "
                "folders in its upload/"
            )
        else:
            try:
                wd = self._inotify.add(path, inotify.FOLDER_EVENTS | inotify.IN_ONLYDIR)
            except (FileNotFoundError, NotADirectoryError):
                return None  # gone already; the next look notices
            except OSError as exc:  # the kernel's limits: ENOSPC (watches), ENOMEM
                error = exc.strerror or str(exc)
            else:
                previous = self._owners.get(wd)  # the same folder under its old name
                if previous is not None and previous[1] is not None:
                    self._epochs.pop((previous[0], previous[1]), None)
                self._owners[wd] = (district, epoch)
                if epoch is not None:
                    self._epochs[(district, epoch)] = wd
                return wd
        self._to_polling(district, error)
        return None

    def _watch_home(self, district: str) -> None:
        assert self._inotify is not None
        if any(owner == (district, _HOME) for owner in self._owners.values()):
            return
        with contextlib.suppress(OSError):  # gone, or no watch to be had: the reconcile
            wd = self._inotify.add(self.root / district, inotify.IN_CREATE | inotify.IN_MOVED_TO)
            self._owners[wd] = (district, _HOME)

    def _unwatch_home(self, district: str) -> None:
        for wd in [wd for wd, owner in self._owners.items() if owner == (district, _HOME)]:
            del self._owners[wd]
            assert self._inotify is not None
            self._inotify.remove(wd)

    def _drop(self, key: tuple[str, str]) -> None:
        wd = self._epochs.pop(key, None)
        if wd is not None:
            self._owners.pop(wd, None)
            if self._inotify is not None:
                self._inotify.remove(wd)

    def _to_polling(self, district: str, error: str) -> None:
        for key in [k for k in self._epochs if k[0] == district]:
            self._drop(key)
        self._unwatch_home(district)
        wd = self._districts.pop(district, None)
        if wd is not None:
            self._owners.pop(wd, None)
            if self._inotify is not None:
                self._inotify.remove(wd)
        self._poll(district)
        self._on_failure(district, error)

    def _poll(self, district: str) -> bool:
        """Poll the district's ``upload/`` tree from now on; True when it is polled."""
        if self._poller is None:
            self._poller = self._start_poller()
        upload = self.root / district / UPLOAD
        if not upload.is_dir():
            return False
        self._poller.schedule(self._bridge, str(upload), recursive=True, event_filter=EVENTS)
        self._polled.add(district)
        return True

    def _start_poller(self) -> BaseObserver:
        poller = PollingObserver(timeout=self._interval)
        poller.daemon = True
        poller.start()
        return poller

    # --- the reader thread ---------------------------------------------------------------

    def _event(self, wd: int, mask: int, name: bytes) -> None:
        try:
            if mask & inotify.IN_Q_OVERFLOW:
                self._loop.call_soon_threadsafe(self._on_overflow)
                return
            with self._lock:
                owner = self._owners.get(wd)
                if mask & inotify.IN_IGNORED:  # the folder was deleted: its watch is gone
                    self._forget_watch(wd)
                    return
            if owner is None or not name:
                return
            district, epoch = owner
            if owner == _ROOT or epoch == _HOME:  # a district, or its upload/, appeared
                if mask & inotify.IN_ISDIR:
                    found = os.fsdecode(name) if owner == _ROOT else district
                    self._loop.call_soon_threadsafe(self._on_new_district, found)
                return
            folder = self.root / district / UPLOAD
            if epoch is not None:
                folder = folder / epoch
            path = folder / os.fsdecode(name)
            self._loop.call_soon_threadsafe(self._notify, path, bool(mask & inotify.IN_ISDIR))
        except RuntimeError:
            return  # the loop closed during shutdown

    def _forget_watch(self, wd: int) -> None:
        owner = self._owners.pop(wd, None)
        if owner is None:
            return
        district, epoch = owner
        if epoch is None:
            if self._districts.get(district) == wd:
                del self._districts[district]
        elif self._epochs.get((district, epoch)) == wd:
            del self._epochs[(district, epoch)]


def _subdirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []
