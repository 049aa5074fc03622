#!/usr/bin/env python3
"""Upload benchmark: the ingest daemon against a bare asyncssh SFTP server, on loopback.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/upload.py            # defaults: 256 MiB, 5 timed runs each
    .venv/bin/python bench/upload.py --json     # machine-readable results on stdout
    .venv/bin/python bench/upload.py --help     # sizes, counts, cipher, ...

Both servers are real subprocesses on 127.0.0.1 and port 0, driven by the real OpenSSH
``sftp`` client in batch mode (``sftp -b -``) with an ed25519 key generated for the run,
the same cipher (``-c``) and the same key exchange for both, and the host key pinned in a
known_hosts file written from the server's public key.

* **ingest**: ``python -m ingest serve`` (JSON logs, fresh data dir, districts added through
  :class:`ingest.store.DistrictStore` as in ``tests/harness.py``).
* **baseline**: ``asyncssh.listen`` with an ed25519 host key, ``authorized_client_keys`` and
  ``sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=...)``, nothing else; it runs
  as this script with the hidden ``_baseline-server`` sub-command.

What is measured (see docs/performance.md for figures and interpretation):

1. one big file, single stream: MB/s for each server and the ratio ingest/baseline;
2. many small files in one sftp session: files/s for each and the ratio;
3. responsiveness: per-file latency (p50/p99/max) of a second district uploading small files
   one at a time, idle and while a big upload runs into the same server.

Timing never includes the SSH handshake or sleeps: the session is opened and synchronised
with ``pwd`` first; the clock starts when the commands are written to sftp's stdin and stops
when the answer to a ``pwd`` sent after them arrives, i.e. after the server's reply to the
last FXP_CLOSE (sftp runs batch commands strictly in order). The daemon's ``upload.finished``
events are checked afterwards (sha256 of the big file, count of the small files).
Measurements alternate between the two servers, after an untimed warm-up run of each, and
the median is reported. CPU seconds of the servers (whole process and event-loop thread,
from /proc) and of the client (sftp + ssh) are recorded beside each run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import queue
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    BenchError,
    Registry,
    add_output_options,
    cpu_seconds,
    ingest_env,
    log,
    machine_info,
    run_main,
    rusage_cpu,
    spawn_ingest,
    summary,
)

MB = 1_000_000  # MB/s below are decimal megabytes per second
MiB = 1024 * 1024
MARKER = "Remote working directory:"


# --- the baseline server (runs in its own process) ------------------------------------------


def baseline_server(root: str, authorized_keys: str, host_key_pub: str) -> None:
    """A bare asyncssh SFTP server; prints one JSON line with the port, stops on SIGTERM."""
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519")
    Path(host_key_pub).write_text(key.export_public_key().decode())

    async def main() -> None:
        acceptor = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=[key],
            authorized_client_keys=authorized_keys,
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=os.fsencode(root)),
        )
        print(json.dumps({"event": "server.started", "port": acceptor.get_port()}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        # Also stop when the benchmark goes away without signalling (its pipe closes).
        loop.add_reader(sys.stdin.fileno(), stop.set)
        await stop.wait()
        acceptor.close()
        await acceptor.wait_closed()

    asyncio.run(main())


# --- processes -------------------------------------------------------------------------------


# --- servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    """A running server subprocess, its log lines (JSON objects) and where its users land."""

    name: str
    proc: subprocess.Popen[str]
    known_hosts: Path = Path()
    port: int = 0
    logs: list[dict[str, Any]] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    roots: dict[str, Path] = field(default_factory=dict)  # user -> real root of its "/"

    def start_pump(self) -> None:
        threading.Thread(target=self._pump, daemon=True, name=f"logs-{self.name}").start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.tail = [*self.tail[-30:], line]
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = {"event": "<not json>", "line": line}
                self.logs.append(record)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(
        self, what: str, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float
    ) -> Any:
        """Wait (on the log condition, no polling sleeps) until predicate(logs) is truthy."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate(self.logs)
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    raise BenchError(
                        f"{self.name}: no {what} within {timeout}s; last log "
                        "lines:\n" + "".join(self.tail[-15:])
                    )
                self.cond.wait(min(remaining, 1.0))

    def event(self, name: str, timeout: float = 30, **match: Any) -> dict[str, Any]:
        def find(logs: list[dict[str, Any]]) -> dict[str, Any] | None:
            for record in logs:
                if record.get("event") == name and all(
                    record.get(k) == v for k, v in match.items()
                ):
                    return record
            return None

        record: dict[str, Any] = self.wait_for(f"{name} {match}", find, timeout)
        return record

    def events_where(
        self, name: str, count: int, test: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> list[dict[str, Any]]:
        def find(logs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
            found = [r for r in logs if r.get("event") == name and test(r)]
            return found if len(found) >= count else None

        records: list[dict[str, Any]] = self.wait_for(f"{count} x {name}", find, timeout)
        return records

    def cpu(self) -> tuple[float, float]:
        """(whole process, main thread = event loop) CPU seconds so far."""
        pid = self.proc.pid
        return cpu_seconds(pid), cpu_seconds(pid, pid)


def write_known_hosts(path: Path, port: int, pub_files: list[Path]) -> Path:
    lines = [f"[127.0.0.1]:{port} {pub.read_text().strip()}" for pub in pub_files]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_ingest(reg: Registry, work: Path, client_pub: str, users: list[str]) -> Server:
    from ingest.config import load_config
    from ingest.store import Database, DistrictStore

    data_dir = work / "ingest-data"
    data_dir.mkdir()
    env = ingest_env(data_dir, INGEST_SERVER_SHUTDOWN_GRACE="5")
    proc = spawn_ingest(reg, work, env)
    server = Server("ingest", proc)
    server.start_pump()
    server.port = int(server.event("server.started", timeout=60)["port"])
    config = load_config(environ=env)
    store = DistrictStore(Database(config.database_url), config.districts_dir)
    for user in users:
        store.add(user, None, (client_pub,))
        server.roots[user] = store.root(user)
    server.known_hosts = write_known_hosts(
        work / "known_hosts_ingest", server.port, sorted((data_dir / "keys").glob("*.pub"))
    )
    return server


def start_baseline(reg: Registry, work: Path, client_pub_path: Path, users: list[str]) -> Server:
    root = work / "baseline-root"
    (root / "upload").mkdir(parents=True)
    host_pub = work / "baseline_host_key.pub"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = reg.popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "_baseline-server",
            str(root),
            str(client_pub_path),
            str(host_pub),
        ],
        cwd=work,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    server = Server("baseline", proc)
    server.start_pump()
    server.port = int(server.event("server.started", timeout=60)["port"])
    server.known_hosts = write_known_hosts(work / "known_hosts_baseline", server.port, [host_pub])
    for user in users:  # one shared chroot: any user name with the key gets in
        server.roots[user] = root
    return server


# --- the OpenSSH sftp client ------------------------------------------------------------------


@dataclass
class ClientSettings:
    key: Path
    cipher: str
    kex: str
    cwd: Path


class Sftp:
    """One ``sftp -b -`` session fed through its stdin; commands are timed with a pwd marker."""

    def __init__(
        self,
        reg: Registry,
        server: Server,
        user: str,
        client: ClientSettings,
        verbose: bool = False,
    ) -> None:
        self.server = server
        args = [
            "sftp",
            "-b",
            "-",
            "-P",
            str(server.port),
            "-c",
            client.cipher,
            "-o",
            f"KexAlgorithms={client.kex}",
            "-o",
            "Compression=no",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={server.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-i",
            str(client.key),
            *(["-vvv"] if verbose else ["-o", "LogLevel=ERROR"]),
            f"{user}@127.0.0.1",
        ]
        self.cpu_before = rusage_cpu(resource.RUSAGE_CHILDREN)
        self.proc = reg.popen(
            args,
            cwd=client.cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=1,
        )
        self.lines: queue.Queue[tuple[float, str | None]] = queue.Queue()
        self.stderr: list[str] = []
        self.put_echoed = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.perf_counter(), line))
            if line.startswith("sftp> put "):
                self.put_echoed.set()
        self.lines.put((time.perf_counter(), None))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def send(self, commands: list[str]) -> float:
        """Write commands followed by the pwd marker; returns the time they were written."""
        assert self.proc.stdin is not None
        t0 = time.perf_counter()
        self.proc.stdin.write("".join(c + "\n" for c in [*commands, "pwd"]))
        self.proc.stdin.flush()
        return t0

    def wait_marker(self, timeout: float) -> float:
        """Time the answer to the next pwd marker arrived."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                stamp, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(
                    f"sftp to {self.server.name}: no answer within {timeout}s; "
                    f"stderr: {''.join(self.stderr[-10:])}"
                ) from None
            if line is None:
                self.proc.wait()
                raise BenchError(
                    f"sftp to {self.server.name} exited "
                    f"{self.proc.returncode}: {''.join(self.stderr[-10:])}"
                )
            if line.startswith(MARKER):
                return stamp

    def run(self, commands: list[str], timeout: float = 60) -> float:
        """Seconds from writing the commands until sftp answered the marker after them."""
        t0 = self.send(commands)
        return self.wait_marker(timeout) - t0

    def close(self) -> float:
        """End the session; returns the client's CPU seconds (sftp + ssh) over its life."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout=60)
        if code != 0:
            raise BenchError(
                f"sftp to {self.server.name} exited {code}: {''.join(self.stderr[-10:])}"
            )
        return rusage_cpu(resource.RUSAGE_CHILDREN) - self.cpu_before


