#!/usr/bin/env python3
"""Provisioning benchmark: validating and applying a large users.csv.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/provision.py                 # 1,000,000 rows, about 4 minutes
    .venv/bin/python bench/provision.py --rows 100000   # a smaller file
    .venv/bin/python bench/provision.py --json          # machine-readable results on stdout
    .venv/bin/python bench/provision.py --help

The script writes a realistic ``users.csv`` of ``--rows`` data rows (every column of the
CSV API; Excel's UTF-8 BOM and CRLF line ends; a middle name on about half the rows; a
Staff Id on 95 %; one to three buildings per role, so ``Buildings`` is often a quoted
``"A,B;C"``; ``Deleted`` blank on 99.4 % of rows, ``TRUE`` on 0.4 %, ``false`` on 0.2 %)
and a copy in which the ``Title`` of every 100th row differs. Then it runs five phases,
each in a fresh child process (this script re-invoked with a hidden ``_phase`` argument),
so that each phase's peak RSS is its own. The peak is VmHWM from /proc/self/status at the
end of the child, reset to the current RSS after the imports (``/proc/self/clear_refs``),
so that it covers the phase plus the loaded interpreter and modules, as in the daemon.
``ru_maxrss`` is recorded in the JSON too but not used: on Linux, execve() carries the
forked address space's high-water mark into it, so every child would report at least the
parent's peak. The phases:

1. ``csv_reader``: a bare ``csv.reader`` pass over the file, the baseline;
2. ``validate``: :func:`ingest.provisioning.csvapi.validate_users_csv` without ``on_row``;
3. ``apply_first``: the real processor into an empty store;
4. ``apply_again``: the same file again, which must leave every account unchanged;
5. ``apply_changed``: the copy with 1 % of the rows changed, which must update those;
6. ``apply_all_changed``: a copy in which every row's Title differs, the worst case for
   updates (no target; it shows that updating every account stays in flat memory).

The apply phases run ``ProvisioningProcessor(ProvisioningConfig())`` as the daemon does
(``apply_epoch`` in ingest/epochs/isolation.py, without the ledger's bookkeeping):
``prepare`` (validation and staging in a read snapshot), then ``process`` inside
``Database(url).connect()``; their wall time includes the COMMIT. As in the daemon, the
COMMIT does not checkpoint the write-ahead log (the daemon's ``Checkpointer`` thread does,
afterwards: ingest/store/checkpoint.py); the phase then runs that checkpoint and reports
its time separately (``checkpoint_s``), outside the wall time. The state
database is a fresh SQLite file in the temporary directory, created by
``Database.migrate()``; all three apply phases use it in turn. The district has no
settings row, so the defaults apply (upsert, no building list).

Then, unless ``--no-responsiveness``, the real daemon (``python -m ingest serve`` on its
defaults, port 0, a fresh data dir) with two districts: district B, over one paramiko SFTP
session, puts 2 KiB files one after another (open + write + close each), first 200 while
the daemon is idle, then from A's ``epoch.claimed`` until its ``epoch.applied`` while the
daemon applies district A's users.csv (the original file, hard-linked into A's upload
directory with a COMPLETE: the upload itself is bench/upload.py's subject). It reports the
put latencies (p50, p99, max) in both conditions, the apply's duration as the daemon logged
it and the daemon's peak RSS.

Reported per phase: wall time, rows/s, the ratio to the ``csv.reader`` pass (``x csv``),
the ratio to another ``csv.reader`` pass made in the phase's own process just before it
(``x adj``: the comparable figure on a machine whose speed drifts during the run), CPU seconds
and peak RSS in MB (10^6 bytes). Targets for 1,000,000 rows: first apply <= 20 s,
re-apply <= 10 s, peak RSS <= 300 MB in every phase. ``--profile DIR`` also writes a
cProfile of each phase to DIR (the timings are then inflated by the profiler).
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

from _common import (
    REPO,
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

PHASE_ARG = "_phase"
DISTRICT = "bench-district"
DOMAIN = "springfield.k12.example.org"
# (phase, epoch name, label); the epochs sort in the order they are applied
PHASES = (
    ("csv_reader", None, "csv.reader pass (baseline)"),
    ("validate", None, "validate only"),
    ("apply_first", "20250101-020000", "first apply, empty store"),
    ("apply_again", "20250102-020000", "re-apply the same file"),
    ("apply_changed", "20250103-020000", "apply with 1 % changed"),
    ("apply_all_changed", "20250104-020000", "apply, every row changed"),
)
TARGET_FIRST_S = 20.0
TARGET_AGAIN_S = 10.0
TARGET_RSS_MB = 300.0
TARGET_ROWS = 1_000_000  # the targets are stated for this size
CHANGE_EVERY = 100  # every 100th row of the changed copy has another Title

FIRST_NAMES = [
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Christopher",
    "Karen",
    "Charles",
    "Lisa",
    "Daniel",
    "Nancy",
    "Matthew",
    "Betty",
    "Anthony",
    "Sandra",
    "Mark",
    "Margaret",
    "Donald",
    "Ashley",
    "Steven",
    "Kimberly",
    "Andrew",
    "Emily",
    "Paul",
    "Donna",
    "Joshua",
    "Michelle",
    "Kenneth",
    "Carol",
    "Kevin",
    "Amanda",
    "Brian",
    "Melissa",
    "George",
    "Deborah",
    "Timothy",
    "Stephanie",
    "Ronald",
    "Rebecca",
    "Jason",
    "Sharon",
    "Edward",
    "Laura",
    "Jeffrey",
    "Cynthia",
    "Ryan",
    "Dorothy",
    "José",
    "María",
    "Zoë",
    "Siobhán",
    "Nguyễn",
    "Chloé",
]
LAST_NAMES = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "O'Brien",
    "Müller",
    "Peña",
    "Søndergaard",
]
TITLES = (
    "Teacher",
    "Math Teacher",
    "English Teacher",
    "Science Teacher",
    "Special Education Teacher",
    "Literacy Teacher",
    "Music Teacher",
    "Physical Education Teacher",
    "Paraprofessional",
    "Counselor",
    "School Psychologist",
    "Speech-Language Pathologist",
    "Librarian",
    "Nurse",
    "Assistant Principal",
    "Principal",
    "Instructional Coach",
    "Technology Coordinator",
    "Administrative Assistant",
    "Custodian",
    "Bus Driver",
    "Food Service Worker",
    "Substitute Teacher",
    "Director of Curriculum and Instruction",
)
ROLES = (
    "Teacher",
    "Teacher",
    "Teacher",
    "Staff",
    "Staff",
    "Special Education Teacher",
    "Literacy Teacher",
    "Administrator",
    "Counselor",
    "Substitute",
)
BUILDINGS = (
    "North Elementary",
    "South Elementary",
    "East Elementary",
    "West Elementary",
    "Lincoln Elementary",
    "Washington Elementary",
    "Jefferson Elementary",
    "Roosevelt Elementary",
    "Adams Middle School",
    "Madison Middle School",
    "Monroe Middle School",
    "Springfield High School",
    "Central High School",
    "Career and Technical Center",
    "Early Learning Center",
    "District Office",
)


def ascii_fold(text: str) -> str:
    """José -> jose: e-mail addresses stay ASCII, as directory exports make them."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def mb(kib: int) -> float:
    """ru_maxrss (KiB on Linux) in MB (10^6 bytes)."""
    return kib * 1024 / 1e6


