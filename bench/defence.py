#!/usr/bin/env python3
"""Defence benchmark: a legitimate district's login+upload latency while others attack.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/defence.py            # about 3 minutes, summary table
    .venv/bin/python bench/defence.py --json     # machine-readable results
    .venv/bin/python bench/defence.py --samples 20 --help

The daemon is a real ``python -m ingest serve`` subprocess on 127.0.0.1, port 0, at its
default settings. Two districts with ed25519 keys: ``legit`` and ``attacker``. The
legitimate district connects from 127.0.0.1 with paramiko and, ``--samples`` times one
after another, logs in, uploads a 4 KiB file and disconnects; each sample is timed from
connect to disconnect. It does so idle first (the baseline: it also makes 127.0.0.1 an
address that logged in before), then under each attack, each run by a child process of
this script (``--attack NAME``) so that the attacker's Python does not share the
measuring client's CPU time slice:

* ``preauth``: 256 TCP connections from 127.0.0.2-127.0.0.9 that never send a byte, each
  reopened as soon as the server closes it;
* ``passwords``: 50 threads guessing passwords (for ``legit`` and for unknown names), one
  attempt per connection, from 250 addresses 127.0.1.1-250 in turn (the defender bans
  each after 15 points, so the flood lasts);
* ``sparse``: the attacker district, 4 sessions making files with holes (a truncate to
  ``max_file_bytes``, a byte written at its end) and removing them, in a loop;
* ``handles``: the attacker district, 4 connections x 60 open files, each written with
  just under 4 MiB (the write-behind batch) and kept open: 240 handles, 945 MiB.

During ``handles`` the daemon's RSS (``/proc/<pid>/status`` VmRSS) is sampled every
0.2 s; the growth is the peak minus the RSS just before the attack. Targets: legitimate
p99 <= 1 s under each attack; RSS growth <= 64 MiB under the handle abuse. Ratios are
against the idle baseline of the same run. See docs/performance.md for figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paramiko  # type: ignore[import-untyped]
from _common import (
    BenchError,
    Registry,
    add_output_options,
    log,
    machine_info,
    run_main,
    summary,
)
from _daemon import add_districts, open_sftp, start_daemon, write_client_key, write_known_hosts

ATTACKS = ("preauth", "passwords", "sparse", "handles")
TARGET_P99_MS = 1000.0
TARGET_RSS_MIB = 64.0
EPOCH = "/upload/20260101-000000"
PAYLOAD = b"Email,First Name,Last Name\n" + b"a@example.org,A,B\n" * 220  # about 4 KiB


# --- the attacks (child processes) --------------------------------------------------------------


def attack_preauth(port: int) -> None:
    sources = [f"127.0.0.{n}" for n in range(2, 10)]
    slots: list[tuple[str, socket.socket | None, float]] = [
        (sources[i % len(sources)], None, 0.0) for i in range(256)
    ]
    while True:
        now = time.monotonic()
        for i, (source, sock, opened) in enumerate(slots):
            if sock is not None:
                try:
                    sock.setblocking(False)
                    alive = sock.recv(4096, socket.MSG_PEEK) != b""
                except BlockingIOError:
                    alive = True
                except OSError:
                    alive = False
                if alive:
                    continue
                sock.close()
            if now - opened < 0.5:  # reopen a closed slot at most twice a second
                slots[i] = (source, None, opened)
                continue
            try:
                sock = socket.create_connection(("127.0.0.1", port), 2, (source, 0))
            except OSError:
                sock = None
            slots[i] = (source, sock, now)
        time.sleep(0.1)


def attack_passwords(port: int, district: str) -> None:
    counter = iter(range(1 << 62))
    lock = threading.Lock()

    def guesser() -> None:
        while True:
            with lock:
                n = next(counter)
            source = f"127.0.1.{1 + n % 250}"
            user = district if n % 2 else f"nobody{n % 97}"
            with contextlib.suppress(Exception):
                sock = socket.create_connection(("127.0.0.1", port), 5, (source, 0))
                transport = paramiko.Transport(sock)
                try:
                    transport.connect()
                    transport.auth_password(user, f"guess-{n}-not-the-password")
                except Exception:
                    pass
                finally:
                    transport.close()

    for _ in range(50):
        threading.Thread(target=guesser, daemon=True).start()
    threading.Event().wait()


def attack_sparse(port: int, district: str, key: Path, known_hosts: Path) -> None:
    from ingest.config import ProvisioningConfig

    limit = ProvisioningConfig().max_file_bytes
    pkey = paramiko.Ed25519Key.from_private_key_file(str(key))

    def session(n: int) -> None:
        while True:
            with contextlib.suppress(Exception):
                client, sftp = open_sftp(port, pkey, known_hosts, district, 30)
                with contextlib.closing(client):
                    for i in range(1_000_000):
                        path = f"{EPOCH}/sparse{n}-{i}.csv"
                        with sftp.open(path, "wb") as fh:
                            fh.truncate(limit)  # a hole of max_file_bytes
                        with sftp.open(path, "r+") as fh:
                            fh.seek(limit - 1)
                            fh.write(b"\n")
                        with contextlib.suppress(OSError):
                            sftp.remove(path)

    for n in range(4):
        threading.Thread(target=session, args=(n,), daemon=True).start()
    threading.Event().wait()


def attack_handles(port: int, district: str, key: Path, known_hosts: Path) -> None:
    pkey = paramiko.Ed25519Key.from_private_key_file(str(key))
    chunk = b"x" * (4 * 1024 * 1024 - 64 * 1024)  # just under the write-behind batch
    kept: list[Any] = []
    ready = threading.Barrier(5)

    def connection(n: int) -> None:
        try:
            client, sftp = open_sftp(port, pkey, known_hosts, district, 60)
            kept.append(client)
            for i in range(60):
                fh = sftp.open(f"{EPOCH}/held{n}-{i}.csv", "wb")
                fh.set_pipelined(True)
                fh.write(chunk)
                kept.append(fh)
        except Exception as exc:
            print(f"failed: {exc!r}", flush=True)
            os._exit(1)
        ready.wait()
        threading.Event().wait()

    for n in range(4):
        threading.Thread(target=connection, args=(n,), daemon=True).start()
    ready.wait()
    print("ready", flush=True)
    threading.Event().wait()


def run_attack(args: argparse.Namespace) -> int:
    if args.attack == "preauth":
        attack_preauth(args.port)
    elif args.attack == "passwords":
        attack_passwords(args.port, args.district)
    elif args.attack == "sparse":
        attack_sparse(args.port, args.district, args.key, args.known_hosts)
    else:
        attack_handles(args.port, args.district, args.key, args.known_hosts)
    return 0


# --- the measurement ------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise BenchError("no VmRSS")


def login_and_upload(port: int, pkey: Any, known_hosts: Path, user: str) -> float:
    started = time.monotonic()
    client, sftp = open_sftp(port, pkey, known_hosts, user, 30)
    with contextlib.closing(client):
        sftp.putfo(io.BytesIO(PAYLOAD), f"{EPOCH}/users.csv")
    return (time.monotonic() - started) * 1000


def measure(port: int, pkey: Any, known_hosts: Path, samples: int) -> dict[str, Any]:
    ms, failures = [], 0
    for _ in range(samples):
        try:
            ms.append(login_and_upload(port, pkey, known_hosts, "legit"))
        except Exception as exc:  # a refused or failed login counts, and is shown
            failures += 1
            log(f"legit login+upload failed: {exc!r}")
    return {**summary(ms), "failures": failures}


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(OSError, BenchError):
                self.peak = max(self.peak, rss_mib(self.pid))


def start_attack(
    reg: Registry, name: str, port: int, key: Path, known_hosts: Path
) -> subprocess.Popen[str]:
    proc = reg.popen(
        [
            sys.executable,
            __file__,
            "--attack",
            name,
            "--port",
            str(port),
            "--district",
            "attacker" if name in ("sparse", "handles") else "legit",
            "--key",
            str(key),
            "--known-hosts",
            str(known_hosts),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    return proc


def count_events(log_path: Path, names: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)
    with log_path.open() as f:
        for line in f:
            with contextlib.suppress(ValueError):
                event = json.loads(line).get("event")
                if event in counts:
                    counts[event] += 1
    return counts


def read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """The child's next line of output, or what went wrong ("" when it exited)."""
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            return proc.stdout.readline().strip()
        if proc.poll() is not None:
            return f"exited with {proc.returncode}"
    return "timed out"


