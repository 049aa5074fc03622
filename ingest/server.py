"""Lifecycle of the daemon: startup, serve until signalled, drain, shutdown.

Modelled on uvicorn's Server: ``startup()`` and ``shutdown()`` are explicit so tests and
embedders can run the daemon inside their own event loop; ``serve()`` adds the signal
handling used by ``ingest serve``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal

from ingest.config import Config
from ingest.epochs.service import EpochService
from ingest.logging import flush_logs, get_logger
from ingest.provisioning.guide import refresh_guide
from ingest.provisioning.processor import validation_limits
from ingest.provisioning.validator import build_validator
from ingest.sftp import (
    Denied,
    FanOut,
    SFTPEventHandler,
    SFTPService,
    UploadRegistry,
    load_or_create_host_keys,
)
from ingest.sftp.defender import Defender
from ingest.sftp.storage import Storage, StorageLimits
from ingest.store import Database, DistrictStore
from ingest.store.bans import BanStore
from ingest.store.checkpoint import Checkpointer
from ingest.store.journal import UploadJournal
from ingest.store.sources import KnownSources

DATABASE_CHECK = 1.0  # seconds between looks at the state database's file


class Server:
    def __init__(self, config: Config, events: SFTPEventHandler | None = None) -> None:
        self.config = config
        self.events = events
        self.log = get_logger("ingest.server")
        self.sftp: SFTPService | None = None
        self.epochs: EpochService | None = None
        self.checkpointer: Checkpointer | None = None
        self.defender: Defender | None = None
        self._watch: asyncio.Task[None] | None = None
        self.port: int | None = None
        self._should_exit = asyncio.Event()

    async def startup(self) -> None:
        config = self.config
        # SQLite reads SQLITE_TMPDIR when the library initialises (this process's first
        # connection is just below); processing children inherit it.
        config.temp_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("SQLITE_TMPDIR", str(config.temp_dir.resolve()))
        database = Database(config.database_url, background_checkpoints=True)
        schema = await asyncio.to_thread(database.migrate, config.districts_dir)
        config.districts_dir.mkdir(parents=True, exist_ok=True)
        host_keys = await asyncio.to_thread(load_or_create_host_keys, config.host_key_dir)
        districts = DistrictStore(database, config.districts_dir)
        # One registry, passed to both layers (never defaulted); the journal behind it
        # says which files a crash or a dropped session left cut off.
        uploads = UploadRegistry()
        journal = UploadJournal(config.journal_path, config.districts_dir)
        await asyncio.to_thread(journal.open)
        await asyncio.to_thread(journal.adopt, database)
        for cut in await asyncio.to_thread(journal.recover):
            uploads.mark_incomplete(cut.path)
            self.log.warning(
                "upload.interrupted",
                district=cut.district,
                path=cut.virtual,
                size=cut.size,
            )
        # The districts' validator, with this server's limits: the same bytes for every root
        # (built from the package's files: off the loop, like the other startup I/O).
        validator = await asyncio.to_thread(build_validator, validation_limits(config.provisioning))
        self.epochs = EpochService(
            config,
            database,
            uploads,
            on_district=functools.partial(refresh_guide, database, config.districts_dir, validator),
        )
        await self.epochs.start()
        events = FanOut(self.epochs, self.events) if self.events is not None else self.epochs
        self.defender = Defender(config.defender, BanStore(database), get_logger("ingest.defender"))
        await self.defender.start()
        self.sftp = SFTPService(
            config.server,
            host_keys,
            districts,
            events=events,
            policy=self.epochs.policy,
            uploads=uploads,
            journal=journal,
            storage=Storage(
                StorageLimits(
                    max_file_bytes=config.provisioning.max_file_bytes,
                    quota_bytes=config.storage.district_quota_bytes,
                    quota_files=config.storage.district_quota_files,
                    min_free_bytes=config.storage.min_free_bytes,
                ),
                config.data_dir,
            ),
            defender=self.defender,
            known_sources=KnownSources(database),
            own_link=self.epochs.archive_twin,
        )
        self.port = await self.sftp.start()
        self.checkpointer = Checkpointer(database)
        self.checkpointer.start()
        self._watch = asyncio.get_running_loop().create_task(self._watch_database(database))
        self.log.info(
            "server.started",
            host=config.server.host,
            port=self.port,
            data_dir=str(config.data_dir.resolve()),
            database=config.database_url,
            schema_version=schema,
            config=config.source,
            fingerprints={k.algorithm: k.fingerprint for k in host_keys},
        )

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_exit, signum)
        await self.startup()
        await self._should_exit.wait()
        await self.shutdown()

    async def _watch_database(self, database: Database) -> None:
        """The state database must stay the file the daemon opened. Deleted or replaced
        under it, every write would go to a file nobody can open again, and the next
        admin command would make a new, empty one: uploads stop and processing stops
        (they would be recorded nowhere), reads go on, and it is said loudly."""
        opened = await asyncio.to_thread(os.stat, database.path)
        while True:
            await asyncio.sleep(DATABASE_CHECK)
            try:
                now = await asyncio.to_thread(os.stat, database.path)
            except FileNotFoundError:
                reason = "deleted"
            else:
                if (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino):
                    continue
                reason = "replaced"
            self.log.error(
                "database.lost",
                path=str(database.path),
                reason=reason,
                message="the state database was deleted or replaced while the server ran; "
                "uploads and processing are stopped: restore the file (or move the new one "
                "away) and restart the server",
            )
            if self.sftp is not None:
                self.sftp.runtime.uploads_refused = Denied(
                    "database_lost",
                    "the server cannot record uploads right now; try again later (the "
                    "operators are alerted)",
                )
            if self.epochs is not None:
                self.epochs.stop_starting()
            return

    def request_exit(self, signum: int | None = None) -> None:
        if not self._should_exit.is_set():
            self.log.info("server.signal", signal=signal.Signals(signum).name if signum else None)
        self._should_exit.set()

    async def shutdown(self) -> None:
        sftp = self.sftp
        if sftp is None:
            return
        grace = self.config.server.shutdown_grace
        if self._watch is not None:
            self._watch.cancel()
        sftp.stop_accepting()
        if self.epochs is not None:
            self.epochs.stop_starting()
        self.log.info(
            "server.stopping",
            open_uploads=sftp.uploads.open_count(),
            sessions=len(sftp.connections),
            grace=grace,
        )
        drained = await sftp.drain(grace)
        if not drained:
            self.log.warning("server.drain_timeout", open_uploads=sftp.uploads.open_count())
        await sftp.close()
        self.sftp = None
        if self.epochs is not None:
            await self.epochs.stop()
            self.epochs = None
        if self.defender is not None:
            await self.defender.stop()
            self.defender = None
        if self.checkpointer is not None:
            await asyncio.to_thread(self.checkpointer.stop)
            self.checkpointer = None
        self.log.info("server.stopped", drained=drained)
        flush_logs()
