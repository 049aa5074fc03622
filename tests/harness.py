"""Run the real daemon as a subprocess on an ephemeral loopback port and watch its logs.

Tests talk to it with real SFTP clients; nothing here mocks the server or the file system.
Synchronisation is always "wait for a condition with a deadline": a log event, a file.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.config import load_config
from ingest.logging import configure_logging
from ingest.server import Server
from ingest.sftp import SFTPEventHandler
from ingest.store import Database, DistrictStore

DEFAULT_TIMEOUT = 15.0
# Epoch timings shortened for tests (settle windows, quiet period, linger, reconcile).
FAST_EPOCHS = {
    "epochs_auto_settle": 0.3,
    "epochs_marker_settle": 1,
    "epochs_quiet_period": 1,
    "epochs_publish_linger": 5,
    "epochs_reconcile_interval": 1,
}
WORK_EPOCH = "/upload/20260101-000000"
PASSWORD_SUFFIX = "-Correct-Horse-9"


class Timeout(AssertionError):
    pass


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    interval: float = 0.02,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def require_tool(name: str) -> str:
    """Path of a client binary; missing tools fail in CI and skip elsewhere."""
    import pytest

    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path


def ledger_row(daemon: Daemon, district: str, epoch: str) -> dict[str, Any] | None:
    """The epoch's row in the ledger, read as an operator's tool would."""
    db = sqlite3.connect(daemon.data_dir / "state" / "ingest.db")
    db.row_factory = sqlite3.Row
    try:
        row = db.execute(
            "SELECT * FROM epochs WHERE district = ? AND name = ?", (district, epoch)
        ).fetchone()
        return dict(row) if row else None
    finally:
        db.close()


def report(daemon: Daemon, district: str, epoch: str) -> dict[str, Any]:
    """The epoch's published report.json, as the district reads it."""
    path = daemon.root(district) / "upload-processed" / epoch / "report.json"
    return dict(json.loads(path.read_text()))