@contextlib.contextmanager
def session(
    reg: Registry,
    server: Server,
    user: str,
    client: ClientSettings,
    setup: tuple[str, ...] | list[str] = (),
) -> Iterator[Sftp]:
    sftp = Sftp(reg, server, user, client)
    try:
        sftp.run(list(setup), timeout=60)  # connect, authenticate, set up (untimed)
        yield sftp
    finally:
        if sftp.proc.poll() is None:
            with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
                sftp.close()


def negotiated(reg: Registry, server: Server, user: str, client: ClientSettings) -> dict[str, str]:
    """Connect once with -vvv and read what was negotiated (and check the session works)."""
    sftp = Sftp(reg, server, user, client, verbose=True)
    sftp.run([], timeout=60)
    sftp.close()
    found: dict[str, str] = {}
    for line in sftp.stderr:
        if m := re.search(r"kex: algorithm: (\S+)", line):
            found["kex"] = m.group(1)
        elif m := re.search(r"kex: client->server cipher: (\S+) MAC: (\S+)", line):
            found["cipher"], found["mac"] = m.group(1), m.group(2)
        elif m := re.search(r"Remote protocol version [^,]+, remote software version (\S+)", line):
            found["server_version"] = m.group(1)
        elif m := re.search(r"server upload/download buffer sizes .*; using (\d+) / (\d+)", line):
            # OpenSSH >= 8.7 sizes its requests from the server's limits@openssh.com reply
            found["sftp_write_len"] = m.group(1)
    return found


