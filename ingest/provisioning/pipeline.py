"""Reading a large users.csv in a second process while this one applies it.

Validation is pure Python (the csv module, the inline checks: about two thirds of a
re-apply); comparing rows with the accounts and staging them is mostly SQLite. One
process doing both uses one core. Here a reader process does the pass of
:class:`~ingest.provisioning.csvapi._Validator` and sends each batch of valid rows down a
pipe as soon as it is full, with their digests and key hashes computed (``prepare``);
this process compares them with the accounts and stages them meanwhile. The pipe's buffer is the
only queue: a reader that gets ahead blocks, so memory stays bounded. The verdicts that
need every row (duplicates, too many bad rows) are made here afterwards, as in the
single-process path, so both give the same report.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

from ingest.provisioning.csvapi import Limits, ValidationReport, _Validator
from ingest.provisioning.staging import BATCH, Stage, StagedRow, prepare

_JOIN_TIMEOUT = 10.0


class _PipeSink:
    """The reader's side of the pipe, standing in for the stage."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._kept: list[str] = []

    def add_many(self, rows: list[StagedRow]) -> None:
        if rows:
            self.conn.send(("batch", prepare(rows)))

    def keep(self, email: str) -> None:
        self._kept.append(email)
        if len(self._kept) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self._kept:
            self.conn.send(("keep", self._kept))
            self._kept = []


def _read(path: Path, limits: Limits, buildings: frozenset[str] | None, conn: Connection) -> None:
    """The reader process: the validator's pass, its output down the pipe."""
    # Like its parent (ingest/epochs/isolation.py), it must not die of a signal meant for
    # the daemon; if the parent dies, the pipe breaks and this ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        sink = _PipeSink(conn)
        validator = _Validator(limits, buildings, sink, path.name)
        scanned = validator.scan(path)
        sink.flush()
        conn.send(("done", validator.report, scanned))
    except BrokenPipeError:
        pass  # the parent gave up
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def scan_in_parallel(
    path: Path, limits: Limits, buildings: frozenset[str] | None, stage: Stage
) -> tuple[ValidationReport, bool]:
    """The validator's pass in a reader process, staging its rows here as they come;
    returns its report and whether :meth:`_Validator.finish` must follow."""
    context = multiprocessing.get_context("spawn")  # not fork: the caller may have threads
    receiver, sender = context.Pipe(duplex=False)
    reader = context.Process(
        target=_read, args=(path, limits, buildings, sender), name="ingest-csv-reader"
    )
    reader.start()
    sender.close()  # ours: only the reader's copy stays open, so its exit means EOF here
    try:
        while True:
            try:
                message = receiver.recv()
            except EOFError:
                reader.join(_JOIN_TIMEOUT)
                raise RuntimeError(
                    f"the process reading {path.name} exited before it finished "
                    f"(exit code {reader.exitcode})"
                ) from None
            kind = message[0]
            if kind == "batch":
                stage.add(message[1])
            elif kind == "keep":
                for email in message[1]:
                    stage.keep(email)
            elif kind == "error":
                raise RuntimeError(f"reading {path.name} failed:\n{message[1]}")
            else:
                return message[1], message[2]
    finally:
        receiver.close()
        reader.join(_JOIN_TIMEOUT)
        if reader.is_alive():
            reader.kill()
            reader.join()