@dataclass
class Credentials:
    name: str
    password: str
    key_path: Path  # private key; the .pub beside it is registered

    @property
    def public_key(self) -> str:
        return Path(str(self.key_path) + ".pub").read_text()


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    data_dir: Path
    env: dict[str, str]
    port: int = 0
    logs: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _counter: int = 0
    loop: asyncio.AbstractEventLoop | None = None  # the server's, when run in process

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` on an in-process server's event loop (where its registries live)
        and return what it returns."""
        assert self.loop is not None, "only for run_in_process"

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    # --- logs -------------------------------------------------------------------------

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.raw.append(line)
                try:
                    self.logs.append(json.loads(line))
                except json.JSONDecodeError:
                    self.logs.append({"event": "<not json>", "line": line})
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_until(
        self, predicate: Callable[[], Any], what: str, timeout: float = DEFAULT_TIMEOUT
    ) -> Any:
        """:func:`wait_until`, with the daemon's last log lines in the failure."""
        try:
            return wait_until(predicate, timeout, what)
        except Timeout as exc:
            raise Timeout(f"{exc}; last lines:\n{''.join(self.raw[-25:])}") from None

    def events(self, event: str, **match: Any) -> list[dict[str, Any]]:
        with self._cond:
            return [
                e
                for e in self.logs
                if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
            ]

    def wait_for(
        self, event: str, timeout: float = DEFAULT_TIMEOUT, count: int = 1, **match: Any
    ) -> dict[str, Any]:
        """The ``count``-th log record with this event name and these field values."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    e
                    for e in self.logs
                    if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
                ]
                if len(found) >= count:
                    return found[count - 1]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not found):
                    tail = "".join(self.raw[-15:])
                    raise Timeout(f"no {event} {match} within {timeout}s; last lines:\n{tail}")
                self._cond.wait(min(remaining, 0.2))

    # --- districts --------------------------------------------------------------------------

    def store(self) -> DistrictStore:
        database = Database(f"sqlite:///{self.data_dir / 'state' / 'ingest.db'}")
        return DistrictStore(database, self.data_dir / "districts")

    def add_district(self, name: str | None = None, *, key: bool = True) -> Credentials:
        """A district with a password and (by default) an ed25519 key, via the Python API."""
        self._counter += 1
        name = name or f"d{os.getpid() % 1000}x{self._counter}"
        keydir = self.data_dir.parent / "client-keys"
        keydir.mkdir(exist_ok=True)
        key_path = keydir / f"{name}_ed25519"
        if not key_path.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key_path)],
                check=True,
            )
        creds = Credentials(name, name + PASSWORD_SUFFIX, key_path)
        keys = (creds.public_key,) if key else ()
        self.store().add(name, creds.password, keys)
        # An epoch directory (never completed) for tests about the SFTP layer itself.
        (self.root(name) / WORK_EPOCH.lstrip("/")).mkdir()
        return creds

    def cli(
        self,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ingest ARGS`` as an operator would: another process, the same state
        (``env``: variables to add to the daemon's environment)."""
        result = subprocess.run(
            [sys.executable, "-m", "ingest", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=60,
            cwd=self.data_dir.parent,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"ingest {' '.join(args)} failed: {result.stderr}")
        return result

    def root(self, name: str) -> Path:
        return self.data_dir / "districts" / name

    # --- host keys --------------------------------------------------------------------------

    def known_hosts(self) -> Path:
        path = self.data_dir.parent / f"known_hosts_{self.port}"
        if not path.exists():
            lines = [
                f"[127.0.0.1]:{self.port} {pub.read_text().strip()}"
                for pub in sorted((self.data_dir / "keys").glob("*.pub"))
            ]
            # Atomically: clients in several threads may ask for it at once.
            tmp = path.with_name(f"{path.name}.{threading.get_ident()}")
            tmp.write_text("\n".join(lines) + "\n")
            tmp.replace(path)
        return path

    def host_key_sha256(self) -> str:
        """Base64 SHA256 of the ed25519 host key (curl --hostpubsha256)."""
        import base64
        import hashlib

        line = (self.data_dir / "keys" / "ssh_host_ed25519_key.pub").read_text().split()
        digest = hashlib.sha256(base64.b64decode(line[1])).digest()
        return base64.b64encode(digest).decode().rstrip("=")

    # --- lifecycle ---------------------------------------------------------------------------

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        code = self.proc.wait(timeout=timeout)
        return code


@contextmanager
def run_daemon(workdir: Path, **settings: Any) -> Iterator[Daemon]:
    """Start ``ingest serve`` with a fresh data dir; settings are ``section_key=value``."""
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    # SQLITE_TMPDIR too: an in-process server (run_in_process) sets it for this process.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("INGEST_") and k != "SQLITE_TMPDIR"
    }
    env.update(
        {
            "INGEST_STORAGE_DATA_DIR": str(data_dir),
            "INGEST_SERVER_HOST": "127.0.0.1",
            "INGEST_SERVER_PORT": "0",
            "INGEST_LOGGING_FORMAT": "json",
            "INGEST_SERVER_SHUTDOWN_GRACE": "5",
            # Tests of wrong passwords would wait for it; the tests of floods set it.
            "INGEST_SERVER_AUTH_FAILURE_DELAY": "0",
            # A test machine's disk may be nearly full; tests of the reserve set their own.
            "INGEST_STORAGE_MIN_FREE_BYTES": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key, value in settings.items():
        env[f"INGEST_{key.upper()}"] = str(value)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "serve"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    daemon = Daemon(proc, data_dir, env)
    pump = threading.Thread(target=daemon._pump, daemon=True)
    pump.start()
    try:
        started = daemon.wait_for("server.started", timeout=30)
        daemon.port = int(started["port"])
        yield daemon
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        pump.join(timeout=5)


@contextmanager
def run_in_process(
    workdir: Path, events: SFTPEventHandler | None = None, **settings: Any
) -> Iterator[tuple[Server, Daemon]]:
    """The real Server in this process, on its own event loop in a thread, for tests that
    must look at (or slow down) its parts directly; ``Daemon`` is a view without a
    subprocess for the client helpers (port, keys, roots). Settings as for run_daemon."""
    data_dir = workdir / "data"
    env = {
        "INGEST_STORAGE_DATA_DIR": str(data_dir),
        "INGEST_SERVER_PORT": "0",
        "INGEST_SERVER_HOST": "127.0.0.1",
        "INGEST_LOGGING_FORMAT": "json",
        "INGEST_STORAGE_MIN_FREE_BYTES": "0",
        **{f"INGEST_{key.upper()}": str(value) for key, value in settings.items()},
    }
    config = load_config(environ=env)
    configure_logging(config.logging)
    server = Server(config, events=events)
    sqlite_tmpdir = os.environ.get("SQLITE_TMPDIR")  # Server.startup() sets it if unset
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.startup())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(30)
    view = Daemon(proc=None, data_dir=data_dir, env=env, port=server.port or 0)  # type: ignore[arg-type]
    view.loop = loop
    try:
        yield server, view
    finally:
        asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if sqlite_tmpdir is None:
            os.environ.pop("SQLITE_TMPDIR", None)
