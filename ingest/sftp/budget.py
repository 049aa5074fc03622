"""One budget for the upload bytes the server holds in memory, across every write handle.

A write is acknowledged as soon as it is queued (:class:`~ingest.sftp.writer.FileWriter`),
so what clients send faster than the disk takes it sits in memory. Each handle bounds its
own queue, but a district may open hundreds of handles (sessions x channels x handles):
before this budget, 240 handles each holding just under 4 MiB cost 889 MiB of RSS. Now
every queued byte is taken from one shared budget and given back once it is on the file.

A write that does not fit waits, and only its SFTP session waits (asyncssh reads the
session's next request only when this one is answered, so the client's window fills and
TCP pushes back). Bytes are always on their way back: each handle drains its queue within
its flush timer, and a waiting writer first starts the drain of its own queue. Waiters are
served in arrival order, so one district's many handles cannot starve another's one.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class BufferBudget:
    """Bytes queued in memory by all write handles together, at most ``limit``.

    :meth:`take` runs on the event loop; :meth:`give_back` may run in any thread (the
    write-behind's workers give bytes back as they reach the file).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()  # guards _used and _waiters
        self._used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.peak = 0  # the most ever held at once (tests, benchmarks)
        self.waits = 0  # how many writes had to wait (tests, benchmarks)

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def try_take(self, size: int) -> bool:
        """Take ``size`` bytes now if they fit and nobody waits before us."""
        with self._lock:
            if self._waiters or not self._fits(size):
                return False
            self._add(size)
            return True

    async def take(self, size: int) -> None:
        """Take ``size`` bytes, waiting (in arrival order) until they fit. A single write
        larger than the whole budget is let through when nothing else is held."""
        self._loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters and self._fits(size):
                self._add(size)
                return
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append((size, waiter))
            self.waits += 1
        try:
            await waiter
        except asyncio.CancelledError:
            with self._lock:
                granted = waiter.done() and not waiter.cancelled()
                if not granted:
                    self._waiters = deque(w for w in self._waiters if w[1] is not waiter)
            if granted:  # taken for us just as we were cancelled: return it
                self.give_back(size)
            else:
                self._wake()  # we may have been first in line, blocking smaller writes
            raise

    def give_back(self, size: int) -> None:
        """Any thread: ``size`` bytes are no longer held in memory."""
        with self._lock:
            self._used -= size
            waiting = bool(self._waiters)
        if waiting and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        """Event loop: grant waiting writes, in order, while they fit."""
        with self._lock:
            while self._waiters:
                size, waiter = self._waiters[0]
                if waiter.done():  # cancelled: take() removes it; skip it here
                    self._waiters.popleft()
                    continue
                if not self._fits(size):
                    return
                self._waiters.popleft()
                self._add(size)
                waiter.set_result(None)

    def _fits(self, size: int) -> bool:
        return self._used + size <= self.limit or self._used == 0

    def _add(self, size: int) -> None:
        self._used += size
        self.peak = max(self.peak, self._used)
