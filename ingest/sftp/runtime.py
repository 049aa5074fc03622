"""What the SFTP sessions share: per connection (:class:`SessionState`) and per server
(:class:`SFTPRuntime`)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.sftp.budget import BufferBudget
from ingest.sftp.events import SFTPEventHandler, UploadJournal, UploadPolicy, UploadRegistry
from ingest.sftp.paths import Denied
from ingest.sftp.storage import Storage


@dataclass
class SessionState:
    """Per-connection facts the SFTP layer reads and updates (counters for session.closed)."""

    district: str
    session_id: str
    log: Any  # structlog BoundLogger bound to district, session_id, peer
    bytes_in: int = 0
    bytes_out: int = 0
    handles: int = 0  # open now, in all of the connection's SFTP sessions
    budget_waited: bool = False  # a write waited for the server's buffer budget


@dataclass
class SFTPRuntime:
    """What all SFTP sessions of one server share (each shared object passed in, never
    defaulted: a second registry or journal would be silently wrong)."""

    executor: Executor  # blocking file system calls
    hash_executor: Executor  # low-priority background hashing (writer.StreamDigest)
    # Digests finished after the client's close was answered: never on ``executor``, so
    # one district's big files cannot hold up another district's file I/O.
    digest_executor: Executor
    budget: BufferBudget  # upload bytes held in memory, all handles together
    events: SFTPEventHandler
    policy: UploadPolicy
    uploads: UploadRegistry
    journal: UploadJournal
    storage: Storage
    max_handles: int  # per connection (SessionState.handles)
    # A file with more than one name is served only when this says the other name is the
    # server's own (worker thread): a hard link planted in a district's tree is refused.
    own_link: Callable[[Path, os.stat_result], bool]
    draining: bool = False
    # Set when uploads must stop although the server runs on (its database was lost).
    uploads_refused: Denied | None = None
    # Digests finishing after the client's close was answered; referenced so they run on.
    background: set[asyncio.Task[None]] = field(default_factory=set)
    # Set at the end of a shutdown: every hashing job stops within a chunk.
    stop_hashing: threading.Event = field(default_factory=threading.Event)
