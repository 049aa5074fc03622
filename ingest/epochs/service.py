"""The epoch layer: find ready epochs and hand each to the pipeline exactly once.

Signals that something may have changed come from three sources, all reduced to "look at
district D (epoch E) again": the SFTP layer's events (fast path), a watchdog observer
(files that arrive by other means, :mod:`~ingest.epochs.watcher`), and a periodic
reconcile scan (lost events, startup). Each district is looked at by one task at a time,
districts side by side. A look runs :func:`~ingest.epochs.scan.judge_epoch` on a fresh
listing; a ready epoch is frozen, recorded in the ledger as ``received`` and handed to
:class:`~ingest.epochs.pipeline.EpochPipeline`, which processes and publishes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from ingest.config import Config
from ingest.epochs import files as epoch_files
from ingest.epochs.handoff import FileInfo
from ingest.epochs.ledger import EpochRecord, Ledger
from ingest.epochs.names import MARKER, PROCESSED, UPLOAD, auto_target
from ingest.epochs.pipeline import EpochPipeline, write_index
from ingest.epochs.policy import EpochPolicy, EpochRegistry
from ingest.epochs.scan import Verdict, judge_epoch, list_upload, read_epoch
from ingest.epochs.status import StatusBoard
from ingest.epochs.watcher import UploadWatcher
from ingest.logging import get_logger
from ingest.sftp import (
    PathRenamed,
    RequestRefused,
    SessionClosed,
    SFTPEvent,
    UploadAborted,
    UploadFinished,
    UploadRegistry,
    UploadStarted,
)
from ingest.store.db import Database

T = TypeVar("T")
# A change admitted by the SFTP layer while an epoch was being judged: look again after.
CHANGE_RECHECK = 0.2


class FinishedFiles:
    """Files our SFTP server saw closed explicitly (size, sha256, when), kept by directory
    so that every lookup, rename and clean-up costs what the one directory holds, not what
    all districts have pending."""

    def __init__(self) -> None:
        self._by_dir: dict[Path, dict[str, tuple[int, str, float]]] = {}

    def add(self, path: Path, size: int, sha256: str, at: float) -> None:
        self._by_dir.setdefault(path.parent, {})[path.name] = (size, sha256, at)

    def get(self, path: Path) -> tuple[int, str, float] | None:
        return self._by_dir.get(path.parent, {}).get(path.name)

    def pop(self, path: Path) -> tuple[int, str, float] | None:
        return self._by_dir.get(path.parent, {}).pop(path.name, None)

    def sizes_in(self, directory: Path) -> dict[Path, int]:
        return {directory / name: v[0] for name, v in self._by_dir.get(directory, {}).items()}

    def renamed(self, old: Path, new: Path) -> None:
        entry = self.pop(old)
        if entry is not None:  # a file
            self._by_dir.setdefault(new.parent, {})[new.name] = entry
        elif old in self._by_dir:  # a directory (epochs hold no subdirectories)
            self._by_dir[new] = self._by_dir.pop(old)

    def forget_dir(self, directory: Path) -> None:
        self._by_dir.pop(directory, None)

    def prune(self, before: float) -> None:
        for directory, entries in list(self._by_dir.items()):
            for name in [n for n, v in entries.items() if v[2] < before]:
                del entries[name]
            if not entries:
                del self._by_dir[directory]


class EpochService:
    """Implements the SFTP layer's event handler and upload policy; owns the epoch flow."""

    def __init__(
        self,
        config: Config,
        database: Database,
        uploads: UploadRegistry,
        on_district: Callable[[str], None] | None = None,
    ) -> None:
        """``on_district(name)``: blocking, in a worker thread, for every district at the
        start and for each new one (the layer above writes its guide files)."""
        self.config = config
        self._on_district = on_district
        self.settings = config.epochs
        # Absolute and free of links, like the SFTP layer's paths (Chroot resolves its
        # root the same way): paths from both sides must compare equal.
        self.districts_dir = Path(os.path.realpath(config.districts_dir))
        self.archive_dir = Path(os.path.realpath(config.archive_dir))
        self.staging_dir = Path(os.path.realpath(config.staging_dir))
        self.ledger = Ledger(database)
        # Shared with the SFTP layer: what is open for writing, what was cut off.
        self.uploads = uploads
        self.log = get_logger("ingest.epochs")
        self.registry = EpochRegistry()
        self.policy = EpochPolicy(
            self.registry, self.settings.loose_files, self.settings.max_clock_skew, self.log
        )
        self._io_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="epoch-io")
        # Hashing files the SFTP layer did not see written (a shared volume, a restart):
        # seconds per GiB, so never in the pool that lists every district's folders.
        self._hash_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="epoch-hash")
        self._stop_hashing = threading.Event()  # set by stop(): hashing ends within a chunk
        # What each district reads about itself in its root (STATUS.txt, status.json).
        self.status = StatusBoard(self.districts_dir, self._io_pool)
        self.pipeline = EpochPipeline(
            config,
            database,
            self.ledger,
            districts_dir=self.districts_dir,
            archive_dir=self.archive_dir,
            status=self.status,
            on_published=self._published,
        )
        self._finished = FinishedFiles()
        self._dirty: defaultdict[str, set[str | None]] = defaultdict(set)
        self._wake = asyncio.Event()
        # One evaluation at a time per district, districts side by side: one district's
        # slow look (hashing a big file) never holds up another's.
        self._evaluating: dict[str, asyncio.Task[None]] = {}
        self._noticed: set[tuple[str, str, str]] = set()  # (district, path, code) logged once
        self._detected: set[tuple[str, str]] = set()
        self._stale: set[tuple[str, str]] = set()
        self._promoted: set[tuple[str, str]] = set()  # epochs made from _auto.csv
        self._with_marker: set[tuple[str, str]] = set()  # epochs whose COMPLETE was seen
        self._tasks: list[asyncio.Task[None]] = []
        self._watcher: UploadWatcher | None = None
        self._reconcile_now = asyncio.Event()  # inotify lost events: look everywhere

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        recovered = await self._io(self.ledger.recover)
        for district_dir in await self._io(self._district_dirs):
            district = district_dir.name
            self.registry.known[district] = await self._io(self.ledger.known_names, district)
            staged = await self._io(
                epoch_files.finish_staged,
                district_dir / UPLOAD,
                self.staging_dir / district,
                self.registry.known[district].__contains__,
            )
            for name in staged:
                self._promoted.add((district, name))
                self.log.info("epoch.promoted", district=district, epoch=name, recovered=True)
            await self._load_status(district)
            if self._on_district is not None:
                await self._io(self._on_district, district)
        for record in await self._io(self.ledger.pending):
            self.registry.submitted[record.district].add(record.name)
            self.pipeline.enqueue(record.district, record.name)
        if recovered:
            self.log.warning("epoch.recovered", epochs=recovered)
        loop = asyncio.get_running_loop()
        self._watcher = UploadWatcher(
            self.districts_dir,
            loop,
            self._fs_event,
            polling=self.settings.observer == "polling",
            interval=self.settings.polling_interval,
            max_watches=self.settings.max_watches,
            max_watches_per_district=self.settings.max_watches_per_district,
            on_failure=self._watch_failed,
            on_new_district=self._new_district,
            on_overflow=self._reconcile_now.set,
        )
        await self._io(self._watcher.start)
        for district_dir in await self._io(self._district_dirs):
            await self._io(self._watcher.watch_district, district_dir.name)
        self._tasks = [
            loop.create_task(self._evaluator()),
            loop.create_task(self._reconciler()),
            loop.create_task(self._ledger_watch()),
        ]

    def stop_starting(self) -> None:
        """Shutdown has begun: start no further epoch (see EpochPipeline.stop_starting)."""
        self.pipeline.stop_starting()

    async def stop(self) -> None:
        """Stop looking for new work; let a running processor finish; leave the rest to the
        next start (the ledger and the file layout make that exact)."""
        self.pipeline.stop_starting()
        self._stop_hashing.set()
        if self._watcher is not None:
            await self._io(self._watcher.stop, 5)
        tasks = [*self._tasks, *self._evaluating.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pipeline.stop()
        self._hash_pool.shutdown(wait=True)
        self._io_pool.shutdown(wait=True)

    def archive_twin(self, path: Path, st: os.stat_result) -> bool:
        """Worker thread: whether the other name of this published file is its copy in the
        archive (epochs archived before the archive held private copies share the inode);
        the SFTP layer serves no other file with two names."""
        try:
            district, zone, epoch, name = path.relative_to(self.districts_dir).parts
            twin = os.stat(self.archive_dir / district / epoch / name)
        except (ValueError, OSError):
            return False
        return zone == PROCESSED and (twin.st_dev, twin.st_ino) == (st.st_dev, st.st_ino)

    async def _load_status(self, district: str) -> None:
        """The status files after a start: the last applied epoch and the held ones."""
        applied = await self._io(self.ledger.last_applied, district)
        if applied is not None and applied.outcome is not None:
            self.status.applied(
                district, applied.name, applied.outcome.summary, applied.finished_at or ""
            )
        for held in await self._io(self.ledger.list_epochs, district, "held"):
            message = held.outcome.message if held.outcome else "held for an operator"
            self.status.epoch(district, held.name, "held", "held", message)
        self.status.flush_now(district)
        await self._io(write_index, self.districts_dir / district, self.ledger)

    def _published(self, district: str, name: str) -> None:
        """The pipeline moved the epoch out of /upload/: forget what was only needed while
        it was there."""
        self.status.gone(district, name)
        self.registry.submitted[district].discard(name)
        self._finished.forget_dir(self._upload_dir(district) / name)
        prefix = f"/upload/{name}"
        self._noticed = {
            n
            for n in self._noticed
            if not (n[0] == district and (n[1] == prefix or n[1].startswith(prefix + "/")))
        }
        for seen in (self._detected, self._stale, self._promoted, self._with_marker):
            seen.discard((district, name))
        if self._watcher is not None:
            asyncio.get_running_loop().run_in_executor(
                self._io_pool, self._watcher.forget_epoch, district, name
            )

    def _new_district(self, district: str) -> None:
        self.mark_dirty(district, None)
        self.status.flush_now(district)  # its status files exist from the start
        # index.json too: a script can tell "no such file" from a failed get only by
        # guessing, so the file is always there (empty until the first publish).
        asyncio.get_running_loop().run_in_executor(
            self._io_pool, write_index, self.districts_dir / district, self.ledger
        )
        if self._on_district is not None:
            asyncio.get_running_loop().run_in_executor(self._io_pool, self._on_district, district)
        if self._watcher is not None:
            self._watch(self._watcher.watch_district, district, None)

    def _watch(self, add: Callable[..., bool], district: str, epoch: str | None) -> None:
        """Add a watch in a worker thread, then look once more: what happened before the
        watch existed is in no event."""
        args = (district,) if epoch is None else (district, epoch)
        added = asyncio.get_running_loop().run_in_executor(self._io_pool, add, *args)

        def look_again(future: asyncio.Future[bool]) -> None:
            if not future.cancelled() and future.exception() is None and future.result():
                self.mark_dirty(district, epoch)

        added.add_done_callback(look_again)

    def _watch_failed(self, district: str, error: str) -> None:
        """Worker thread (the watcher): the district is polled from now on (the caller
        looks at it once more: the poller's first snapshot holds no events)."""
        self.log.warning(
            "observer.watch_failed",
            district=district,
            error=error,
            fallback="polling",
            interval=self.settings.polling_interval,
        )

    def _district_dirs(self) -> list[Path]:
        root = self.districts_dir
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    async def _io(self, fn: Callable[..., T], *args: Any, pool: Executor | None = None) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool or self._io_pool, fn, *args)

    # --- signals ---------------------------------------------------------------------------

    def handle_sftp_event(self, event: SFTPEvent) -> None:
        if isinstance(event, UploadFinished):
            self._finished.add(event.real_path, event.size, event.sha256, time.time())
            parts = event.path.strip("/").split("/")
            if len(parts) == 2 and parts[0] == UPLOAD and auto_target(parts[1]) is not None:
                self.registry.waiting_auto[event.district].add(parts[1])
            self._touched(event.district, event.path)
        elif isinstance(event, UploadStarted):
            epoch = self._epoch_of(event.path)
            if epoch is not None:
                self.pipeline.upload_started(event.district, epoch, event.session_id)
        elif isinstance(event, UploadAborted):
            self._finished.pop(event.real_path)
            self._touched(event.district, event.path)
        elif isinstance(event, PathRenamed):
            self._finished.renamed(event.old_real_path, event.new_real_path)
            self._touched(event.district, event.old_path)
            self._touched(event.district, event.new_path)
        elif isinstance(event, SessionClosed):
            self.pipeline.session_closed(event.session_id)
        elif isinstance(event, RequestRefused):
            self.status.refused(event.district, event.code, event.path, event.message)

    @staticmethod
    def _epoch_of(path: str) -> str | None:
        parts = path.strip("/").split("/")
        return parts[1] if len(parts) >= 3 and parts[0] == UPLOAD else None

    def _touched(self, district: str, path: str) -> None:
        """Something changed at ``path`` (as the district sees it): look again if it can
        make a difference. Inside an epoch that only happens once it has its marker, so
        the files of an epoch being uploaded cost no look each."""
        parts = path.strip("/").split("/")
        if len(parts) < 2 or parts[0] != UPLOAD:
            return
        if len(parts) == 2:
            self.mark_dirty(district, None)
            return
        epoch = parts[1]
        if parts[-1] == MARKER:
            self._with_marker.add((district, epoch))
        if (district, epoch) in self._with_marker:
            self.mark_dirty(district, epoch)

    def _fs_event(self, path: Path, is_directory: bool) -> None:
        """From the observer: files our SFTP server is writing or has closed are already
        covered by its events; everything else (other writers) is looked at."""
        if not is_directory and (
            self.uploads.is_open(path) or self._finished.get(path) is not None
        ):
            return
        parts = path.relative_to(self.districts_dir).parts
        district, rest = parts[0], parts[2:]
        if is_directory and len(rest) == 1:
            self.mark_dirty(district, rest[0])  # an epoch directory appeared or moved
            if self._watcher is not None:
                self._watch(self._watcher.watch_epoch, district, rest[0])
        else:
            self._touched(district, "/" + "/".join(parts[1:]))

    def mark_dirty(self, district: str, epoch: str | None) -> None:
        self._dirty[district].add(epoch)
        self._wake.set()

    # --- finding ready epochs ------------------------------------------------------------------

    async def _reconciler(self) -> None:
        """The periodic full look (also the first one at startup); the interval is a timer,
        not synchronisation."""
        while True:
            for district_dir in await self._io(self._district_dirs):
                if self._watcher is not None:  # new districts; epochs that left upload/
                    await self._io(self._watcher.watch_district, district_dir.name)
                self.mark_dirty(district_dir.name, None)
            for record in await self._io(self.ledger.pending):
                self._take(record)  # retries
            forget_before = time.time() - self.settings.stale_after
            self._finished.prune(forget_before)  # files that never became part of an epoch
            with contextlib.suppress(TimeoutError):  # the interval is a timer
                await asyncio.wait_for(
                    self._reconcile_now.wait(), timeout=self.settings.reconcile_interval
                )
            self._reconcile_now.clear()

    def _take(self, record: EpochRecord) -> None:
        self.registry.submitted[record.district].add(record.name)
        self.registry.known[record.district].add(record.name)
        self.pipeline.enqueue(record.district, record.name)

    async def _ledger_watch(self) -> None:
        """Operators' actions (approve, discard, reprocess, retire, force-apply) change the
        ledger from another process: an epoch that they changed is taken within
        ``ledger_poll_interval``, not at the next reconcile. Only changes are taken, so
        an epoch whose processing keeps failing is retried at the reconcile's pace."""
        seen: dict[tuple[str, str], tuple[Any, ...]] = {}
        while True:
            await asyncio.sleep(self.settings.ledger_poll_interval)  # a timer
            current = {}
            for record in await self._io(self.ledger.pending):
                key = (record.district, record.name)
                mark = (record.state, record.finished_at, record.approved, record.retired_at)
                current[key] = mark
                if seen.get(key) != mark:
                    self._take(record)
            seen = current

    async def _evaluator(self) -> None:
        """Start a look at each district with something new, unless one is running: that
        district's new targets wait for it (and wake this loop when it ends)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            for district in [d for d in self._dirty if d not in self._evaluating]:
                targets = self._dirty.pop(district)
                task = loop.create_task(self._evaluate(district, targets))
                self._evaluating[district] = task
                task.add_done_callback(functools.partial(self._evaluated, district))

    def _evaluated(self, district: str, _task: asyncio.Task[None]) -> None:
        del self._evaluating[district]
        if self._dirty.get(district):
            self._wake.set()

    async def _evaluate(self, district: str, targets: set[str | None]) -> None:
        try:
            if None in targets:
                targets |= await self._look_at_upload(district)
            for epoch in sorted(t for t in targets if t is not None):
                await self._look_at_epoch(district, epoch)
        except epoch_files.HashingStopped:
            return  # shutting down: the next start looks again
        except Exception as exc:  # one district's trouble must not stop the others
            self.log.error(
                "epoch.scan_failed",
                district=district,
                error=repr(exc),
                traceback=traceback.format_exc(),
            )

    def _upload_dir(self, district: str) -> Path:
        return self.districts_dir / district / UPLOAD

    async def _look_at_upload(self, district: str) -> set[str | None]:
        """The top of /upload/: promote settled _auto.csv files, notice gotchas."""
        upload_dir = self._upload_dir(district)
        listing = await self._io(list_upload, upload_dir)
        for name in listing.invalid_dirs:
            self._notice(
                district,
                f"/upload/{name}",
                "epoch_name_invalid",
                "directory is not named YYYYMMDD-HHMMSS and is not processed",
            )
        for seen in listing.loose_files:
            self._notice(
                district,
                f"/upload/{seen.name}",
                "epoch_missing",
                "file is outside an epoch directory and is not processed",
            )
        await self._maybe_promote(district, upload_dir, listing.auto_files, listing.temp_files)
        self.status.present(district, set(listing.epochs))
        # An _auto.csv removed or renamed away no longer waits.
        self.registry.waiting_auto[district] &= {f.name for f in listing.auto_files}
        return {e for e in listing.epochs if not self.registry.is_submitted(district, e)}

    async def _maybe_promote(
        self, district: str, upload_dir: Path, autos: list[Any], temps: list[Any]
    ) -> None:
        for seen in [f for f in autos if self.uploads.is_incomplete(f.path)]:
            self._notice(
                district,
                f"/upload/{seen.name}",
                "upload_incomplete",
                f"{seen.name} was not completely uploaded (the upload was cut off); it is "
                "not processed: upload it again",
            )
        autos = [f for f in autos if not self.uploads.is_incomplete(f.path)]
        if not autos:
            return
        now = time.time()
        open_paths = set(self.uploads.open_under(upload_dir))
        if any(f.path in open_paths for f in [*autos, *temps]):
            return  # another _auto.csv is still arriving: it joins the same epoch
        settle_until = 0.0
        for seen in autos:
            finished = self._finished.get(seen.path)
            if finished is not None and finished[0] == seen.size:
                settle_until = max(settle_until, finished[2] + self.settings.auto_settle)
            else:
                settle_until = max(
                    settle_until,
                    seen.mtime + max(self.settings.auto_settle, self.settings.quiet_period),
                )
        if settle_until > now:
            self._recheck(district, None, settle_until - now)
            return
        known = set(self.registry.known[district])
        # Frozen in the same loop step as the look for open files above: from here until
        # they are moved, the SFTP policy refuses any change to these files.
        names = {f.name for f in autos}
        self.registry.promoting[district] |= names
        try:
            name, moved = await self._io(self._promote_blocking, district, autos, known)
        finally:
            self.registry.promoting[district] -= names
        self.registry.waiting_auto[district] -= names
        for old, new in moved.items():
            self._finished.renamed(old, new)
        self._finished.add(upload_dir / name / MARKER, 0, epoch_files.EMPTY_SHA256, time.time())
        self._promoted.add((district, name))
        self.log.info(
            "epoch.promoted",
            district=district,
            epoch=name,
            files=sorted(p.name for p in moved.values()),
        )
        self.mark_dirty(district, name)

    def _promote_blocking(
        self, district: str, autos: list[Any], known: set[str]
    ) -> tuple[str, dict[Path, Path]]:
        """Worker thread: the new epoch's name sorts after the district's newest one."""
        return epoch_files.promote(
            self._upload_dir(district),
            self.staging_dir / district,
            [f.path for f in autos],
            known.__contains__,
            self.ledger.latest_name(district),
            timedelta(seconds=self.settings.max_clock_skew),
        )

    def _recheck(self, district: str, epoch: str | None, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay + 0.05, self.mark_dirty, district, epoch)

    def _notice(self, district: str, path: str, code: str, message: str) -> None:
        if (district, path, code) not in self._noticed:
            self._noticed.add((district, path, code))
            self.log.warning(
                "epoch.notice", district=district, path=path, code=code, message=message
            )
            self.status.refused(district, code, path, message)

    async def _look_at_epoch(self, district: str, name: str) -> None:
        if self.registry.is_submitted(district, name) or name in self.registry.known[district]:
            return
        epoch_dir = self._upload_dir(district) / name
        contents = await self._io(read_epoch, epoch_dir)
        if contents.marker is None:
            self._with_marker.discard((district, name))
        else:
            self._with_marker.add((district, name))
        if not contents.files and contents.marker is None and not contents.temp_files:
            return
        if (district, name) not in self._detected:
            self._detected.add((district, name))
            self.log.info(
                "epoch.detected",
                district=district,
                epoch=name,
                files=len(contents.files),
                marker=contents.marker is not None,
            )
        for misnamed in contents.misnamed_markers:
            self._notice(
                district,
                f"/upload/{name}/{misnamed}",
                "marker_misnamed",
                f"marker must be named exactly {MARKER}; the epoch waits for it",
            )
        trusted = self._finished.sizes_in(epoch_dir)
        marker_closed = self._finished.get(epoch_dir / MARKER)
        verdict = judge_epoch(
            name,
            contents,
            open_paths=set(self.uploads.open_under(epoch_dir)),
            trusted_sizes=trusted,
            incomplete=set(self.uploads.incomplete_under(epoch_dir)),
            now=time.time(),
            quiet_period=self.settings.quiet_period,
            stale_after=self.settings.stale_after,
            marker_settle=self.settings.marker_settle,
            marker_seen_at=marker_closed[2] if marker_closed else None,
        )
        if not verdict.ready:
            self.status.waiting(district, name, verdict.reason)
        if verdict.reason == "stale":
            if (district, name) not in self._stale:
                self._stale.add((district, name))
                self.log.warning(
                    "epoch.stale",
                    district=district,
                    epoch=name,
                    code="marker_missing",
                    message=f"epoch has files but no {MARKER} after "
                    f"{self.settings.stale_after:.0f} s; it is not processed until {MARKER} "
                    "is uploaded",
                )
            return
        if verdict.reason == "files_incomplete":
            for f in contents.files:
                if self.uploads.is_incomplete(f.path):
                    self._notice(
                        district,
                        f"/upload/{name}/{f.name}",
                        "upload_incomplete",
                        f"{f.name} was not completely uploaded (the session ended mid-file); "
                        "upload it again to complete the epoch",
                    )
        if not verdict.ready:
            if verdict.recheck_at is not None:
                self._recheck(district, name, verdict.recheck_at - time.time())
            return
        # Freeze it now, on the loop: the SFTP layer checks the policy and registers a
        # change in one step there too, so every change is either refused from now on or
        # already registered. One that was admitted while we were looking (its file I/O
        # may not have happened yet) defers the epoch: look again once it is over.
        self.registry.submitted[district].add(name)
        if self.uploads.open_under(epoch_dir):
            self.registry.submitted[district].discard(name)
            self._recheck(district, name, CHANGE_RECHECK)
            return
        origin = "auto" if (district, name) in self._promoted else "upload"
        known = {f.path: self._finished.get(f.path) for f in verdict.files}
        try:
            # The listing judged above was read before the freeze: a change that was
            # over by then (a rename, a last write and close) is only seen by a second
            # one, which nothing over SFTP can change any more.
            if await self._io(read_epoch, epoch_dir) != contents:
                self.registry.submitted[district].discard(name)
                self.mark_dirty(district, name)
                return
            hashing = any(
                not (k and k[0] == f.size and k[1])
                for f, k in ((f, known.get(f.path)) for f in verdict.files)
            )
            infos, inserted = await self._io(
                self._receive_blocking,
                district,
                name,
                origin,
                verdict,
                known,
                pool=self._hash_pool if hashing else self._io_pool,
            )
        except BaseException:
            self.registry.submitted[district].discard(name)
            self._recheck(district, name, self.settings.reconcile_interval)
            raise
        self.registry.known[district].add(name)
        if not inserted:
            return
        self.status.waiting(district, name, "received")
        self.log.info(
            "epoch.ready",
            district=district,
            epoch=name,
            files=[f.name for f in infos],
            warnings=[w.code for w in verdict.warnings],
            **(
                {"since_marker_ms": round((time.time() - marker_closed[2]) * 1000, 1)}
                if marker_closed
                else {}
            ),
        )
        self.pipeline.enqueue(district, name)

    def _receive_blocking(
        self,
        district: str,
        name: str,
        origin: str,
        verdict: Verdict,
        known: dict[Path, tuple[int, str, float] | None],
    ) -> tuple[list[FileInfo], bool]:
        """Worker thread: the files' digests (from the SFTP layer when it saw them, else
        computed), then the ledger record."""
        infos = []
        for f in verdict.files:
            finished = known.get(f.path)
            if finished and finished[0] == f.size and finished[1]:
                digest = finished[1]
            else:
                self.log.info(
                    "epoch.hashing", district=district, epoch=name, file=f.name, size=f.size
                )
                digest = epoch_files.sha256_file(f.path, self._stop_hashing)
            infos.append(FileInfo(f.name, f.size, digest))
        inserted = self.ledger.receive(district, name, origin, infos, list(verdict.warnings))
        return infos, inserted
