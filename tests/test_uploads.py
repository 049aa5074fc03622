"""Upload tracking: finished only on an explicit close, aborted otherwise, open files known."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.server import Server
from ingest.sftp import SFTPEvent, UploadAborted, UploadFinished, UploadStarted
from ingest.sftp.writer import FileWriter
from tests.clients import paramiko_client, ssh_options
from tests.harness import Credentials, Daemon, require_tool, run_in_process, wait_until


def test_dropped_session_is_aborted_not_finished(daemon: Daemon, district: Credentials) -> None:
    client = paramiko_client(daemon, district)
    sftp = client.open_sftp()
    fh = sftp.open("/upload/20260101-000000/half.csv", "wb")
    fh.write(b"x" * 50_000)
    fh.flush()
    daemon.wait_for(
        "upload.started", district=district.name, path="/upload/20260101-000000/half.csv"
    )
    transport = client.get_transport()
    assert transport is not None
    transport.sock.close()  # the network goes away: no FXP_CLOSE, no SSH disconnect
    aborted = daemon.wait_for(
        "upload.aborted", district=district.name, path="/upload/20260101-000000/half.csv"
    )
    assert aborted["reason"] == "session_closed"
    assert not daemon.events("upload.finished", district=district.name)


def test_killed_openssh_client_mid_file_is_aborted(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    require_tool("sftp")
    big = tmp_path / "big.csv"
    with big.open("wb") as fh:
        fh.truncate(512 * 1024 * 1024)  # sparse: big enough to still be running when killed
    proc = subprocess.Popen(
        [
            "sftp",
            "-b",
            "-",
            "-P",
            str(daemon.port),
            *ssh_options(daemon, district),
            f"{district.name}@127.0.0.1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    assert proc.stdin is not None
    proc.stdin.write("put big.csv /upload/20260101-000000/big.csv\n")
    proc.stdin.flush()
    daemon.wait_for(
        "upload.started", district=district.name, path="/upload/20260101-000000/big.csv"
    )
    wait_until(
        lambda: (daemon.root(district.name) / "upload/20260101-000000/big.csv").stat().st_size > 0,
        what="first bytes on disk",
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    aborted = daemon.wait_for(
        "upload.aborted", district=district.name, path="/upload/20260101-000000/big.csv"
    )
    assert 0 < aborted["bytes"] < 512 * 1024 * 1024
    assert not daemon.events(
        "upload.finished", district=district.name, path="/upload/20260101-000000/big.csv"
    )


class _Recorder:
    """An SFTPEventHandler that keeps what it is told, for the in-process server below."""

    def __init__(self) -> None:
        self.events: list[SFTPEvent] = []
        self.lock = threading.Lock()

    def handle_sftp_event(self, event: SFTPEvent) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, kind: type) -> list[SFTPEvent]:
        with self.lock:
            return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[tuple[Server, _Recorder, Daemon]]:
    """The Server object in this process, so the typed interfaces can be checked directly."""
    recorder = _Recorder()
    with run_in_process(tmp_path, events=recorder) as (server, view):
        yield server, recorder, view


def test_typed_events_and_open_uploads(
    in_process: tuple[Server, _Recorder, Daemon], tmp_path: Path
) -> None:
    server, recorder, view = in_process
    creds = view.add_district("typed")
    assert server.sftp is not None
    open_uploads = server.sftp.uploads
    real = view.root("typed").resolve() / "upload/20260101-000000/users.csv"
    data = os.urandom(3 * 1024 * 1024)  # above INLINE_DIGEST_MAX: digest after the reply
    with paramiko_client(view, creds) as client:
        sftp = client.open_sftp()
        fh = sftp.open("/upload/20260101-000000/users.csv", "wb")
        fh.write(data[:60_000])
        fh.flush()
        wait_until(lambda: open_uploads.is_open(real), what="file registered as open")
        assert open_uploads.open_under(real.parent) == [real]
        assert isinstance(recorder.of(UploadStarted)[0], UploadStarted)
        fh.write(data[60_000:])
        fh.close()
        wait_until(lambda: recorder.of(UploadFinished), what="UploadFinished")
        assert not open_uploads.is_open(real)
        fh = sftp.open("/upload/20260101-000000/partial.csv", "wb")
        fh.write(b"abc")
        fh.flush()
        wait_until(lambda: open_uploads.open_count() == 1, what="second upload open")
    wait_until(lambda: recorder.of(UploadAborted), what="UploadAborted when the session ends")
    finished = recorder.of(UploadFinished)[0]
    assert isinstance(finished, UploadFinished)
    assert finished.sha256 == hashlib.sha256(data).hexdigest()
    assert finished.size == finished.bytes == len(data)
    assert finished.path == "/upload/20260101-000000/users.csv" and finished.district == "typed"
    aborted = recorder.of(UploadAborted)[0]
    assert (
        isinstance(aborted, UploadAborted) and aborted.path == "/upload/20260101-000000/partial.csv"
    )
    assert open_uploads.open_count() == 0


# --- FileWriter, the write-behind under every upload --------------------------------------


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_writer_sequential_hash_matches_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    chunks = [os.urandom(32_768) for _ in range(64)]

    async def go() -> tuple[str, int]:
        writer = FileWriter(fd, batch=65_536, max_pending=100_000)
        offset = 0
        for chunk in chunks:
            await writer.write(offset, chunk)
            offset += len(chunk)
        await writer.flush()
        size = writer.finish_blocking()
        return writer.digest.hexdigest(size), size

    digest, size = _run(go())
    os.close(fd)
    assert path.read_bytes() == b"".join(chunks)
    assert digest == hashlib.sha256(b"".join(chunks)).hexdigest() and size == 64 * 32_768


def test_writer_out_of_order_writes_fall_back_to_rehash(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    async def go() -> tuple[str, int]:
        writer = FileWriter(fd)
        await writer.write(5, b"world")
        await writer.write(0, b"hello")
        await writer.wait_idle()  # nothing started: both chunks are below the batch size
        size = writer.finish_blocking()
        return writer.digest.hexdigest(size), size

    digest, size = _run(go())
    os.close(fd)
    assert path.read_bytes() == b"helloworld"
    assert digest == hashlib.sha256(b"helloworld").hexdigest() and size == 10


def test_stream_digest_hashes_in_background_and_falls_back(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from ingest.sftp.writer import StreamDigest

    data = os.urandom(5 * 1024 * 1024 + 7)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    with ThreadPoolExecutor(1) as pool:
        digest = StreamDigest(fd, pool)
        for start in range(0, len(data), 1024 * 1024):
            digest.written(start, min(start + 1024 * 1024, len(data)))
        assert digest.hexdigest(len(data)) == hashlib.sha256(data).hexdigest()
        resumed = StreamDigest(fd, pool)  # first write not at 0: whole-file hash at the end
        resumed.written(1000, len(data))
        assert resumed.hexdigest(len(data)) == hashlib.sha256(data).hexdigest()
    os.close(fd)


def test_writer_reports_write_errors_on_flush(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)  # every pwrite fails with EBADF

    async def go() -> None:
        writer = FileWriter(fd)
        await writer.write(0, b"data")
        await writer.flush()

    with pytest.raises(OSError):
        _run(go())
    os.close(fd)


def test_writer_batches_hand_offs_and_finishes_queued_data(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    async def go() -> tuple[int, tuple[str, int]]:
        writer = FileWriter(fd, batch=1_000_000)
        for i in range(10):
            await writer.write(i * 1000, bytes([i]) * 1000)
        jobs_started = int(writer._job is not None)
        await writer.wait_idle()
        size = writer.finish_blocking()
        return jobs_started, (writer.digest.hexdigest(size), size)

    jobs_started, (digest, size) = _run(go())
    os.close(fd)
    expected = b"".join(bytes([i]) * 1000 for i in range(10))
    assert jobs_started == 0  # 10 KB is below one batch: no thread hand-off at all
    assert path.read_bytes() == expected
    assert (digest, size) == (hashlib.sha256(expected).hexdigest(), 10_000)


def test_stream_digest_stops_at_shutdown(tmp_path: Path) -> None:
    import threading

    from ingest.sftp.writer import DigestAborted, StreamDigest

    path = tmp_path / "f"
    path.write_bytes(os.urandom(8 * 1024 * 1024))
    fd = os.open(path, os.O_RDONLY)
    stop = threading.Event()
    digest = StreamDigest(fd, None, stop)
    digest.written(1000, 8 * 1024 * 1024)  # not from 0: the whole file is hashed at the end
    stop.set()
    with pytest.raises(DigestAborted):
        digest.hexdigest(8 * 1024 * 1024)
    os.close(fd)


def test_buffer_budget_serves_waiters_in_order_and_returns_cancelled_ones() -> None:
    from ingest.sftp.budget import BufferBudget

    async def go() -> None:
        budget = BufferBudget(100)
        assert budget.try_take(60)
        assert not budget.try_take(60)  # does not fit
        first = asyncio.create_task(budget.take(50))
        second = asyncio.create_task(budget.take(10))  # fits, but waits behind the first
        cancelled = asyncio.create_task(budget.take(30))
        await asyncio.sleep(0)
        assert not first.done() and not second.done()
        cancelled.cancel()
        await asyncio.sleep(0)
        budget.give_back(60)  # from a worker thread in the server; here on the loop
        await asyncio.wait_for(asyncio.gather(first, second), 1)
        assert budget.used == 60 and budget.waits == 3
        budget.give_back(60)
        assert budget.used == 0
        assert budget.try_take(500)  # alone, one write larger than the budget goes through
        assert budget.peak == 500

    _run(go())
