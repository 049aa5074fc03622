"""Processing ready epochs: exactly once each, per district in name order, then publishing.

The detector (:mod:`ingest.epochs.service`) records an epoch as ``received`` in the ledger
and hands it over with :meth:`EpochPipeline.enqueue`. Each district has one worker that
takes its queue in name order: claim (ledger) -> archive copy, verified against the
ledger -> processor and final state in one transaction (:mod:`ingest.epochs.isolation`)
-> publish to ``/upload-processed/`` once the sessions that uploaded the epoch are gone
(at most ``epochs.publish_linger``; clients stat and setstat their files after the close).
A crash at any step is redone from the ledger's state at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ingest.atomic import replace_text
from ingest.config import Config
from ingest.epochs import files as epoch_files
from ingest.epochs.handoff import ClaimedEpoch, Finding, Outcome
from ingest.epochs.isolation import ProcessorDied, ProcessorRunner
from ingest.epochs.ledger import EpochRecord, Ledger
from ingest.epochs.names import PROCESSED, UPLOAD
from ingest.epochs.reports import (
    ERRORS_CSV,
    INDEX_JSON,
    REPORT_JSON,
    REPORT_TXT,
    render_errors_csv,
    render_index,
    render_json,
    render_text,
)
from ingest.epochs.status import StatusBoard
from ingest.logging import get_logger
from ingest.store.db import Database

T = TypeVar("T")


def write_index(root: Path, ledger: Ledger) -> None:
    """Blocking: the district's ``/index.json`` as the ledger has it now."""
    if root.is_dir():
        replace_text(root / INDEX_JSON, render_index(root.name, ledger.list_epochs(root.name)))


