"""Write-behind for uploads: file I/O and hashing off the event loop, without serialising.

asyncssh handles one SFTP request at a time per session, so awaiting a thread for every
write would put a thread round trip on the critical path of each packet. Instead a write
is queued and acknowledged at once. Once ``batch`` bytes are queued, one worker job drains
the queue in order; batching keeps the hand-offs between threads to about one per
``batch`` bytes. Bytes that do not fill a batch are written ``flush_after`` seconds after
the first of them was queued, so that what a client was told is written reaches the file
within a second even when the client pauses or sends slowly. After each drain the kernel
is asked to start writing those pages to disk (``sync_file_range``): the close syncs the
file before it is recorded whole, and a file whose writeback started as it arrived leaves
that sync (and everyone else's syncs queued behind it) little to do. Backpressure: past
``max_pending`` queued bytes the session waits for the disk, and only that session does;
every queued byte is also taken from the server's one :class:`~ingest.sftp.budget.BufferBudget`
and given back once it is on the file, so that many handles together stay bounded too.
A write error is reported on the next write, flush or close of the handle, like a
write-back cache; :meth:`FileWriter.flush` runs before anything that must see the data on
disk (fstat, read, fsync).

The SHA-256 of an upload is computed alongside the writes by :class:`StreamDigest`: a
low-priority worker hashes the written prefix from the page cache as it grows, at up to
``BACKGROUND_HASH_RATE``, which keeps pace with any WAN upload; whatever a faster upload
left unhashed is hashed after the client's close has been answered (bench/upload.py shows
why: on a loaded machine, hashing at full speed during the transfer costs throughput).
Memory stays bounded whatever the file size: nothing is kept but the page cache. Hashing
stops at once when the server shuts down (``abort``): a digest left unfinished is computed
again from the file after the restart, and a shutdown never waits for gigabytes of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

from ingest.sftp.budget import BufferBudget

DEFAULT_BATCH = 4 * 1024 * 1024
DEFAULT_MAX_PENDING = 8 * 1024 * 1024
# Queued bytes below a batch reach the file at most this long after they were queued.
DEFAULT_FLUSH_AFTER = 0.5
_HASH_CHUNK = 1024 * 1024
# Background hashing keeps pace with any WAN upload but never competes with a very fast
# (LAN, loopback) one for CPU: beyond this rate the rest is hashed after the close.
BACKGROUND_HASH_RATE = 64 * 1024 * 1024  # bytes per second per upload


_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)  # Linux only
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2  # start writeback of dirty pages, do not wait for it


def start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages to disk now, without waiting for them (a
    worker thread may block briefly when the disk's queue is full: backpressure on this
    upload only). Where the call does not exist, the close's sync does it all."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def lower_thread_priority() -> None:
    """ThreadPoolExecutor initializer: make background hashing yield to transfers."""
    with contextlib.suppress(OSError):  # not permitted here: run at normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class DigestAborted(OSError):
    """Hashing was stopped because the server is shutting down."""


class StreamDigest:
    """SHA-256 of a file written front to back, hashed from the page cache as it grows.

    The writer reports each completed write with :meth:`written`. While the writes are
    sequential from offset 0, a background job on ``executor`` hashes the newly written
    prefix; anything else (resume at an offset, random access) makes :meth:`hexdigest`
    hash the whole file once at the end instead. Once ``abort`` is set, any hashing stops
    within a chunk and :meth:`hexdigest` raises :class:`DigestAborted`.
    """

    def __init__(
        self, fd: int, executor: Executor | None, abort: threading.Event | None = None
    ) -> None:
        self._fd = fd
        self._executor = executor
        self._abort = abort
        self._lock = threading.Lock()  # guards _written_to, _sequential, _running, _final
        self._hash_lock = threading.Lock()  # one hasher at a time; guards the hash state
        self._hash = hashlib.sha256()
        self._hashed_to = 0
        self._written_to = 0
        self._sequential = True
        self._running = False
        self._final = False

    def written(self, start: int, end: int) -> None:
        with self._lock:
            if start == self._written_to:
                self._written_to = end
            else:
                self._sequential = False
            start_job = (
                self._executor is not None
                and self._sequential
                and not self._running
                and not self._final
                and self._written_to - self._hashed_to >= _HASH_CHUNK
            )
            if start_job:
                self._running = True
        if start_job:
            assert self._executor is not None
            self._executor.submit(self._background)

    def _background(self) -> None:
        try:
            self._advance(background=True)
        finally:
            with self._lock:
                self._running = False

    def _advance(self, background: bool) -> None:
        started, hashed = time.monotonic(), 0
        while True:
            if background and hashed:
                ahead = hashed / BACKGROUND_HASH_RATE - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)  # a rate limit in a worker thread, not a wait
            with self._hash_lock:
                with self._lock:
                    target = self._written_to if self._sequential else -1
                    stop = background and self._final  # the final caller takes over
                if stop or target <= self._hashed_to:
                    return
                self._check_abort()
                chunk = os.pread(
                    self._fd, min(_HASH_CHUNK, target - self._hashed_to), self._hashed_to
                )
                if not chunk:  # truncated under us; hexdigest() notices the size mismatch
                    return
                self._hash.update(chunk)
                self._hashed_to += len(chunk)
                hashed += len(chunk)

    def hexdigest(self, size: int) -> str:
        """Blocking: the digest of the file's first ``size`` bytes (its size after close)."""
        with self._lock:
            self._final = True
        self._advance(background=False)
        with self._hash_lock, self._lock:
            if self._sequential and self._written_to == size and self._hashed_to == size:
                return self._hash.hexdigest()
        rehash = hashlib.sha256()
        offset = 0
        while offset < size and (chunk := os.pread(self._fd, _HASH_CHUNK, offset)):
            self._check_abort()
            rehash.update(chunk)
            offset += len(chunk)
        return rehash.hexdigest()

    def _check_abort(self) -> None:
        if self._abort is not None and self._abort.is_set():
            raise DigestAborted("hashing stopped: the server is shutting down")