def status_kib(field: str, pid: int | str = "self") -> int:
    """A KiB field of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: current RSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/{pid}/status")


def reset_peak_rss() -> bool:
    """Set VmHWM to the current RSS (Linux >= 4.0), so that a transient peak of the imports
    (asyncssh's, about 100 MB) does not count as the phase's; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


# --- the files -------------------------------------------------------------------------------


def generate(
    original: Path, changed: Path, all_changed: Path, rows: int, seed: int
) -> dict[str, int]:
    """Write users.csv with ``rows`` data rows to ``original``, the same file with the
    Title of every CHANGE_EVERY-th row changed to ``changed``, and with every Title
    changed to ``all_changed``; returns what they hold."""
    from ingest.provisioning.csvapi import COLUMNS

    rng = random.Random(seed)
    counts = {"deleted": 0, "false": 0, "changed": 0, "quoted_buildings": 0, "no_role": 0}
    # Excel's "CSV UTF-8": a BOM and CRLF line ends
    with (
        original.open("w", encoding="utf-8-sig", newline="") as a,
        changed.open("w", encoding="utf-8-sig", newline="") as b,
        all_changed.open("w", encoding="utf-8-sig", newline="") as c,
    ):
        out_a = csv.writer(a, lineterminator="\r\n")
        out_b = csv.writer(b, lineterminator="\r\n")
        out_c = csv.writer(c, lineterminator="\r\n")
        out_a.writerow(COLUMNS)
        out_b.writerow(COLUMNS)
        out_c.writerow(COLUMNS)
        for i in range(rows):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            local = ascii_fold(f"{first}.{last}{i}".replace("'", "").lower())
            if rng.random() < 0.1:  # some exports keep the case of the directory
                local = local.capitalize()
            pick = rng.random()
            middle = "" if pick < 0.5 else first[0] if pick < 0.8 else rng.choice(FIRST_NAMES)
            staff_id = f"E{i + 100000:07d}" if rng.random() < 0.95 else ""
            title_index = rng.randrange(len(TITLES))
            pick = rng.random()
            role_count = 0 if pick < 0.03 else 1 if pick < 0.85 else 2 if pick < 0.98 else 3
            roles = rng.sample(ROLES, role_count)
            groups = [
                ",".join(rng.sample(BUILDINGS, rng.choice((1, 1, 1, 2, 2, 3)))) for _ in roles
            ]
            buildings = ";".join(groups)
            counts["no_role"] += not roles
            counts["quoted_buildings"] += "," in buildings
            deleted = ""
            to_change = i % CHANGE_EVERY == 0  # never a deleted row: it must update
            if not to_change:
                pick = rng.random()
                deleted = "TRUE" if pick < 0.004 else "false" if pick < 0.006 else ""
            counts["deleted"] += deleted == "TRUE"
            counts["false"] += deleted == "false"
            row = [
                f"{local}@{DOMAIN}",
                first,
                last,
                middle,
                staff_id,
                TITLES[title_index],
                ";".join(roles),
                buildings,
                deleted,
            ]
            out_a.writerow(row)
            if to_change:
                row[5] = TITLES[(title_index + 1) % len(TITLES)]
                counts["changed"] += 1
            out_b.writerow(row)
            row[5] = f"Acting {TITLES[title_index]}"
            out_c.writerow(row)
    return counts


# --- the phases (in a child process each) ----------------------------------------------------


def run_phase(spec: dict[str, Any]) -> dict[str, Any]:
    """One phase, timed; called in the child. Imports are done before the clock starts."""
    from ingest.config import ProvisioningConfig
    from ingest.epochs.handoff import ClaimedEpoch, FileInfo
    from ingest.provisioning.csvapi import validate_users_csv
    from ingest.provisioning.processor import ProvisioningProcessor

    phase = spec["phase"]
    path = Path(spec["path"])
    if phase.startswith("apply"):  # the daemon has these loaded too (asyncssh among them)
        from ingest.store.db import Database
    processor = ProvisioningProcessor(ProvisioningConfig())
    # The baseline again, right before this phase and in this process: on a machine whose
    # speed drifts during the run, a ratio to an adjacent baseline is the comparable figure.
    t0 = time.perf_counter()
    with path.open(newline="", encoding="utf-8-sig") as fh:
        sum(1 for _ in csv.reader(fh))
    baseline_s = time.perf_counter() - t0
    result: dict[str, Any] = {
        "phase": phase,
        "baseline_s": baseline_s,
        "rss_reset": reset_peak_rss(),
    }
    result["rss_start_kib"] = status_kib("VmRSS")
    profiler = cProfile.Profile() if spec.get("profile") else None
    cpu0 = rusage_cpu()
    t0 = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    if phase == "csv_reader":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = sum(1 for _ in csv.reader(fh)) - 1  # the header is not a row
        result["counts"] = {"rows": rows}
    elif phase == "validate":
        report = validate_users_csv(path, processor.limits)
        result["counts"] = {
            "rows": report.rows,
            "valid": report.valid_rows,
            "skipped": report.bad_rows,
            "file_errors": len(report.file_errors),
        }
    else:
        database = Database(spec["db_url"], background_checkpoints=True)  # as the daemon
        # The daemon's other threads keep connections to the file open. Without one, the
        # processor's connection would be the last to close, and SQLite checkpoints then.
        other = sqlite3.connect(database.path)
        other.execute("SELECT COUNT(*) FROM sqlite_schema").fetchone()
        epoch = ClaimedEpoch(
            DISTRICT,
            spec["epoch"],
            path.parent,
            (FileInfo(path.name, path.stat().st_size, spec["sha256"]),),
            "upload",
        )
        with processor.prepare(epoch, database) as prepared, database.connect() as conn:
            outcome = processor.process(epoch, conn, prepared)
            result["process_s"] = time.perf_counter() - t0
        result["commit_s"] = time.perf_counter() - t0 - result["process_s"]
        result["status"] = outcome.status
        result["message"] = outcome.message
        result["counts"] = dict(outcome.summary)
    wall = time.perf_counter() - t0
    if phase.startswith("apply"):  # the daemon's Checkpointer thread does this afterwards
        t1 = time.perf_counter()
        database.checkpoint("PASSIVE")
        result["checkpoint_s"] = time.perf_counter() - t1
        other.close()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(spec["profile"])
    result["wall_s"] = wall
    result["cpu_s"] = rusage_cpu() - cpu0
    result["rss_peak_kib"] = status_kib("VmHWM")
    result["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # see above
    if phase.startswith("apply"):  # after the peak was read: this must not count
        db_path = Database(spec["db_url"]).path
        with Database(spec["db_url"]).read() as conn:
            result["accounts"] = conn.execute("SELECT COUNT(*) FROM accounts").fetchone()[0]
            result["changes"] = conn.execute("SELECT COUNT(*) FROM account_changes").fetchone()[0]
        wal = db_path.with_name(db_path.name + "-wal")
        result["db_bytes"] = db_path.stat().st_size
        result["wal_bytes"] = wal.stat().st_size if wal.exists() else 0
    return result


def phase_main(argv: list[str]) -> int:
    """The child: ``provision.py _phase '<json spec>'``; prints the result as JSON."""
    spec = json.loads(argv[0])
    try:
        result = run_phase(spec)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        return 130
    json.dump(result, sys.stdout)
    print()
    return 0


def spawn_phase(reg: Registry, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    proc = reg.popen(
        [sys.executable, str(Path(__file__).resolve()), PHASE_ARG, json.dumps(spec)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        reg.stop(proc)
        raise BenchError(
            f"phase {spec['phase']} took more than {timeout:.0f} s; try fewer --rows"
        ) from None
    if proc.returncode != 0:
        raise BenchError(f"phase {spec['phase']} exited with status {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# --- responsiveness: another district's uploads while the daemon applies ---------------------

PROBE_BYTES = 2048
IDLE_PUTS = 200


def put_latencies(sftp: Any, directory: str, prefix: str, until: Any) -> list[float]:
    """Put 2 KiB files one after another until ``until()`` is true; each one's open + write +
    close in ms (three round trips, as a nightly job's small upload)."""
    data = os.urandom(PROBE_BYTES)
    samples: list[float] = []
    while not until():
        t0 = time.perf_counter()
        with sftp.open(f"{directory}/{prefix}-{len(samples):06d}.csv", "wb") as fh:
            fh.write(data)
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def responsiveness(reg: Registry, work: Path, users_csv: Path, timeout: float) -> dict[str, Any]:
    """The real daemon (defaults, provisioning processor): district B puts small files while
    idle, then while the daemon applies district A's users.csv (the first apply). A's epoch
    is placed on disk, not uploaded: the upload itself is bench/upload.py's subject."""
    import paramiko  # type: ignore[import-untyped]
    from _daemon import add_districts, open_sftp, start_daemon, write_client_key, write_known_hosts

    daemon = start_daemon(reg, work / "daemon")
    key_path, public = write_client_key(work)
    add_districts(daemon, ["district-a", "district-b"], public)
    known_hosts = write_known_hosts(daemon, work)
    key = paramiko.Ed25519Key.from_private_key_file(str(key_path))
    client, sftp = open_sftp(daemon.port, key, known_hosts, "district-b", 60)
    try:
        probe_dir = "/upload/20250101-020000"  # B's epoch never gets COMPLETE: never processed
        sftp.mkdir(probe_dir)
        idle_count = iter(range(IDLE_PUTS + 1))
        idle = put_latencies(sftp, probe_dir, "idle", lambda: next(idle_count) == IDLE_PUTS)
        epoch_dir = daemon.data_dir / "districts" / "district-a" / "upload" / "20250101-020000"
        epoch_dir.mkdir(parents=True)
        os.link(users_csv, epoch_dir / "users.csv")
        (epoch_dir / "COMPLETE").touch()
        deadline = time.monotonic() + timeout
        daemon.wait_event("epoch.claimed", deadline, district="district-a")

        def finished() -> bool:
            if time.monotonic() > deadline:
                raise BenchError("district A's epoch was not applied in time")
            return bool(
                daemon.events("epoch.applied")
                or daemon.events("epoch.rejected")
                or daemon.events("epoch.failed")
            )

        busy = put_latencies(sftp, probe_dir, "busy", finished)
    finally:
        sftp.close()
        client.close()
    outcome = (
        daemon.events("epoch.applied")
        + daemon.events("epoch.rejected")
        + daemon.events("epoch.failed")
    )[0]
    hwm_kib = status_kib("VmHWM", daemon.proc.pid)
    reg.stop(daemon.proc)
    return {
        "idle": summary(idle, (50, 99)),
        "during_apply": summary(busy, (50, 99)),
        "apply_event": outcome.get("event"),
        "apply_duration_s": outcome.get("duration"),
        "apply_summary": outcome.get("summary"),
        "daemon_peak_rss_mb": round(mb(hwm_kib), 1),
    }


# --- checks, run, report ---------------------------------------------------------------------


def expected_counts(rows: int, made: dict[str, int]) -> dict[str, dict[str, int]]:
    live = rows - made["deleted"]
    zero = {"created": 0, "updated": 0, "deleted": 0, "reactivated": 0}
    return {
        "csv_reader": {"rows": rows},
        "validate": {"rows": rows, "valid": rows, "skipped": 0, "file_errors": 0},
        # Deleted rows of accounts that do not exist are counted unchanged
        "apply_first": {**zero, "rows": rows, "created": live, "unchanged": made["deleted"]},
        "apply_again": {**zero, "rows": rows, "unchanged": rows},
        "apply_changed": {
            **zero,
            "rows": rows,
            "updated": made["changed"],
            "unchanged": rows - made["changed"],
        },
        "apply_all_changed": {**zero, "rows": rows, "updated": live, "unchanged": made["deleted"]},
    }


def run(args: argparse.Namespace, reg: Registry, work: Path) -> dict[str, Any]:
    from ingest.epochs.files import sha256_file
    from ingest.store.db import Database

    info = machine_info()
    info["loadavg_1min_at_start"] = round(os.getloadavg()[0], 2)
    log(
        f"{info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"ingest {info['ingest_commit']}"
    )
    archive = work / "archive" / DISTRICT
    dirs = {epoch: archive / epoch for _, epoch, _ in PHASES if epoch is not None}
    for directory in dirs.values():
        directory.mkdir(parents=True)
    original = dirs["20250101-020000"] / "users.csv"
    changed = dirs["20250103-020000"] / "users.csv"
    all_changed = dirs["20250104-020000"] / "users.csv"
    log(f"writing users.csv with {args.rows:,} rows and two changed copies")
    started = time.monotonic()
    made = generate(original, changed, all_changed, args.rows, args.seed)
    os.link(original, dirs["20250102-020000"] / "users.csv")  # re-apply: the same bytes
    generated_s = time.monotonic() - started
    size = original.stat().st_size
    log(f"wrote {size / 1e6:.1f} MB per file in {generated_s:.1f} s")
    sha = {path: sha256_file(path) for path in (original, changed, all_changed)}
    db_url = f"sqlite:///{work / 'state' / 'ingest.db'}"
    Database(db_url).migrate()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)

    expected = expected_counts(args.rows, made)
    phases: list[dict[str, Any]] = []
    problems: list[str] = []
    for phase, epoch, label in PHASES:
        path = original if epoch is None else dirs[epoch] / "users.csv"
        spec: dict[str, Any] = {
            "phase": phase,
            "path": str(path),
            "epoch": epoch,
            "db_url": db_url,
            "sha256": sha.get(path, sha[original]),
        }
        if args.profile is not None:
            spec["profile"] = str(args.profile.resolve() / f"{phase}.prof")
        log(f"{phase}: {label} ...")
        result = spawn_phase(reg, spec, args.timeout)
        result["label"] = label
        result["rows_per_s"] = args.rows / result["wall_s"]
        want = expected[phase]
        got = {k: result["counts"].get(k) for k in want}
        if got != want:
            problems.append(f"{phase}: expected {want}, got {got}")
        if phase.startswith("apply") and result.get("status") != "applied":
            problems.append(f"{phase}: {result.get('status')}: {result.get('message')}")
        phases.append(result)
        log(
            f"{phase}: {result['wall_s']:.2f} s, {result['rows_per_s']:,.0f} rows/s, "
            f"peak RSS {mb(result['rss_peak_kib']):.0f} MB"
        )
    baseline = phases[0]["wall_s"]
    for result in phases:
        result["ratio"] = result["wall_s"] / baseline
        result["ratio_adjacent"] = result["wall_s"] / result["baseline_s"]
    by_phase = {r["phase"]: r for r in phases}
    peak = max(phases, key=lambda r: r["rss_peak_kib"])
    first_s, again_s = by_phase["apply_first"]["wall_s"], by_phase["apply_again"]["wall_s"]
    targets = {
        "rows": TARGET_ROWS,
        "first_apply_s": TARGET_FIRST_S,
        "reapply_s": TARGET_AGAIN_S,
        "peak_rss_mb": TARGET_RSS_MB,
        "first_apply_met": first_s <= TARGET_FIRST_S,
        "reapply_met": again_s <= TARGET_AGAIN_S,
        "peak_rss_met": mb(peak["rss_peak_kib"]) <= TARGET_RSS_MB,
        "peak_rss_phase": peak["phase"],
    }
    answer = None
    if args.responsiveness:
        log("responsiveness: district B puts 2 KiB files, idle then during A's first apply ...")
        answer = responsiveness(reg, work, original, args.timeout)
        idle, busy = answer["idle"], answer["during_apply"]
        log(
            f"responsiveness: idle p50 {idle['p50_ms']} ms p99 {idle['p99_ms']} ms; during the "
            f"apply p50 {busy['p50_ms']} ms p99 {busy['p99_ms']} ms max {busy['max_ms']} ms"
        )
        if answer["apply_event"] != "epoch.applied":
            problems.append(f"responsiveness: district A's epoch ended {answer['apply_event']}")
    at_end = git_commit()
    if at_end != info["ingest_commit"]:
        info["ingest_commit"] += f" (changed to {at_end} during the run)"
    return {
        "responsiveness": answer,
        "machine": info,
        "settings": {
            "rows": args.rows,
            "seed": args.seed,
            "profile": str(args.profile) if args.profile is not None else None,
            "processor": "ProvisioningProcessor(ProvisioningConfig()), district defaults",
        },
        "file": {"bytes": size, "generate_s": round(generated_s, 2), **made},
        "phases": [
            {
                k: round(v, 3) if isinstance(v, float) else v
                for k, v in {
                    **r,
                    "rss_start_mb": mb(r["rss_start_kib"]),
                    "rss_peak_mb": mb(r["rss_peak_kib"]),
                }.items()
            }
            for r in phases
        ],
        "targets": targets,
        "problems": problems,
    }


def render(results: dict[str, Any]) -> str:
    m, st, f, t = results["machine"], results["settings"], results["file"], results["targets"]
    rows = st["rows"]
    out = [
        "",
        "ingest provisioning (users.csv -> SQLite account store, one child process per phase)",
        f"  machine : {m['nproc']} CPUs, {m['cpu_model']}, Linux {m['kernel']}, load average "
        f"{m['loadavg_1min_at_start']} at the start",
        f"  software: ingest {m['ingest_commit']}, Python {m['python']}",
        f"  file    : {rows:,} rows, {f['bytes'] / 1e6:.1f} MB; {f['quoted_buildings']:,} with "
        f'quoted "A,B" buildings, {f["no_role"]:,} without a role, {f["deleted"]:,} Deleted '
        f"TRUE; the changed copy differs in {f['changed']:,} Titles",
        "",
        f"  {'phase':27s} {'wall s':>7s} {'rows/s':>9s} {'x csv':>6s} {'x adj':>6s} "
        f"{'CPU s':>7s} {'RSS MB':>7s} {'(start)':>7s}  result",
    ]
    for r in results["phases"]:
        c = r["counts"]
        if r["phase"].startswith("apply"):
            result = ", ".join(
                f"{k} {c[k]:,}"
                for k in ("created", "updated", "deleted", "reactivated", "unchanged")
                if c.get(k)
            )
            result += f" (commit {r['commit_s']:.2f} s; then checkpoint {r['checkpoint_s']:.2f} s)"
        elif r["phase"] == "validate":
            result = f"{c['valid']:,} valid, {c['skipped']:,} skipped"
        else:
            result = f"{c['rows']:,} rows"
        out.append(
            f"  {r['label']:27s} {r['wall_s']:7.2f} {r['rows_per_s']:9,.0f} {r['ratio']:6.1f} "
            f"{r['ratio_adjacent']:6.1f} {r['cpu_s']:7.2f} {r['rss_peak_mb']:7.0f} "
            f"{r['rss_start_mb']:7.0f}  {result}"
        )
    last = results["phases"][-1]
    out += [
        f"  (RSS MB: peak of the child, 10^6 bytes; start: its RSS after the imports. State after "
        f"the last phase: {last['accounts']:,} accounts, {last['changes']:,} change-log rows, "
        f"database {last['db_bytes'] / 1e6:.0f} MB)",
        "",
    ]
    by_phase = {r["phase"]: r for r in results["phases"]}

    def verdict(met: bool) -> str:
        return "MET" if met else "NOT MET"

    note = "" if rows == t["rows"] else f" (the targets are for {t['rows']:,} rows)"
    out.append(
        f"  targets{note}: first apply {by_phase['apply_first']['wall_s']:.1f} s <= "
        f"{t['first_apply_s']:.0f} s {verdict(t['first_apply_met'])}; re-apply "
        f"{by_phase['apply_again']['wall_s']:.1f} s <= {t['reapply_s']:.0f} s "
        f"{verdict(t['reapply_met'])}; peak RSS "
        f"{by_phase[t['peak_rss_phase']]['rss_peak_mb']:.0f} MB ({t['peak_rss_phase']}) <= "
        f"{t['peak_rss_mb']:.0f} MB {verdict(t['peak_rss_met'])}"
    )
    answer = results["responsiveness"]
    if answer is not None:
        idle, busy = answer["idle"], answer["during_apply"]
        out += [
            "",
            "  responsiveness (real daemon): district B's 2 KiB puts (open + write + close)",
            f"    idle                : n {idle['n']:5d}  p50 {idle['p50_ms']:7.2f} ms  p99 "
            f"{idle['p99_ms']:7.2f} ms  max {idle['max_ms']:7.2f} ms",
            f"    during A's 1st apply: n {busy['n']:5d}  p50 {busy['p50_ms']:7.2f} ms  p99 "
            f"{busy['p99_ms']:7.2f} ms  max {busy['max_ms']:7.2f} ms  (apply "
            f"{answer['apply_duration_s']} s in the daemon, daemon peak RSS "
            f"{answer['daemon_peak_rss_mb']:.0f} MB)",
        ]
    if results["problems"]:
        out.append("  CHECKS FAILED: " + "; ".join(results["problems"]))
    else:
        out.append("  checks: every phase reported the expected counts")
    if st["profile"]:
        out.append(f"  cProfile of each phase in {st['profile']} (timings inflated)")
    return "\n".join(out) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure validating and applying a large users.csv to the account store."
    )
    parser.add_argument(
        "--rows", type=int, default=TARGET_ROWS, help="data rows in users.csv (default 1000000)"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the generated file (default 1)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds a phase may take before the run is abandoned (default 1800)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="write a cProfile of each phase to DIR/<phase>.prof (inflates the timings)",
    )
    parser.add_argument(
        "--no-responsiveness",
        dest="responsiveness",
        action="store_false",
        help="skip the last part: another district's uploads while the daemon applies",
    )
    add_output_options(
        parser,
        keep_tmp_help="leave the temporary directory (files, state database) for inspection",
        json_help="print the results as JSON on stdout",
        save_help="also write the JSON to FILE",
    )
    args = parser.parse_args(argv)
    if args.rows < CHANGE_EVERY:
        parser.error(f"--rows must be at least {CHANGE_EVERY}")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == [PHASE_ARG]:
        return phase_main(argv[1:])
    args = parse_args(argv)
    return run_main(args, run, render, tmp_prefix="ingest-provision-", stopped="the phase")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
