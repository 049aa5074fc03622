"""structlog setup: one pipeline for our events and for asyncssh's stdlib logging.

Every line is one event with a stable ``event`` name; see docs/logging.md. Records from
other libraries (asyncssh) are renamed to ``event="lib.log"`` with the original text in
``message`` so that consumers can still rely on ``event`` being a fixed vocabulary.

Lines are rendered and written by a thread of their own, in the order they were logged:
writing (a syscall per line, and a full pipe when the log collector lags) was a fifth of
the event loop's time under a password flood. The queue between is bounded
(``QUEUE_LINES``): past it, logging waits for the writer as it did before.
:func:`flush_logs` waits until every line logged so far is written; it runs at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import logging.handlers
import queue
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from ingest.config import LoggingConfig

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _logged_at(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    when = record.created if record is not None else time.time()
    event_dict["timestamp"] = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return event_dict


def _foreign_record(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Give stdlib records (asyncssh) a stable event name, keeping their text."""
    # ProcessorFormatter runs foreign_pre_chain only for records that did not come
    # from structlog, so everything reaching this processor is a library's record.
    record = event_dict.get("_record")
    event_dict["message"] = event_dict.pop("event", "")
    event_dict["event"] = "lib.log"
    if record is not None:
        event_dict["logger"] = record.name
        repeated = getattr(record, "repeated", 0)
        if repeated:
            event_dict["repeated"] = repeated
    return event_dict


class RepeatFilter(logging.Filter):
    """A library's identical records within ``window`` seconds pass once.

    asyncssh can log the same warning by the thousand for one cause (a client dropped with
    many requests in flight logged 1,464 identical lines). The same logger, level and text
    passes once per window; the next one to pass after it carries ``repeated``, how many
    were held back. Our own events are never held back. Remembers ``keep`` texts at most.
    """

    def __init__(
        self, window: float = 10.0, keep: int = 1000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window = window
        self.keep = keep
        self._clock = clock
        self._seen: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()  # handlers filter outside their own lock

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "ingest" or record.name.startswith("ingest."):
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.window:
                seen[1] += 1
                return False
            if seen is not None and seen[1]:
                record.repeated = int(seen[1])
            self._seen[key] = [now, 0]
            self._seen.move_to_end(key)
            while len(self._seen) > self.keep:
                self._seen.popitem(last=False)
        return True


QUEUE_LINES = 10_000


class _OffLoopHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread as they are: structlog's event dict is
    rendered there (QueueHandler would format it here, and flatten it). Waits when
    the queue is full instead of dropping the record."""

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self._records = records

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        self._records.put(record)


class _Writer:
    """The thread that renders and writes every log line (one per process)."""

    def __init__(self, handler: logging.Handler) -> None:
        self.queue: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_LINES)
        self.handler = handler
        self.listener = logging.handlers.QueueListener(self.queue, handler)
        self.listener.start()

    def flush(self) -> None:
        self.queue.join()  # every record taken and handled
        with contextlib.suppress(ValueError, OSError):  # the stream is closed already
            self.handler.flush()

    def stop(self) -> None:
        self.queue.join()  # room for the listener's sentinel: never queue.Full
        self.listener.stop()
        with contextlib.suppress(ValueError, OSError):
            self.handler.flush()


_writer: _Writer | None = None


def _lead_with_event(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Put timestamp, level and event first so a line reads well in a terminal too."""
    head = {k: event_dict.pop(k) for k in ("timestamp", "level", "event") if k in event_dict}
    return {**head, **event_dict}


def configure_logging(config: LoggingConfig, stream: TextIO | None = None) -> None:
    """Install the pipeline on the root logger. Safe to call more than once."""
    out = stream or sys.stdout
    use_json = config.format == "json" or (config.format == "auto" and not out.isatty())
    renderer: Processor = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        # Library records are stamped with the time they were logged, not written.
        foreign_pre_chain=[*shared[:-1], _logged_at, _foreign_record],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _lead_with_event,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    global _writer
    if _writer is not None:
        _writer.stop()
    _writer = _Writer(handler)
    queued = _OffLoopHandler(_writer.queue)
    queued.addFilter(RepeatFilter())  # before the queue: held-back records cost nothing
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(queued)
    root.setLevel(_LEVELS[config.level])
    logging.getLogger("asyncssh").setLevel(_LEVELS[config.asyncssh_level])

    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[config.level]),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "ingest", **context: Any) -> Any:
    """A structlog logger bound to ``context``; ``name`` is the stdlib logger it uses."""
    return structlog.get_logger(name).bind(**context)


def flush_logs() -> None:
    """Wait until every line logged so far is written."""
    if _writer is not None:
        _writer.flush()


atexit.register(flush_logs)
