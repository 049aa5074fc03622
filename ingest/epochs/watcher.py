"""watchdog -> asyncio: file system events become "look at this district again".

The observer runs its own thread; each event is handed to the event loop with
``call_soon_threadsafe``. Events only say *where* to look; what is ready is always
decided by a fresh look at the directory, so lost or duplicated events (inotify overflow)
cost latency at worst, which the periodic reconcile scan bounds.
"""

from __future__ import annotations

import asyncio
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
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

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
            if len(parts) < 3 or parts[1] != "upload":
                continue
            try:
                self.loop.call_soon_threadsafe(self.notify, Path(path), event.is_directory)
            except RuntimeError:
                return  # loop closed during shutdown


def start_observer(
    root: Path, loop: asyncio.AbstractEventLoop, notify: Notify, polling: bool, interval: float
) -> BaseObserver:
    observer: BaseObserver = PollingObserver(timeout=interval) if polling else Observer()
    observer.schedule(_Bridge(root, loop, notify), str(root), recursive=True, event_filter=EVENTS)
    observer.daemon = True
    observer.start()
    return observer
