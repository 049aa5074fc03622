#!/usr/bin/env python3
"""Epoch latency benchmark: from the close of COMPLETE to the processor starting.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/latency.py                  # 200 epochs, 2 districts, both variants
    .venv/bin/python bench/latency.py --json           # machine-readable results on stdout
    .venv/bin/python bench/latency.py --session fresh  # one variant only
    .venv/bin/python bench/latency.py --help

The daemon is a real ``python -m ingest serve`` subprocess on 127.0.0.1, port 0, with JSON
logs and a fresh data dir; every other setting is the default (in particular
``epochs.publish_linger``), because the figures must describe default behaviour. Districts
are added with an ed25519 key through :class:`ingest.store.DistrictStore`, as in
``tests/harness.py``.

Each district is a thread with an in-process paramiko client that uploads its epochs one
after another, as a nightly job does: ``mkdir /upload/YYYYMMDD-HHMMSS``, ``users.csv`` (a
header and a few rows), then an empty ``COMPLETE``. Epoch names are a fixed date plus a
counter in the seconds, so they are distinct, valid and sort in upload order (never
superseded). Two variants, each against its own fresh daemon:

* ``reuse``: one SSH connection and SFTP session per district, kept open for all of its
  epochs and closed after the last one;
* ``fresh``: a new SSH connection and SFTP session for every epoch, closed after COMPLETE.

The measurement comes from the daemon's own log timestamps (ISO 8601 UTC, one process
clock), matched per district and epoch:

* **close -> claimed** (the target): ``upload.finished`` of ``/upload/<epoch>/COMPLETE`` to
  ``epoch.claimed``, i.e. from the client's close of COMPLETE to the processor starting;
* **ready**: ``epoch.ready``'s own ``since_marker_ms``;
* **close -> published**: ``upload.finished`` of COMPLETE to ``epoch.published``;
* a breakdown between the intermediate events (ready, claimed, outcome, published, and the
  ``session.closed`` of the connection that uploaded COMPLETE: publishing lingers for it,
  up to ``epochs.publish_linger``).

``--wait-claimed`` makes each district wait for ``epoch.claimed`` of an epoch before it
uploads the next one: the latency of one epoch on its own, without queueing behind the
district's earlier epochs. Synchronisation waits on the log with a deadline; nothing
sleeps. Targets: close -> claimed p50 <= 100 ms and p99 <= 1 s. See docs/performance.md
for figures and interpretation.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paramiko  # type: ignore[import-untyped]
from _common import (
    BenchError,
    Registry,
    add_output_options,
    git_commit,
    log,
    machine_info,
    run_main,
    rusage_cpu,
    summary,
)
from _daemon import (
    Daemon,
    add_districts,
    open_sftp,
    start_daemon,
    write_client_key,
    write_known_hosts,
)

BASE_EPOCH = datetime(2025, 1, 1, 2, 0, 0, tzinfo=UTC)  # in the past: no epoch_in_future
MARKER = "COMPLETE"
USERS = (
    b"Email,First Name,Last Name\n"
    b"ada.lovelace@example.org,Ada,Lovelace\n"
    b"alan.turing@example.org,Alan,Turing\n"
    b"grace.hopper@example.org,Grace,Hopper\n"
)
TARGET_P50_MS = 100.0
TARGET_P99_MS = 1000.0
OUTCOMES = ("epoch.applied", "epoch.rejected", "epoch.held", "epoch.failed")


# --- the districts (paramiko, one thread each) --------------------------------------------


@dataclass
class ClientSide:
    """What one district's thread saw, in time.time() seconds (same clock as the daemon)."""

    district: str
    epochs: list[str]
    connect_s: list[float] = field(default_factory=list)  # SSH + auth + SFTP open
    started: dict[str, float] = field(default_factory=dict)  # before the mkdir
    closed: dict[str, float] = field(default_factory=dict)  # COMPLETE's close answered
    error: BaseException | None = None


@dataclass
class ClientSettings:
    port: int
    key: Any  # paramiko.Ed25519Key
    known_hosts: Path
    fresh: bool
    timeout: float
    # --wait-claimed: called after each epoch; returns once the daemon claimed it
    wait_claimed: Callable[[str, str], None] | None = None


