"""Where the processor runs: in a child process for large epochs (by default), in a
worker thread for small ones and on request.

Applying a large users.csv is seconds of pure-Python work. In a thread of the daemon it
holds the GIL that the SFTP event loop needs: measured with 200,000 rows, another
district's 2 KiB puts went from p99 3 ms to p99 110 ms, and the apply itself took 2.3
times longer because it shared one core with the uploads (docs/performance.md). In a
child process it runs on its own core and its memory is its own. A small epoch takes
milliseconds; the round trip to a child (and starting one) would multiply that, which the
epoch latency benchmark showed (bench/latency.py), so small epochs stay in a thread.

The child does the whole transaction (the processor's effects and the ledger's final
state), exactly as the thread would, so exactly-once does not depend on where it runs: if
the child dies, SQLite rolls the transaction back and nothing of the epoch was applied.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ingest.config import Config
from ingest.epochs.handoff import ClaimedEpoch, Outcome, Processor
from ingest.epochs.ledger import Ledger
from ingest.store.db import Database

# Child processes: one per concurrently processed epoch, as many as the worker threads
# that wait for them (EpochService's processing pool).
MAX_CHILDREN = 2
PROCESSING_NICENESS = 5


class ProcessorDied(RuntimeError):
    """The child process processing an epoch exited (killed, out of memory, ...)."""


def make_processor(config: Config) -> Processor:
    from ingest.provisioning.filenames import FileNameProcessor
    from ingest.provisioning.processor import ProvisioningProcessor

    if config.epochs.processor == "filenames":
        return FileNameProcessor()
    return ProvisioningProcessor(config.provisioning)


def apply_epoch(
    database: Database, ledger: Ledger, processor: Processor, epoch: ClaimedEpoch
) -> Outcome:
    """The processor's preparation (no write lock), then its effects and the epoch's
    final state in one write transaction."""
    with processor.prepare(epoch, database) as prepared, database.connect() as conn:
        outcome = processor.process(epoch, conn, prepared)
        ledger.finish(conn, epoch.district, epoch.name, outcome)
    return outcome


# --- the child's side ---------------------------------------------------------------------

_child: tuple[Database, Ledger, Processor] | None = None


def _start_child(config: Config) -> None:
    """Initializer of each child. Signals are the parent's business: a Ctrl-C or a SIGTERM
    to the process group must not cut an epoch short (the parent lets it finish, then
    shuts the pool down)."""
    global _child
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, daemon=True, name="parent-watch").start()
    # Below the daemon in the CPU scheduler: when epochs keep every core busy, other
    # districts' uploads still come first.
    os.nice(PROCESSING_NICENESS)
    from ingest.logging import configure_logging

    configure_logging(config.logging)
    database = Database(config.database_url, background_checkpoints=True)
    _child = (database, Ledger(database), make_processor(config))


def _exit_with_parent() -> None:
    """A child must not outlive a daemon that was killed: it would wait for work forever
    (it holds both ends of its task queue, so it never sees the parent go). An epoch it
    was applying is rolled back with it and redone by the next start."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)


def _apply_in_child(epoch: ClaimedEpoch) -> Outcome:
    if _child is None:
        raise RuntimeError("the processing child was not initialised")
    return apply_epoch(*_child, epoch)


# --- the parent's side --------------------------------------------------------------------


class ProcessorRunner:
    """Runs :func:`apply_epoch` for the epoch layer; :meth:`run` blocks (call it from a
    worker thread). Children start with the first epoch (about half a second of imports,
    once) and stay for the next ones."""

    def __init__(self, config: Config, database: Database, ledger: Ledger) -> None:
        self.config = config
        self.isolated = config.epochs.isolation == "process"
        self.processor = make_processor(config)
        self.database = database
        self.ledger = ledger
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    MAX_CHILDREN,
                    # spawn, not fork: the daemon has threads and an event loop
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child,
                    initargs=(self.config,),
                )
            return self._pool

    def run(self, epoch: ClaimedEpoch) -> Outcome:
        size = sum(f.size for f in epoch.files)
        if not self.isolated or size < self.config.epochs.isolation_min_bytes:
            return apply_epoch(self.database, self.ledger, self.processor, epoch)
        pool = self._executor()
        try:
            return pool.submit(_apply_in_child, epoch).result()
        except BrokenProcessPool as exc:
            with self._lock:  # the next epoch gets a fresh pool
                if self._pool is pool:
                    self._pool = None
            raise ProcessorDied(
                "the process applying the epoch exited before it finished (killed or out "
                "of memory?); nothing of the epoch was applied"
            ) from exc

    def shutdown(self) -> None:
        """Wait for running epochs, then stop the children."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