def run(args: argparse.Namespace, reg: Registry, work: Path) -> dict[str, Any]:
    key_path, public = write_client_key(work)
    daemon = start_daemon(reg, work, index_all=False)
    add_districts(daemon, ["legit", "attacker"], public)
    known_hosts = write_known_hosts(daemon, work)
    for name in ("legit", "attacker"):
        (daemon.data_dir / "districts" / name / EPOCH.lstrip("/")).mkdir()
    pkey = paramiko.Ed25519Key.from_private_key_file(str(key_path))
    pid = daemon.proc.pid
    results: dict[str, Any] = {"machine": machine_info(paramiko=paramiko.__version__)}
    log(f"idle: {args.samples} logins+uploads")
    login_and_upload(daemon.port, pkey, known_hosts, "legit")  # warm-up
    phases: dict[str, Any] = {"idle": measure(daemon.port, pkey, known_hosts, args.samples)}
    for attack in args.attacks:
        log(f"{attack}: starting the attack")
        before = rss_mib(pid)
        with RssSampler(pid) as sampler:
            proc = start_attack(reg, attack, daemon.port, key_path, known_hosts)
            if attack == "handles":
                said = read_line(proc, deadline=time.monotonic() + 600)
                if said != "ready":
                    raise BenchError(f"the handle attack did not get its handles: {said}")
                log("handles: 240 handles open and written")
            else:
                time.sleep(args.warmup)  # the attack's own ramp-up, not synchronisation
            phase = measure(daemon.port, pkey, known_hosts, args.samples)
            held = rss_mib(pid)
            reg.stop(proc)
        # What the attacker left in its folder (cut-off files count against its quota).
        for leftover in (daemon.data_dir / "districts/attacker" / EPOCH.lstrip("/")).iterdir():
            leftover.unlink()
        phase["ratio_p99_vs_idle"] = round(phase.get("p99_ms", 0) / phases["idle"]["p99_ms"], 2)
        if attack == "handles":
            phase["rss_before_mib"] = round(before, 1)
            phase["rss_peak_mib"] = round(sampler.peak, 1)
            phase["rss_held_mib"] = round(held, 1)
            phase["rss_growth_mib"] = round(sampler.peak - before, 1)
            phase["rss_after_mib"] = round(rss_mib(pid), 1)
        phases[attack] = phase
        log(f"{attack}: {json.dumps(phase)}")
    results["phases"] = phases
    results["log_counts"] = count_events(
        work / "daemon.log", ("connection.refused", "auth.failed", "defender.banned")
    )
    results["targets"] = {"p99_ms": TARGET_P99_MS, "rss_growth_mib": TARGET_RSS_MIB}
    return results