def connect(settings: ClientSettings, user: str) -> tuple[Any, Any]:
    return open_sftp(settings.port, settings.key, settings.known_hosts, user, settings.timeout)


def upload_epoch(sftp: Any, name: str) -> None:
    sftp.mkdir(f"/upload/{name}")
    with sftp.open(f"/upload/{name}/users.csv", "wb") as fh:
        fh.write(USERS)
    with sftp.open(f"/upload/{name}/{MARKER}", "wb"):
        pass  # an empty marker: open + close


def district_thread(
    settings: ClientSettings, side: ClientSide, ready: threading.Barrier, abort: threading.Event
) -> None:
    client: Any = None
    sftp: Any = None
    try:
        if not settings.fresh:
            t0 = time.perf_counter()
            client, sftp = connect(settings, side.district)
            side.connect_s.append(time.perf_counter() - t0)
        ready.wait(timeout=settings.timeout)
        for name in side.epochs:
            if abort.is_set():
                return
            if settings.fresh:
                t0 = time.perf_counter()
                client, sftp = connect(settings, side.district)
                side.connect_s.append(time.perf_counter() - t0)
            side.started[name] = time.time()
            upload_epoch(sftp, name)
            side.closed[name] = time.time()
            if settings.wait_claimed is not None:
                settings.wait_claimed(side.district, name)
            if settings.fresh:
                sftp.close()
                client.close()
                client = sftp = None
        if not settings.fresh:
            sftp.close()
            client.close()
            client = sftp = None
    except BaseException as exc:
        side.error = exc
        abort.set()
        with contextlib.suppress(threading.BrokenBarrierError):
            ready.abort()
    finally:
        for thing in (sftp, client):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()


def epoch_names(count: int) -> list[str]:
    """Distinct, valid, increasing names: a fixed date plus ``count`` seconds."""
    return [(BASE_EPOCH + timedelta(seconds=i)).strftime("%Y%m%d-%H%M%S") for i in range(count)]


# (key, label) of the rows in the order they are printed
METRICS = (
    ("close_to_claimed", "close of COMPLETE -> epoch.claimed (target)"),
    ("ready_since_marker", "epoch.ready since_marker_ms"),
    ("close_to_published", "close of COMPLETE -> epoch.published"),
    ("close_to_ready", "  close of COMPLETE -> epoch.ready"),
    ("ready_to_claimed", "  epoch.ready -> epoch.claimed"),
    ("claimed_to_outcome", "  epoch.claimed -> epoch.applied"),
    ("outcome_to_published", "  epoch.applied -> epoch.published"),
    ("close_to_session_closed", "  close of COMPLETE -> its session.closed"),
    ("session_closed_to_published", "  its session.closed -> epoch.published"),
    ("client_close_to_claimed", "  client got COMPLETE's close reply -> claimed"),
    ("client_epoch_upload", "client: mkdir + users.csv + COMPLETE"),
)


# --- one variant -----------------------------------------------------------------------------


def run_variant(
    args: argparse.Namespace, reg: Registry, work: Path, variant: str
) -> dict[str, Any]:
    fresh = variant == "fresh"
    vwork = work / variant
    vwork.mkdir()
    key_path, public_key = write_client_key(vwork)
    daemon = start_daemon(reg, vwork)
    log(f"{variant}: daemon pid {daemon.proc.pid} on port {daemon.port}")
    try:
        return measure(args, daemon, vwork, key_path, public_key, fresh)
    finally:
        reg.stop(daemon.proc)