class FileWriter:
    """Ordered, asynchronous writes to one open file descriptor."""

    def __init__(
        self,
        fd: int,
        executor: Executor | None = None,
        hash_executor: Executor | None = None,
        batch: int = DEFAULT_BATCH,
        max_pending: int = DEFAULT_MAX_PENDING,
        flush_after: float = DEFAULT_FLUSH_AFTER,
        admit: Callable[[], None] | None = None,
        budget: BufferBudget | None = None,
        abort_hashing: threading.Event | None = None,
    ) -> None:
        """``admit``: called in the worker thread before each batch reaches the file; an
        OSError it raises fails the handle like a write error (e.g. the disk's reserve).
        ``budget``: the server's bound on queued bytes across all handles."""
        self.fd = fd
        self._admit = admit
        self._budget = budget
        self.bytes_written = 0
        self._executor = executor
        self._batch = batch
        self._flush_after = flush_after
        self._timer: asyncio.TimerHandle | None = None
        self._max_pending = max(max_pending, batch)
        self._lock = threading.Lock()
        self._queue: deque[tuple[int, bytes]] = deque()
        self._pending_bytes = 0
        self._running = False  # a drain job owns the queue; guarded by _lock
        self._job: asyncio.Future[None] | None = None
        self._error: OSError | None = None
        self.digest = StreamDigest(fd, hash_executor, abort_hashing)

    async def write(self, offset: int, data: bytes) -> bool:
        """Queue a write; True when it had to wait for the server's buffer budget."""
        self._raise_error()
        waited = self._budget is not None and not self._budget.try_take(len(data))
        if waited:
            assert self._budget is not None
            with self._lock:
                self._start_locked()  # our own queue goes to the file and back to the budget
            await self._budget.take(len(data))
        with self._lock:
            self._queue.append((offset, data))
            self._pending_bytes += len(data)
            self.bytes_written += len(data)
            if self._pending_bytes >= self._batch:
                self._start_locked()
            over_limit = self._pending_bytes > self._max_pending
        if over_limit:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_after, self._flush_soon)
        return waited

    def _flush_soon(self) -> None:
        """The timer: start a drain for what is queued (a running one takes it anyway)."""
        self._timer = None
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if not self._running and self._queue:
            self._running = True
            self._job = asyncio.get_running_loop().run_in_executor(self._executor, self._drain)

    def _drain(self) -> None:
        """Worker thread: write queued chunks in order until the queue is empty."""
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                batch = list(self._queue)
                self._queue.clear()
            self._write_batch(batch)
            if self._error is None:
                start_writeback(self.fd)

    def _write_batch(self, batch: list[tuple[int, bytes]]) -> None:
        if self._admit is not None and self._error is None and batch:
            try:
                self._admit()
            except OSError as exc:
                self._error = exc
        for offset, data in batch:
            try:
                if self._error is None:
                    self._pwrite_all(offset, data)
            except OSError as exc:
                self._error = exc
            finally:
                with self._lock:
                    self._pending_bytes -= len(data)
                if self._budget is not None:
                    self._budget.give_back(len(data))

    def _pwrite_all(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        start = offset
        while view:
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written
        self.digest.written(start, offset)

    async def flush(self) -> None:
        """Wait until every queued write is on the file; raise the first write error."""
        while True:
            with self._lock:
                self._start_locked()
                job = self._job if self._running else None
            if job is None:
                break
            await asyncio.shield(job)
        self._raise_error()

    async def wait_idle(self) -> None:
        """Wait for a running drain job without starting one (before finish_blocking);
        no timer starts one afterwards either."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while True:
            with self._lock:
                job = self._job if self._running else None
            if job is None:
                return
            await asyncio.shield(job)

    def finish_blocking(self) -> int:
        """In a worker thread after :meth:`wait_idle`: write what is still queued and
        return the file's size; raises the first write error."""
        with self._lock:
            assert not self._running, "finish_blocking() while a drain job runs"
            batch = list(self._queue)
            self._queue.clear()
        self._write_batch(batch)
        self._raise_error()
        return os.fstat(self.fd).st_size

    def fail(self, error: OSError) -> None:
        """Fail the handle from outside (a limit): what follows, the close included, fails."""
        if self._error is None:
            self._error = error

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error
