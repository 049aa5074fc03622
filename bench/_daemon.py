"""The daemon under benchmark and its districts' paramiko clients (bench/latency.py and
bench/provision.py): a real ``python -m ingest serve`` subprocess on 127.0.0.1, port 0,
JSON logs read by a thread and indexed by event name, so that a benchmark waits on log
events with a deadline instead of sleeping."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paramiko  # type: ignore[import-untyped]
from _common import BenchError, Registry, cpu_seconds, ingest_env, spawn_ingest

# --- the daemon ------------------------------------------------------------------------------


def parse_ts(text: str) -> float:
    """The daemon's ``timestamp`` (ISO 8601 UTC with ``Z``) as POSIX seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Daemon:
    """The running ``ingest serve`` and its JSON log records, indexed by event name."""

    proc: subprocess.Popen[str]
    data_dir: Path
    env: dict[str, str]
    port: int = 0
    by_event: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tail: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    log_path: Path | None = None  # every raw line is also kept here (see --keep-tmp)
    # False: only server.* records are parsed and indexed, the rest just kept in log_path
    # (a flood of log lines parsed in the measuring process would slow its client down).
    index_all: bool = True

    def start_pump(self) -> None:
        threading.Thread(target=self._pump, daemon=True, name="daemon-logs").start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        sink = open(self.log_path, "w") if self.log_path else None  # noqa: SIM115
        for line in self.proc.stdout:
            if sink is not None:
                sink.write(line)
            if not self.index_all and '"server.' not in line:
                continue
            try:
                record = json.loads(line)
                record["_ts"] = parse_ts(record["timestamp"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                record = {"event": "<not json>", "line": line}
            with self.cond:
                self.tail = [*self.tail[-30:], line]
                self.by_event.setdefault(str(record.get("event")), []).append(record)
                self.cond.notify_all()
        if sink is not None:
            sink.close()
        with self.cond:
            self.cond.notify_all()

    def events(self, name: str) -> list[dict[str, Any]]:
        with self.cond:
            return list(self.by_event.get(name, []))

    def wait_for(self, what: str, predicate: Callable[[], Any], deadline: float) -> Any:
        """Wait on the log condition (no polling sleeps) until predicate() is truthy;
        ``deadline`` is a time.monotonic() value."""
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    raise BenchError(
                        f"no {what} in time (or the daemon exited); last log lines:\n"
                        + "".join(self.tail[-15:])
                    )
                self.cond.wait(min(remaining, 1.0))

    def wait_event(self, name: str, deadline: float, **match: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for found in self.by_event.get(name, [])[::-1]:
                if all(found.get(k) == v for k, v in match.items()):
                    return found
            return None

        record: dict[str, Any] = self.wait_for(f"{name} {match}", find, deadline)
        return record

    def cpu(self) -> tuple[float, float]:
        """(whole process, main thread = event loop) CPU seconds so far."""
        pid = self.proc.pid
        return cpu_seconds(pid), cpu_seconds(pid, pid)

    def wait_count(self, name: str, count: int, deadline: float) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            found = self.by_event.get(name, [])
            return list(found) if len(found) >= count else None

        records: list[dict[str, Any]] = self.wait_for(f"{count} x {name}", enough, deadline)
        return records


def start_daemon(reg: Registry, work: Path, index_all: bool = True) -> Daemon:
    data_dir = work / "data"
    data_dir.mkdir(parents=True)
    env = ingest_env(data_dir)  # its four settings are the only ones not at their defaults
    # no config/ingest.toml in work: the embedded defaults apply
    proc = spawn_ingest(reg, work, env)
    daemon = Daemon(proc, data_dir, env, log_path=work / "daemon.log", index_all=index_all)
    daemon.start_pump()
    started = daemon.wait_count("server.started", 1, time.monotonic() + 60)[0]
    daemon.port = int(started["port"])
    return daemon


def add_districts(daemon: Daemon, names: list[str], public_key: str) -> None:
    from ingest.config import load_config
    from ingest.store import Database, DistrictStore

    config = load_config(environ=daemon.env)
    store = DistrictStore(Database(config.database_url), config.districts_dir)
    for name in names:
        store.add(name, None, (public_key,))


def write_client_key(work: Path) -> tuple[Path, str]:
    """An ed25519 client key (OpenSSH format) and its public line, without ssh-keygen."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    path = work / "client_ed25519"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return path, public.decode() + " bench"


def write_known_hosts(daemon: Daemon, work: Path) -> Path:
    path = work / "known_hosts"
    lines = [
        f"[127.0.0.1]:{daemon.port} {pub.read_text().strip()}"
        for pub in sorted((daemon.data_dir / "keys").glob("*.pub"))
    ]
    if not lines:
        raise BenchError(f"no host keys in {daemon.data_dir / 'keys'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def open_sftp(port: int, key: Any, known_hosts: Path, user: str, timeout: float) -> tuple[Any, Any]:
    """(SSHClient, SFTPClient) for ``user`` with an ed25519 ``key``, the host key pinned."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        "127.0.0.1",
        port=port,
        username=user,
        pkey=key,
        allow_agent=False,
        look_for_keys=False,
        timeout=timeout,
        banner_timeout=timeout,
        auth_timeout=timeout,
    )
    sftp = client.open_sftp()
    sftp.get_channel().settimeout(timeout)
    return client, sftp