# --- statistics ------------------------------------------------------------------------------


def latency_summary(samples: list[float]) -> dict[str, Any]:
    """Per-file latencies in seconds, summarised in ms: n, p50, p99, max and mean."""
    return summary([s * 1000 for s in samples], percentiles=(50, 99))


# --- the benchmark ---------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    reg: Registry
    work: Path
    client: ClientSettings
    big: Path
    big_sha256: str
    small: list[Path]
    servers: dict[str, Server]
    counter: int = 0

    def next_dir(self) -> str:
        """A fresh epoch directory name under /upload."""
        self.counter += 1
        return f"/upload/20260101-{self.counter:06d}"

    def real(self, server: Server, user: str, virtual: str) -> Path:
        return server.roots[user] / virtual.lstrip("/")

    def order(self, rep: int) -> list[Server]:
        names = ["ingest", "baseline"] if rep % 2 == 0 else ["baseline", "ingest"]
        return [self.servers[n] for n in names]

    # 1. one big file ------------------------------------------------------------------------

    def big_upload(self, server: Server) -> dict[str, Any]:
        user = "district-a"
        directory = self.next_dir()
        remote = f"{directory}/big.bin"
        with session(self.reg, server, user, self.client, [f"mkdir {directory}"]) as sftp:
            cpu0, loop0 = server.cpu()
            seconds = sftp.run([f"put {self.big.name} {remote}"], timeout=self.timeout())
            cpu1, loop1 = server.cpu()
            client_cpu = sftp.close()
        size = self.big.stat().st_size
        result: dict[str, Any] = {
            "seconds": round(seconds, 4),
            "mb_s": round(size / seconds / MB, 1),
            "server_cpu_s": round(cpu1 - cpu0, 2),
            "server_loop_cpu_s": round(loop1 - loop0, 2),
            "client_cpu_s": round(client_cpu, 2),
        }
        real = self.real(server, user, remote)
        if real.stat().st_size != size:
            raise BenchError(
                f"{server.name}: {remote} has {real.stat().st_size} bytes, expected {size}"
            )
        if server.name == "ingest":
            finished = server.event("upload.finished", path=remote)
            if finished["sha256"] != self.big_sha256 or finished["size"] != size:
                raise BenchError(f"ingest: upload.finished does not match the file: {finished}")
            result["daemon_duration_s"] = finished["duration"]
        real.unlink()
        return result

    def timeout(self) -> float:
        return max(120.0, float(self.args.big_mib * self.args.load_repeats) / 2)

    # 2. small files --------------------------------------------------------------------------

    def small_files(self, server: Server) -> dict[str, Any]:
        user = "district-a"
        directory = self.next_dir()
        commands = [f"put {p.parent.name}/{p.name} {directory}/{p.name}" for p in self.small]
        with session(self.reg, server, user, self.client, [f"mkdir {directory}"]) as sftp:
            cpu0, loop0 = server.cpu()
            seconds = sftp.run(commands, timeout=self.timeout())
            cpu1, loop1 = server.cpu()
        count = len(self.small)
        real_dir = self.real(server, user, directory)
        on_disk = len(list(real_dir.iterdir()))
        if on_disk != count:
            raise BenchError(f"{server.name}: {on_disk} files in {directory}, expected {count}")
        if server.name == "ingest":
            server.events_where(
                "upload.finished",
                count,
                lambda r: str(r.get("path", "")).startswith(directory + "/"),
            )
        shutil.rmtree(real_dir)
        return {
            "seconds": round(seconds, 4),
            "files_s": round(count / seconds, 1),
            "server_cpu_s": round(cpu1 - cpu0, 3),
            "server_loop_cpu_s": round(loop1 - loop0, 3),
        }

    # 3. responsiveness -----------------------------------------------------------------------

    def latency_idle(self, server: Server) -> list[float]:
        directory = self.next_dir()
        samples = []
        with session(self.reg, server, "district-b", self.client, [f"mkdir {directory}"]) as b:
            for i in range(self.args.latency_files):
                local = self.small[i % len(self.small)]
                samples.append(
                    b.run([f"put {local.parent.name}/{local.name} {directory}/{i:05d}.csv"])
                )
        shutil.rmtree(self.real(server, "district-b", directory))
        return samples

    def latency_loaded(self, server: Server) -> tuple[list[float], dict[str, Any]]:
        """B's per-file latency while A uploads the big file (load_repeats times in a row).

        Only B's files that ran entirely while A's upload was in progress are kept.
        """
        dir_a, dir_b = self.next_dir(), self.next_dir()
        puts = [f"put {self.big.name} {dir_a}/big-{n}.bin" for n in range(self.args.load_repeats)]
        timed: list[tuple[float, float]] = []  # (start, end) of each of B's files
        with (
            session(self.reg, server, "district-a", self.client, [f"mkdir {dir_a}"]) as a,
            session(self.reg, server, "district-b", self.client, [f"mkdir {dir_b}"]) as b,
        ):
            a_done = threading.Event()
            a_end: list[float] = []
            a_error: list[BaseException] = []

            def wait_a() -> None:
                try:
                    a_end.append(a.wait_marker(self.timeout()))
                except BaseException as exc:
                    a_error.append(exc)
                finally:
                    a_done.set()

            a_start = a.send(puts)
            waiter = threading.Thread(target=wait_a, daemon=True)
            waiter.start()
            # sftp echoes a batch command just before running it; the daemon also logs
            # upload.started once the file is open.
            if not a.put_echoed.wait(60):
                raise BenchError(f"sftp to {server.name} did not start the big upload")
            if server.name == "ingest":
                server.event("upload.started", path=f"{dir_a}/big-0.bin")
            i = 0
            while not a_done.is_set() and i < self.args.latency_files * 20:
                local = self.small[i % len(self.small)]
                t0 = b.send([f"put {local.parent.name}/{local.name} {dir_b}/{i:05d}.csv"])
                timed.append((t0, b.wait_marker(60)))
                i += 1
            waiter.join()
            if a_error:
                raise a_error[0]
        during = [end - start for start, end in timed if end <= a_end[0]]
        a_seconds = a_end[0] - a_start
        big_bytes = self.big.stat().st_size * self.args.load_repeats
        info = {
            "b_files_total": len(timed),
            "b_files_during_load": len(during),
            "a_seconds": round(a_seconds, 3),
            "a_mb_s": round(big_bytes / a_seconds / MB, 1),
        }
        shutil.rmtree(self.real(server, "district-a", dir_a))
        shutil.rmtree(self.real(server, "district-b", dir_b))
        return during, info