def measure(
    args: argparse.Namespace,
    daemon: Daemon,
    work: Path,
    key_path: Path,
    public_key: str,
    fresh: bool,
) -> dict[str, Any]:
    districts = [f"district-{i + 1:02d}" for i in range(args.districts)]
    add_districts(daemon, districts, public_key)
    settings = ClientSettings(
        port=daemon.port,
        key=paramiko.Ed25519Key.from_private_key_file(str(key_path)),
        known_hosts=write_known_hosts(daemon, work),
        fresh=fresh,
        timeout=args.timeout,
    )
    if args.wait_claimed:

        def wait_claimed(district: str, name: str) -> None:
            daemon.wait_event(
                "epoch.claimed", time.monotonic() + args.timeout, district=district, epoch=name
            )

        settings.wait_claimed = wait_claimed
    per_district = [
        args.epochs // args.districts + (1 if i < args.epochs % args.districts else 0)
        for i in range(args.districts)
    ]
    sides = [ClientSide(d, epoch_names(n)) for d, n in zip(districts, per_district, strict=True)]
    ready = threading.Barrier(len(sides))
    abort = threading.Event()
    threads = [
        threading.Thread(
            target=district_thread,
            args=(settings, side, ready, abort),
            daemon=True,
            name=side.district,
        )
        for side in sides
    ]
    log(
        f"{'fresh session per epoch' if fresh else 'one session per district'}: "
        f"{args.epochs} epochs over {args.districts} districts ({per_district})"
    )
    t_start, wall_start = time.monotonic(), time.time()
    cpu_before = (*daemon.cpu(), rusage_cpu())
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + args.timeout + args.epochs * 2.0
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            abort.set()
            raise BenchError(f"{thread.name}: uploads did not finish in time")
    failed = [side for side in sides if side.error is not None]
    # the thread that failed first; the others only saw the barrier or the abort
    failed.sort(key=lambda side: isinstance(side.error, threading.BrokenBarrierError))
    if failed:
        side = failed[0]
        raise BenchError(f"{side.district}: upload failed: {side.error!r}") from side.error
    uploaded_s = time.monotonic() - t_start
    log(f"all {args.epochs} epochs uploaded in {uploaded_s:.2f} s; waiting for the daemon")

    total = args.epochs
    daemon.wait_count("epoch.claimed", total, time.monotonic() + args.timeout)
    claimed_s = time.monotonic() - t_start
    cpu_after = (*daemon.cpu(), rusage_cpu())
    cpu = [after - before for after, before in zip(cpu_after, cpu_before, strict=True)]
    # Publishing may linger up to epochs.publish_linger (default 30 s) while the uploading
    # session is open; the sessions are closed by now, so this is quick unless it is stuck.
    daemon.wait_count("epoch.published", total, time.monotonic() + args.timeout + 30)
    result = analyse(daemon, sides, total, fresh, uploaded_s, wall_start)
    result["paced"] = bool(args.wait_claimed)
    result["all_claimed_seconds"] = round(claimed_s, 3)
    result["all_published_seconds"] = round(time.monotonic() - t_start, 3)
    # from the first upload until the last epoch.claimed; 10 ms ticks
    result["cpu_seconds"] = {
        "daemon": round(cpu[0], 2),
        "daemon_loop_thread": round(cpu[1], 2),
        "client": round(cpu[2], 2),
    }
    return result