def render(results: dict[str, Any]) -> str:
    lines = [
        "legitimate district: login + 4 KiB upload + disconnect (ms)",
        f"{'phase':<10} {'n':>4} {'p50':>8} {'p99':>8} {'max':>8} {'fail':>5} {'p99/idle':>9}",
    ]
    for name, phase in results["phases"].items():
        lines.append(
            f"{name:<10} {phase['n']:>4} {phase.get('p50_ms', 0):>8.1f} "
            f"{phase.get('p99_ms', 0):>8.1f} {phase.get('max_ms', 0):>8.1f} "
            f"{phase['failures']:>5} {phase.get('ratio_p99_vs_idle', 1.0):>9.2f}"
        )
    handles = results["phases"].get("handles")
    if handles:
        lines.append(
            f"\nRSS under 240 open handles x ~4 MiB: {handles['rss_before_mib']} MiB before, "
            f"peak {handles['rss_peak_mib']} MiB (growth {handles['rss_growth_mib']} MiB; "
            f"target <= {TARGET_RSS_MIB:.0f}), {handles['rss_held_mib']} MiB with the handles "
            f"held, {handles['rss_after_mib']} MiB after they left"
        )
    lines.append(f"target: p99 <= {TARGET_P99_MS:.0f} ms under every attack")
    lines.append(f"daemon log: {json.dumps(results['log_counts'])}")
    machine = results["machine"]
    lines.append(f"machine: {machine['nproc']} CPUs, {machine['cpu_model']}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=40, help="logins+uploads per phase")
    parser.add_argument(
        "--attacks",
        type=lambda v: [a for a in v.split(",") if a],
        default=list(ATTACKS),
        help=f"comma-separated, in order (default: {','.join(ATTACKS)})",
    )
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds an attack runs before measuring"
    )
    add_output_options(
        parser,
        keep_tmp_help="keep the temporary directory (daemon log in daemon.log)",
        json_help="print the results as JSON",
        save_help="also write the JSON results to FILE",
    )
    # The child-process side (internal).
    parser.add_argument("--attack", choices=ATTACKS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--district", help=argparse.SUPPRESS)
    parser.add_argument("--key", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--known-hosts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [a for a in args.attacks if a not in ATTACKS]
    if unknown:
        parser.error(f"unknown attacks: {', '.join(unknown)}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.attack:
        return run_attack(args)
    return run_main(args, run, render, tmp_prefix="ingest-defence-", stopped="daemon")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