# --- setup, run, report ----------------------------------------------------------------------


def make_files(
    work: Path, big_mib: int, small_count: int, small_kib: int
) -> tuple[Path, str, list[Path]]:
    """Random content (no compression anywhere, but nothing to gain from patterns either)."""
    big = work / "big.bin"
    digest = hashlib.sha256()
    with open(big, "wb") as f:
        remaining = big_mib * MiB
        while remaining:
            chunk = os.urandom(min(4 * MiB, remaining))
            f.write(chunk)
            digest.update(chunk)
            remaining -= len(chunk)
    small_dir = work / "small"
    small_dir.mkdir()
    small = []
    for i in range(small_count):
        path = small_dir / f"{i:05d}.csv"
        path.write_bytes(os.urandom(small_kib * 1024))
        small.append(path)
    return big, digest.hexdigest(), small


def run(args: argparse.Namespace, reg: Registry, work: Path) -> dict[str, Any]:
    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    info = machine_info(openssh=ssh_version)
    log(
        f"{info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"asyncssh {info['asyncssh']}, {info['openssh']}"
    )
    log(
        f"writing test files into {work} ({args.big_mib} MiB + "
        f"{args.small_files} x {args.small_kib} KiB)"
    )
    big, big_sha, small = make_files(work, args.big_mib, args.small_files, args.small_kib)

    key = work / "client_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(key)], check=True
    )
    client_pub_path = Path(str(key) + ".pub")
    users = ["district-a", "district-b"]
    client = ClientSettings(key=key, cipher=args.cipher, kex=args.kex, cwd=work)

    log("starting the ingest daemon and the baseline server")
    servers = {
        "ingest": start_ingest(reg, work, client_pub_path.read_text(), users),
        "baseline": start_baseline(reg, work, client_pub_path, users),
    }
    algorithms = {}
    for name, server in servers.items():
        algorithms[name] = negotiated(reg, server, "district-a", client)
        log(f"{name}: port {server.port}, pid {server.proc.pid}, negotiated {algorithms[name]}")
    for field_name in ("cipher", "kex", "sftp_write_len"):
        values = {a.get(field_name) for a in algorithms.values()}
        if len(values) != 1:
            raise BenchError(f"the servers negotiated different {field_name}s: {algorithms}")

    bench = Bench(args, reg, work, client, big, big_sha, small, servers)
    names = ["ingest", "baseline"]
    results: dict[str, Any] = {
        "machine": info,
        "settings": {
            "big_mib": args.big_mib,
            "reps": args.reps,
            "small_files": args.small_files,
            "small_kib": args.small_kib,
            "latency_files": args.latency_files,
            "load_repeats": args.load_repeats,
            "warmup": args.warmup,
        },
        "negotiated": algorithms,
    }

    # 1. big file
    for _ in range(args.warmup):  # untimed: first-use costs (code paths, pool threads, pages)
        for server in bench.order(0):
            bench.big_upload(server)
            bench.small_files(server)
    big_runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rep in range(args.reps):
        for server in bench.order(rep):
            r = bench.big_upload(server)
            big_runs[server.name].append(r)
            log(
                f"big file  rep {rep + 1}/{args.reps} {server.name:8s} {r['mb_s']:7.1f} MB/s "
                f"({r['seconds']:.2f} s, server CPU {r['server_cpu_s']} s of which loop "
                f"thread {r['server_loop_cpu_s']} s, client CPU {r['client_cpu_s']} s)"
            )
    big_median = {n: statistics.median(r["mb_s"] for r in big_runs[n]) for n in names}
    results["big_file"] = {
        "mib": args.big_mib,
        "runs": big_runs,
        "median_mb_s": big_median,
        "median_server_cpu_s": {
            n: statistics.median(r["server_cpu_s"] for r in big_runs[n]) for n in names
        },
        "median_client_cpu_s": {
            n: statistics.median(r["client_cpu_s"] for r in big_runs[n]) for n in names
        },
        "ratio": round(big_median["ingest"] / big_median["baseline"], 3),
        "target_ratio": 0.9,
    }

    # 2. small files
    small_runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rep in range(args.reps):
        for server in bench.order(rep):
            r = bench.small_files(server)
            small_runs[server.name].append(r)
            log(
                f"small files rep {rep + 1}/{args.reps} {server.name:8s} "
                f"{r['files_s']:7.1f} files/s ({r['seconds']:.2f} s)"
            )
    small_median = {n: statistics.median(r["files_s"] for r in small_runs[n]) for n in names}
    results["small_files"] = {
        "count": args.small_files,
        "kib": args.small_kib,
        "runs": small_runs,
        "median_files_s": small_median,
        "median_server_cpu_ms_per_file": {
            n: round(
                1000
                * statistics.median(r["server_cpu_s"] for r in small_runs[n])
                / args.small_files,
                3,
            )
            for n in names
        },
        "ratio": round(small_median["ingest"] / small_median["baseline"], 3),
    }

    # 3. responsiveness
    latency: dict[str, Any] = {}
    for name in names if args.latency_baseline else ["ingest"]:
        server = servers[name]
        idle = bench.latency_idle(server)
        loaded, load_info = bench.latency_loaded(server)
        latency[name] = {
            "idle": latency_summary(idle),
            "loaded": latency_summary(loaded),
            **load_info,
        }
        log(
            f"latency {name}: idle {latency[name]['idle']}, during the big upload "
            f"{latency[name]['loaded']} (big upload meanwhile {load_info['a_mb_s']} MB/s)"
        )
    results["latency"] = latency
    return results


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    neg = results["negotiated"]["ingest"]
    st = results["settings"]
    big, small, lat = results["big_file"], results["small_files"], results["latency"]
    names = ("ingest", "baseline")
    out = [
        "",
        "ingest upload benchmark (loopback, OpenSSH sftp -b, key auth)",
        f"  machine : {m['nproc']} CPUs, {m['cpu_model']}, Linux {m['kernel']}",
        f"  software: ingest {m['ingest_commit']}, Python {m['python']}, asyncssh "
        f"{m['asyncssh']}, {m['openssh']}",
        f"  ssh     : cipher {neg.get('cipher')}, kex {neg.get('kex')}, sftp writes of "
        f"{neg.get('sftp_write_len')} bytes; identical for both servers",
        f"  median of {st['reps']} timed runs per server, alternating, after {st['warmup']} "
        "untimed; MB = 10^6 bytes",
        "",
        f"1. single stream, one {big['mib']} MiB file",
        f"   {'server':9s} {'MB/s':>7s}   {'server CPU s':>12s} {'client CPU s':>12s}   "
        "runs (MB/s)",
    ]
    for name in names:
        speeds = " ".join(f"{r['mb_s']:.0f}" for r in big["runs"][name])
        out.append(
            f"   {name:9s} {big['median_mb_s'][name]:7.1f}   "
            f"{big['median_server_cpu_s'][name]:12.2f} "
            f"{big['median_client_cpu_s'][name]:12.2f}   {speeds}"
        )
    verdict = "meets" if big["ratio"] >= big["target_ratio"] else "BELOW"
    out.append(
        f"   ratio ingest/baseline: {big['ratio']:.3f}  ({verdict} the target "
        f">= {big['target_ratio']})"
    )
    out += [
        "",
        f"2. {small['count']} files of {small['kib']} KiB in one sftp session",
        f"   {'server':9s} {'files/s':>7s}   {'server CPU ms/file':>18s}   runs (files/s)",
    ]
    for name in names:
        runs = " ".join(f"{r['files_s']:.0f}" for r in small["runs"][name])
        out.append(
            f"   {name:9s} {small['median_files_s'][name]:7.1f}   "
            f"{small['median_server_cpu_ms_per_file'][name]:18.3f}   {runs}"
        )
    out.append(f"   ratio ingest/baseline: {small['ratio']:.3f}")
    out += [
        "",
        f"3. responsiveness: district B puts {small['kib']} KiB files one at a time in "
        "one session;",
        "   latency = put + one pwd round trip, as the client sees it",
        f"   {'server':9s} {'condition':36s} {'n':>5s} {'p50 ms':>7s} {'p99 ms':>7s} "
        f"{'max ms':>7s}",
    ]
    for name, entry in lat.items():
        rows = (("idle", "idle"), ("loaded", f"district A uploading ({entry['a_mb_s']:.0f} MB/s)"))
        for cond, label in rows:
            q = entry[cond]
            if not q["n"]:
                out.append(f"   {name:9s} {label:36s}     0  (no sample: upload too short)")
                continue
            out.append(
                f"   {name:9s} {label:36s} {q['n']:5d} {q['p50_ms']:7.2f} "
                f"{q['p99_ms']:7.2f} {q['max_ms']:7.2f}"
            )
    return "\n".join(out) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark uploads into the ingest daemon against a bare asyncssh server."
    )
    parser.add_argument("--big-mib", type=int, default=256, help="big file size (default 256)")
    parser.add_argument(
        "--reps",
        type=int,
        default=5,
        help="timed runs per server for phases 1 and 2, alternating (default 5)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed runs per server before phases 1 and 2 (default 1)",
    )
    parser.add_argument(
        "--small-files", type=int, default=500, help="files in the small-file phase (default 500)"
    )
    parser.add_argument("--small-kib", type=int, default=2, help="small file size (default 2)")
    parser.add_argument(
        "--latency-files",
        type=int,
        default=200,
        help="district B's files in the idle latency run (default 200)",
    )
    parser.add_argument(
        "--load-repeats",
        type=int,
        default=4,
        help="times district A uploads the big file back to back while B's "
        "latency is measured (default 4)",
    )
    parser.add_argument(
        "--cipher",
        default="aes128-gcm@openssh.com",
        help="sftp -c for both servers (default aes128-gcm@openssh.com)",
    )
    parser.add_argument(
        "--kex",
        default="curve25519-sha256",
        help="KexAlgorithms for both servers (default curve25519-sha256)",
    )
    parser.add_argument(
        "--no-latency-baseline",
        dest="latency_baseline",
        action="store_false",
        help="measure phase 3 on the ingest daemon only",
    )
    add_output_options(
        parser,
        keep_tmp_help="leave the temporary directory (logs, data) for inspection",
        json_help="print the results as JSON on stdout instead of the table",
        save_help="also write the results as JSON to FILE",
    )
    args = parser.parse_args(argv)
    if (
        args.reps < 1
        or args.big_mib < 1
        or args.small_files < 1
        or args.load_repeats < 1
        or args.warmup < 0
        or args.latency_files < 1
    ):
        parser.error("sizes and counts must be at least 1")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["_baseline-server"]:
        baseline_server(*argv[1:4])
        return 0
    args = parse_args(argv)
    for tool in ("sftp", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install openssh-client)", file=sys.stderr)
            return 2

    return run_main(
        args, run, render, tmp_prefix="ingest-bench-", stopped="servers", stop_timeout=10
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