def analyse(
    daemon: Daemon,
    sides: list[ClientSide],
    total: int,
    fresh: bool,
    uploaded_s: float,
    wall_start: float,
) -> dict[str, Any]:
    def index(event: str) -> dict[tuple[str, str], dict[str, Any]]:
        """First record of ``event`` per (district, epoch)."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for r in daemon.events(event):
            found.setdefault((str(r.get("district")), str(r.get("epoch"))), r)
        return found

    marker_closed: dict[tuple[str, str], dict[str, Any]] = {}
    for r in daemon.events("upload.finished"):
        parts = str(r.get("path", "")).strip("/").split("/")
        if len(parts) == 3 and parts[0] == "upload" and parts[2] == MARKER:
            marker_closed.setdefault((str(r.get("district")), parts[1]), r)
    # the SSH connection that uploaded COMPLETE ended (publishing lingers until then)
    gone_at = {str(r.get("session_id")): float(r["_ts"]) for r in daemon.events("session.closed")}
    ready, claimed, published = (
        index("epoch.ready"),
        index("epoch.claimed"),
        index("epoch.published"),
    )
    outcome: dict[tuple[str, str], dict[str, Any]] = {}
    for name in OUTCOMES:
        for key, r in index(name).items():
            outcome.setdefault(key, r)

    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for side in sides:
        for name in side.epochs:
            key = (side.district, name)
            missing = [
                label
                for label, table in (
                    ("upload.finished COMPLETE", marker_closed),
                    ("epoch.ready", ready),
                    ("epoch.claimed", claimed),
                    ("outcome", outcome),
                    ("epoch.published", published),
                )
                if key not in table
            ]
            if missing:
                problems.append(f"{side.district}/{name}: no {', '.join(missing)}")
                continue
            t_close, t_ready = marker_closed[key]["_ts"], ready[key]["_ts"]
            t_claimed, t_outcome = claimed[key]["_ts"], outcome[key]["_ts"]
            t_published = published[key]["_ts"]
            t_gone = gone_at.get(str(marker_closed[key].get("session_id")))
            if t_gone is None:
                problems.append(f"{side.district}/{name}: no session.closed")
                continue
            if outcome[key]["event"] != "epoch.applied":
                problems.append(f"{side.district}/{name}: {outcome[key]['event']}")
            if claimed[key].get("attempt") != 1:
                problems.append(f"{side.district}/{name}: attempt {claimed[key].get('attempt')}")
            rows.append(
                {
                    "district": side.district,
                    "epoch": name,
                    # when COMPLETE was closed and its session ended, since the uploads began
                    "close_at_ms": (t_close - wall_start) * 1000,
                    "session_closed_at_ms": (t_gone - wall_start) * 1000,
                    "close_to_claimed": (t_claimed - t_close) * 1000,
                    "ready_since_marker": ready[key].get("since_marker_ms"),
                    "close_to_published": (t_published - t_close) * 1000,
                    "close_to_ready": (t_ready - t_close) * 1000,
                    "ready_to_claimed": (t_claimed - t_ready) * 1000,
                    "claimed_to_outcome": (t_outcome - t_claimed) * 1000,
                    "outcome_to_published": (t_published - t_outcome) * 1000,
                    "close_to_session_closed": (t_gone - t_close) * 1000,
                    "session_closed_to_published": (t_published - t_gone) * 1000,
                    "client_close_to_claimed": (t_claimed - side.closed[name]) * 1000,
                    "client_epoch_upload": (side.closed[name] - side.started[name]) * 1000,
                }
            )
    if len(rows) != total:
        raise BenchError(
            f"only {len(rows)} of {total} epochs have every event: " + "; ".join(problems[:10])
        )
    metrics = {
        key: summary([float(r[key]) for r in rows if r[key] is not None]) for key, _ in METRICS
    }
    target = metrics["close_to_claimed"]
    connects = [s * 1000 for side in sides for s in side.connect_s]
    return {
        "session": "fresh" if fresh else "reuse",
        "epochs": total,
        "districts": len(sides),
        "upload_seconds": round(uploaded_s, 3),
        "epochs_per_second": round(total / uploaded_s, 1),
        "connect": summary(connects),
        "metrics": metrics,
        "targets": {
            "p50_ms": TARGET_P50_MS,
            "p99_ms": TARGET_P99_MS,
            "p50_met": target["p50_ms"] <= TARGET_P50_MS,
            "p99_met": target["p99_ms"] <= TARGET_P99_MS,
        },
        "problems": problems,
        "samples": [
            {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in rows
        ],
    }


# --- setup, run, report ----------------------------------------------------------------------


def run(args: argparse.Namespace, reg: Registry, work: Path) -> dict[str, Any]:
    info = machine_info(paramiko=paramiko.__version__)
    info["loadavg_1min_at_start"] = round(os.getloadavg()[0], 2)
    log(
        f"{info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"asyncssh {info['asyncssh']}, paramiko {info['paramiko']}, ingest {info['ingest_commit']}"
    )
    variants = ["reuse", "fresh"] if args.session == "both" else [args.session]
    results: dict[str, Any] = {
        "machine": info,
        "settings": {
            "epochs": args.epochs,
            "districts": args.districts,
            "session": args.session,
            "wait_claimed": args.wait_claimed,
            "daemon": "defaults except storage.data_dir, server.host/port, logging.format",
        },
        "variants": {},
    }
    for variant in variants:
        result = run_variant(args, reg, work, variant)
        results["variants"][variant] = result
        m = result["metrics"]["close_to_claimed"]
        log(
            f"{variant}: close -> claimed p50 {m['p50_ms']} ms, p99 {m['p99_ms']} ms, "
            f"max {m['max_ms']} ms"
        )
    at_end = git_commit()
    if at_end != info["ingest_commit"]:
        info["ingest_commit"] += f" (changed to {at_end} during the run)"
        log(f"the checkout changed during the run: {info['ingest_commit']}")
    return results


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    st = results["settings"]
    out = [
        "",
        "ingest epoch latency (loopback, paramiko, daemon with default settings)",
        f"  machine : {m['nproc']} CPUs, {m['cpu_model']}, Linux {m['kernel']}, load average "
        f"{m['loadavg_1min_at_start']} at the start",
        f"  software: ingest {m['ingest_commit']}, Python {m['python']}, asyncssh "
        f"{m['asyncssh']}, paramiko {m['paramiko']}",
        f"  {st['epochs']} epochs per variant over {st['districts']} districts in parallel, "
        + (
            "each uploaded once the daemon claimed the previous one (--wait-claimed)"
            if st["wait_claimed"]
            else "uploaded back to back"
        ),
        "  latencies in ms from the daemon's log timestamps (nearest-rank percentiles)",
    ]
    for variant, r in results["variants"].items():
        title = (
            "one SFTP session per district, reused for all its epochs"
            if variant == "reuse"
            else "a fresh SSH connection + SFTP session per epoch"
        )
        c, cpu = r["connect"], r["cpu_seconds"]
        out += [
            "",
            f"{variant}: {title}",
            f"  {r['epochs']} epochs uploaded in {r['upload_seconds']:.2f} s "
            f"({r['epochs_per_second']} epochs/s); connect + auth + SFTP open p50 "
            f"{c.get('p50_ms', 0):.1f} ms (n={c['n']})",
            f"  all claimed after {r['all_claimed_seconds']:.2f} s, all published after "
            f"{r['all_published_seconds']:.2f} s; CPU s until the last claim: daemon "
            f"{cpu['daemon']:.2f} (event-loop thread {cpu['daemon_loop_thread']:.2f}), "
            f"client {cpu['client']:.2f}",
            f"  {'ms':47s} {'n':>4s} {'p50':>8s} {'p90':>8s} {'p99':>8s} {'max':>8s} {'mean':>8s}",
        ]
        for key, label in METRICS:
            q = r["metrics"][key]
            if not q["n"]:
                out.append(f"  {label:47s}    0")
                continue
            out.append(
                f"  {label:47s} {q['n']:4d} {q['p50_ms']:8.1f} {q['p90_ms']:8.1f} "
                f"{q['p99_ms']:8.1f} {q['max_ms']:8.1f} {q['mean_ms']:8.1f}"
            )
        t, q = r["targets"], r["metrics"]["close_to_claimed"]
        out.append(
            f"  target close -> claimed: p50 {q['p50_ms']:.1f} <= {t['p50_ms']:.0f} ms "
            f"{'MET' if t['p50_met'] else 'NOT MET'}; p99 {q['p99_ms']:.1f} <= "
            f"{t['p99_ms']:.0f} ms {'MET' if t['p99_met'] else 'NOT MET'}"
        )
        if r["problems"]:
            out.append(f"  notes: {'; '.join(r['problems'][:5])}")
    return "\n".join(out) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure the latency from the close of COMPLETE to the processor starting."
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=200,
        help="epochs per variant, spread evenly over the districts (default 200)",
    )
    parser.add_argument(
        "--districts",
        type=int,
        default=2,
        help="districts uploading in parallel, one thread each (default 2)",
    )
    parser.add_argument(
        "--session",
        choices=("reuse", "fresh", "both"),
        default="both",
        help="reuse: one SFTP session per district for all its epochs; fresh: a new "
        "connection per epoch; both: one after the other, each with its own daemon "
        "(default both)",
    )
    parser.add_argument(
        "--wait-claimed",
        action="store_true",
        help="each district uploads its next epoch only after the daemon logged "
        "epoch.claimed for the previous one: latency without queueing behind earlier epochs",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="deadline in seconds for each wait on the daemon (default 60)",
    )
    add_output_options(
        parser,
        keep_tmp_help="leave the temporary directory (data, logs) for inspection",
        json_help="print the results (with every epoch's sample) as JSON on stdout",
        save_help="also write the JSON to FILE",
    )
    args = parser.parse_args(argv)
    if args.districts < 1 or args.epochs < args.districts:
        parser.error("need at least one district and at least one epoch per district")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    return run_main(args, run, render, tmp_prefix="ingest-latency-", stopped="daemon")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
