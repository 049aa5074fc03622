"""Write-behind for uploads: file I/O and hashing off the event loop, without serialising.

asyncssh handles one SFTP request at a time per session, so awaiting a thread for every
32 KiB write would put a thread round trip on the critical path of each packet. Instead a
write is queued and acknowledged at once; one worker job per file drains the queue in
order, hashing as it goes (hashlib releases the GIL, so hashing runs beside the loop).
Backpressure: past ``max_pending`` queued bytes the session waits for the disk, and only
that session does. A write error is reported on the next write, flush or close of the
handle, like a write-back cache; :meth:`flush` runs before anything that must see the data
on disk (close, fstat, read, fsync).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections import deque
from concurrent.futures import Executor

DEFAULT_MAX_PENDING = 8 * 1024 * 1024
_HASH_CHUNK = 1024 * 1024


class FileWriter:
    """Ordered, asynchronous writes to one open file descriptor."""

    def __init__(
        self, fd: int, executor: Executor | None = None, max_pending: int = DEFAULT_MAX_PENDING
    ) -> None:
        self.fd = fd
        self.bytes_written = 0
        self._executor = executor
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._queue: deque[tuple[int, bytes]] = deque()
        self._pending_bytes = 0
        self._running = False  # a drain job owns the queue; guarded by _lock
        self._job: asyncio.Future[None] | None = None
        self._error: OSError | None = None
        # Hash while writing as long as the writes are sequential from offset 0; anything
        # else (resume, random access) falls back to hashing the file once at the end.
        self._hash: hashlib._Hash | None = hashlib.sha256()
        self._hashed_to = 0

    async def write(self, offset: int, data: bytes) -> None:
        self._raise_error()
        with self._lock:
            self._queue.append((offset, data))
            self._pending_bytes += len(data)
            self.bytes_written += len(data)
            if not self._running:
                self._running = True
                self._job = asyncio.get_running_loop().run_in_executor(self._executor, self._drain)
            over_limit = self._pending_bytes > self._max_pending
        if over_limit:
            await self.flush()

    def _drain(self) -> None:
        """Worker thread: write queued chunks in order until the queue is empty."""
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                offset, data = self._queue.popleft()
            try:
                if self._error is None:
                    self._pwrite_all(offset, data)
            except OSError as exc:
                self._error = exc
            finally:
                with self._lock:
                    self._pending_bytes -= len(data)

    def _pwrite_all(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written
        if self._hash is not None:
            if offset - len(data) == self._hashed_to:
                self._hash.update(data)
                self._hashed_to = offset
            else:
                self._hash = None

    async def flush(self) -> None:
        """Wait until every queued write is on the file; raise the first write error."""
        while True:
            with self._lock:
                job = self._job if self._running else None
            if job is None:
                break
            await asyncio.shield(job)
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def sha256_blocking(self) -> tuple[str, int]:
        """(hex sha256, size) of the whole file; call only after :meth:`flush`."""
        size = os.fstat(self.fd).st_size
        if self._hash is not None and self._hashed_to == size:
            return self._hash.hexdigest(), size
        digest = hashlib.sha256()
        offset = 0
        while chunk := os.pread(self.fd, _HASH_CHUNK, offset):
            digest.update(chunk)
            offset += len(chunk)
        return digest.hexdigest(), offset