class EpochPipeline:
    """Queues, workers and publishing of received epochs."""

    def __init__(
        self,
        config: Config,
        database: Database,
        ledger: Ledger,
        *,
        districts_dir: Path,
        archive_dir: Path,
        status: StatusBoard,
        on_published: Callable[[str, str], None],
    ) -> None:
        """``on_published(district, epoch)``: on the event loop, once the epoch left
        ``/upload/`` (the detector forgets what it knew of it)."""
        self.settings = config.epochs
        self.districts_dir = districts_dir
        self.archive_dir = archive_dir
        self.database = database
        self.ledger = ledger
        self.status = status
        self.runner = ProcessorRunner(config, database, ledger)
        self.log = get_logger("ingest.epochs")
        # Claims and ledger reads: quick, and never queued behind the detector's listings
        # (a reconcile looks at every district at once).
        self._io_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="epoch-claim")
        self._on_published = on_published
        # Publishing comes in bursts (a session that uploaded many epochs closes); its own
        # threads keep detection and claims of other districts from queueing behind it.
        self._publish_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="epoch-pub")
        # Threads that wait for the processor (in a child process by default, see
        # isolation.py); their own pool keeps file scans from queueing behind them.
        self._process_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="epoch-proc")
        self._queues: defaultdict[str, set[str]] = defaultdict(set)
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._publishing: set[asyncio.Task[None]] = set()
        self._processing: set[asyncio.Task[bool]] = set()  # running processors
        self._in_flight: set[tuple[str, str]] = set()  # queued, processing or publishing
        # The sessions that uploaded into each epoch: publishing lingers for them.
        self._sessions: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
        self._sessions_gone: dict[tuple[str, str], asyncio.Event] = {}
        self.stopping = False

    # --- the detector's side -----------------------------------------------------------

    def upload_started(self, district: str, epoch: str, session_id: str) -> None:
        self._sessions[(district, epoch)].add(session_id)

    def session_closed(self, session_id: str) -> None:
        for key, sessions in list(self._sessions.items()):
            sessions.discard(session_id)
            if not sessions:
                del self._sessions[key]
                if key in self._sessions_gone:
                    self._sessions_gone[key].set()

    def stop_starting(self) -> None:
        """Shutdown has begun: start no further epoch. A processor that dies from now on
        was most likely hit by a signal meant for the daemon; its epoch is left to the
        next start (``epoch.interrupted``), not failed."""
        self.stopping = True

    async def stop(self) -> None:
        """Let a running processor finish (and log its outcome); leave the rest to the
        next start."""
        self.stopping = True
        if self._processing:
            self.log.info("epochs.draining", running=len(self._processing))
            await asyncio.gather(*self._processing, return_exceptions=True)
        workers = [*self._workers.values(), *self._publishing]
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        self._process_pool.shutdown(wait=True)
        await self._io(self.runner.shutdown)
        self._publish_pool.shutdown(wait=True)
        self._io_pool.shutdown(wait=True)

    def _error(self, district: str, name: str, exc: Exception) -> None:
        """An unexpected error; the reconciler retries from the ledger's state."""
        self.log.error(
            "epoch.error",
            district=district,
            epoch=name,
            error=repr(exc),
            traceback=traceback.format_exc(),
        )

    async def _io(self, fn: Callable[..., T], *args: Any, pool: Executor | None = None) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool or self._io_pool, fn, *args)

    # --- processing ----------------------------------------------------------------------

    def enqueue(self, district: str, name: str) -> None:
        """Queue an epoch unless it is already on its way (queued, processing, publishing)."""
        if (district, name) in self._in_flight:
            return
        self._in_flight.add((district, name))
        self._queues[district].add(name)
        worker = self._workers.get(district)
        if worker is None or worker.done():
            self._workers[district] = asyncio.get_running_loop().create_task(
                self._district_worker(district)
            )

    async def _district_worker(self, district: str) -> None:
        queue = self._queues[district]
        while queue and not self.stopping:
            name = min(queue)  # per district, in name order
            queue.discard(name)
            try:
                publish = await self._process(district, name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the reconciler retries from the ledger's state
                self._in_flight.discard((district, name))
                self._error(district, name, exc)
                continue
            if not publish:
                self._in_flight.discard((district, name))
                continue
            # Publishing may linger for the uploading sessions; the next epoch need not wait.
            task = asyncio.get_running_loop().create_task(self._publish(district, name))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    async def _process(self, district: str, name: str) -> bool:
        """Claim and process if still waiting; True when the epoch is ready to publish."""
        claimed = await self._io(self._claim_blocking, district, name)
        if claimed is None:
            return False
        state, record = claimed
        if state == "superseded":
            self.log.warning("epoch.superseded", district=district, epoch=name)
            message = record.outcome.message if record.outcome else "a newer upload was applied"
            self.status.epoch(district, name, "superseded", "superseded", message)
        elif state == "processing":
            self.log.info("epoch.claimed", district=district, epoch=name, attempt=record.attempts)
            # Shielded, and awaited by stop(): a shutdown lets the processor finish and log
            # its outcome (or epoch.interrupted) instead of cancelling the wait for it.
            task = asyncio.get_running_loop().create_task(self._run_processor(record))
            self._processing.add(task)
            task.add_done_callback(self._processing.discard)
            return await asyncio.shield(task)
        return True

    def _claim_blocking(self, district: str, name: str) -> tuple[str, EpochRecord] | None:
        """Worker thread: (new state, record) when there is something left to do."""
        record = self.ledger.get(district, name)
        if record is None or record.published_at:
            return None
        if record.state not in ("received", "processing"):
            return record.state, record  # finished before a restart: publish only
        state = self.ledger.claim(district, name, self.settings.max_clock_skew)
        if state is None:
            return None
        record = self.ledger.get(district, name)
        return (state, record) if record is not None else None

    async def _run_processor(self, record: EpochRecord) -> bool:
        """Process a claimed epoch; False when it has no final state to publish (it was
        interrupted by the shutdown and stays ``processing`` for the next start)."""
        started = time.monotonic()
        outcome, error = await asyncio.get_running_loop().run_in_executor(
            self._process_pool, self._archive_and_apply, record
        )
        if error is not None and "interrupted" in error:
            self.log.warning(
                "epoch.interrupted", district=record.district, epoch=record.name, **error
            )
            return False
        if error is not None:
            self.log.error("epoch.failed", district=record.district, epoch=record.name, **error)
            self._tell(record, outcome)
            return True
        level = "info" if outcome.status == "applied" else "warning"
        getattr(self.log, level)(
            f"epoch.{outcome.status}",
            district=record.district,
            epoch=record.name,
            processor=self.runner.processor.name,
            summary=outcome.summary,
            errors=len(outcome.errors),
            warnings=len(outcome.warnings),
            codes=sorted({f.code for f in outcome.errors}),
            duration=round(time.monotonic() - started, 3),
        )
        self._tell(record, outcome)
        return True

    def _tell(self, record: EpochRecord, outcome: Outcome) -> None:
        """The district's status files: the last applied epoch, or one not applied."""
        district, name = record.district, record.name
        if outcome.status == "applied":
            self.status.applied(district, name, outcome.summary)
            return
        code = outcome.errors[0].code if outcome.errors else outcome.status
        report = f"/{PROCESSED}/{name}/report.txt"
        message = f"{outcome.message or outcome.status}; see {report}"
        self.status.epoch(district, name, outcome.status, code, message)

    def _archive_and_apply(self, record: EpochRecord) -> tuple[Outcome, dict[str, Any] | None]:
        """Worker thread: the immutable copy, then the processor's effects and the final
        state in one transaction. A failure is recorded as ``failed`` (nothing applied)."""
        district, name = record.district, record.name
        archive_dir = self.archive_dir / district / name
        # Still in /upload/, or already published without having been archived (an epoch
        # superseded at its claim, then force-applied or reprocessed).
        source = self.districts_dir / district / UPLOAD / name
        if not source.is_dir():
            source = self.districts_dir / district / PROCESSED / name
        try:
            epoch_files.archive(source, archive_dir, record.files)
        except FileNotFoundError as exc:  # e.g. reprocess of an epoch whose archive is gone
            outcome = Outcome(
                "failed",
                errors=(
                    Finding(
                        "epoch_files_missing",
                        f"the epoch's files are no longer on the server ({exc.filename}); upload "
                        "them again as a new epoch",
                    ),
                ),
                message="files missing",
            )
            self.ledger.fail(district, name, outcome)
            return outcome, {"error": repr(exc)}
        except epoch_files.ArchiveMismatch as mismatch:
            expected = mismatch.expected
            outcome = Outcome(
                "failed",
                errors=(
                    Finding(
                        "archive_mismatch",
                        f"the server's copy of {expected.name} is not the file that was "
                        f"received ({expected.size} bytes, sha256 {expected.sha256}); nothing "
                        "was applied. Upload the data again as a new epoch.",
                        file=expected.name,
                    ),
                ),
                message="archived file does not match the ledger",
            )
            self.ledger.fail(district, name, outcome)
            return outcome, {
                "code": "archive_mismatch",
                "file": expected.name,
                "expected_size": expected.size,
                "expected_sha256": expected.sha256,
                "size": mismatch.size,
                "sha256": mismatch.sha256,
            }
        epoch = ClaimedEpoch(
            district,
            name,
            archive_dir,
            record.files,
            "auto" if record.origin == "auto" else "upload",
            record.warnings,
            record.approved,
            record.claimed_at,
        )
        try:
            outcome = self.runner.run(epoch)
        except Exception as exc:  # the transaction rolled back: nothing of it was applied
            if isinstance(exc, ProcessorDied) and self.stopping:
                # e.g. a signal to the whole process group: the next start redoes it
                return Outcome("failed", message="interrupted"), {"interrupted": repr(exc)}
            detail = str(exc) if isinstance(exc, ProcessorDied) else repr(exc)
            outcome = Outcome(
                "failed",
                errors=(
                    Finding("processor_error", f"the server failed while processing: {detail}"),
                ),
                message="server error",
            )
            self.ledger.fail(district, name, outcome)
            return outcome, {"error": repr(exc), "traceback": traceback.format_exc()}
        return outcome, None

    async def _publish(self, district: str, name: str) -> None:
        try:
            await self._publish_when_idle(district, name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the reconciler retries: the ledger says unpublished
            self._error(district, name, exc)
        finally:
            self._in_flight.discard((district, name))

    def _publish_blocking(self, district: str, name: str) -> tuple[EpochRecord, Path]:
        record = self.ledger.get(district, name)
        assert record is not None
        district_root = self.districts_dir / district
        reports = {
            REPORT_JSON: render_json(record),
            REPORT_TXT: render_text(record),
            ERRORS_CSV: render_errors_csv(record),
            **self.runner.processor.reports(self.database, record),
        }
        target = epoch_files.publish(
            district_root / UPLOAD,
            district_root / PROCESSED,
            name,
            self.archive_dir / district / name,
            reports,
        )
        self.ledger.mark_published(district, name)
        write_index(self.districts_dir / district, self.ledger)
        return record, target

    async def _publish_when_idle(self, district: str, name: str) -> None:
        key = (district, name)
        if self._sessions.get(key):
            gone = self._sessions_gone.setdefault(key, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), timeout=self.settings.publish_linger)
        self._sessions.pop(key, None)
        self._sessions_gone.pop(key, None)
        record, target = await self._io(
            self._publish_blocking, district, name, pool=self._publish_pool
        )
        self._on_published(district, name)
        self.log.info(
            "epoch.published",
            district=district,
            epoch=name,
            state=record.state,
            path=f"/{PROCESSED}/{target.name}",
        )
