"""watchdog -> asyncio: file system events become "look at this district again".

Events only say *where* to look; what is ready is always decided by a fresh look at the
directory, so lost or duplicated events (inotify overflow) cost latency at worst, which
the periodic reconcile scan bounds. Each event is handed to the event loop with
``call_soon_threadsafe``.

Only what can become an epoch is watched: each district's ``upload/`` folder and the
epoch folders in it, each with a watch of its own (non-recursive: an epoch holds no
folders). Watching the whole tree recursively, as before, added a watch for every
published epoch under ``upload-processed/``, so the count grew every night until the
kernel's limit was hit, silently. Now an epoch's watch goes when the epoch leaves
``upload/``, at most ``max_watches`` are held, and a district whose watch cannot be added
(that bound, or the kernel's ``fs.inotify.max_user_watches``) is logged
(``observer.watch_failed``) and polled from then on, its ``upload/`` tree only.
"""

from __future__ import annotations

import asyncio
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
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

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


class UploadWatcher:
    """The watches on districts' ``upload/`` trees. Its methods block briefly (adding a
    watch walks nothing, but takes the observer's lock): call them from worker threads.

    ``polling``: every district is polled (shared volumes that inotify does not see).
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
        on_failure: Callable[[str, str], None],
        on_new_district: Callable[[str], None],
    ) -> None:
        """``on_failure(district, error)`` (a worker thread): a district's watch could not
        be added; it is polled from now on. ``on_new_district(name)`` (the event loop): a
        folder appeared in ``root``."""
        self.root = root
        self._bridge = _Bridge(root, loop, notify)
        self._new_districts = _NewDistricts(loop, on_new_district)
        self._polling_only = polling
        self._interval = interval
        self._max_watches = max_watches
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._inotify: BaseObserver | None = None
        self._poller: BaseObserver | None = None
        self._districts: dict[str, ObservedWatch] = {}
        self._epochs: dict[tuple[str, str], ObservedWatch] = {}
        self._polled: set[str] = set()

    def start(self) -> None:
        observer: BaseObserver
        if self._polling_only:
            observer = self._poller = PollingObserver(timeout=self._interval)
        else:
            observer = self._inotify = Observer()
        observer.daemon = True
        observer.start()
        observer.schedule(
            self._new_districts,
            str(self.root),
            recursive=False,
            event_filter=[DirCreatedEvent, DirMovedEvent],
        )

    def stop(self, timeout: float) -> None:
        for observer in (self._inotify, self._poller):
            if observer is not None:
                observer.stop()
        for observer in (self._inotify, self._poller):
            if observer is not None and observer.is_alive():
                observer.join(timeout)

    @property
    def watch_count(self) -> int:
        """inotify watches held (the root, districts' ``upload/`` and epoch folders)."""
        with self._lock:
            return self._held()

    def _held(self) -> int:
        return int(self._inotify is not None) + len(self._districts) + len(self._epochs)

    def polled(self, district: str) -> bool:
        with self._lock:
            return district in self._polled

    def watch_district(self, district: str) -> None:
        """Watch the district's ``upload/`` and each epoch folder in it (idempotent); drop
        the watches of epoch folders that left it."""
        upload = self.root / district / UPLOAD
        with self._lock:
            if district in self._polled:
                return
            if self._inotify is None:
                self._poll(district)
                return
            if district not in self._districts:
                watch = self._add(district, upload)
                if watch is None:
                    return
                self._districts[district] = watch
            present = {p.name for p in _subdirs(upload)}
            for key in [k for k in self._epochs if k[0] == district and k[1] not in present]:
                self._inotify.unschedule(self._epochs.pop(key))
            for name in sorted(present):
                if (district, name) not in self._epochs:
                    watch = self._add(district, upload / name)
                    if watch is None:
                        return
                    self._epochs[(district, name)] = watch

    def watch_epoch(self, district: str, epoch: str) -> None:
        """A folder appeared in the district's ``upload/`` (or moved in): watch it."""
        path = self.root / district / UPLOAD / epoch
        with self._lock:
            if (
                self._inotify is None
                or district in self._polled
                or district not in self._districts
                or (district, epoch) in self._epochs
                or not path.is_dir()
            ):
                return
            watch = self._add(district, path)
            if watch is not None:
                self._epochs[(district, epoch)] = watch

    def forget_epoch(self, district: str, epoch: str) -> None:
        """The epoch folder left ``upload/`` (published, removed): its watch goes. A moved
        folder keeps its inotify watch in the kernel until it is removed here."""
        with self._lock:
            watch = self._epochs.pop((district, epoch), None)
            if watch is not None and self._inotify is not None:
                self._inotify.unschedule(watch)

    def _add(self, district: str, path: Path) -> ObservedWatch | None:
        """Called with the lock held: a non-recursive inotify watch on ``path``, or None
        when there is none to be had and the district was switched to polling."""
        assert self._inotify is not None
        if self._held() >= self._max_watches:
            error = f"epochs.max_watches ({self._max_watches}) reached"
        else:
            try:
                watch: ObservedWatch = self._inotify.schedule(
                    self._bridge, str(path), recursive=False, event_filter=EVENTS
                )
                return watch
            except FileNotFoundError:
                return None  # gone already; the next look notices
            except OSError as exc:  # the kernel's limits: ENOSPC (watches), EMFILE
                error = f"{exc.strerror or exc}"
        self._to_polling(district, error)
        return None

    def _to_polling(self, district: str, error: str) -> None:
        """Called with the lock held."""
        assert self._inotify is not None
        for key in [k for k in self._epochs if k[0] == district]:
            self._inotify.unschedule(self._epochs.pop(key))
        watch = self._districts.pop(district, None)
        if watch is not None:
            self._inotify.unschedule(watch)
        self._poll(district)
        self._on_failure(district, error)

    def _poll(self, district: str) -> None:
        """Called with the lock held: poll the district's ``upload/`` tree from now on."""
        if self._poller is None:
            self._poller = PollingObserver(timeout=self._interval)
            self._poller.daemon = True
            self._poller.start()
        upload = self.root / district / UPLOAD
        if upload.is_dir():
            self._poller.schedule(self._bridge, str(upload), recursive=True, event_filter=EVENTS)
            self._polled.add(district)


def _subdirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []
