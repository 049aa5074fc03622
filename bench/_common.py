"""What the benchmark scripts in bench/ share: logging, subprocesses, CPU time, statistics,
the description of the machine and the ``main()`` scaffold.

Not a script of its own. ``python bench/<script>.py`` puts bench/ first on ``sys.path``, so
the scripts import it as ``_common``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


# --- processes -------------------------------------------------------------------------------


class Registry:
    """Every subprocess this run starts; all are ended in :meth:`cleanup`.

    ``stop_timeout`` is how long a process may take to exit after SIGTERM before it is
    killed.
    """

    def __init__(self, stop_timeout: float = 15) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.stop_timeout = stop_timeout

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(args, text=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str]) -> None:
        """SIGTERM (the daemon drains its few open uploads and exits), then SIGKILL."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        self._reap(proc)

    def cleanup(self) -> None:
        """SIGTERM to every process still running, all at once; then wait for each."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        for proc in reversed(self.procs):
            self._reap(proc)

    def _reap(self, proc: subprocess.Popen[str]) -> None:
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def ingest_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """This environment without INGEST_* variables, plus what every benchmark sets:
    ``data_dir``, 127.0.0.1 port 0 and JSON logs; ``settings`` adds INGEST_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env.update(
        {
            "INGEST_STORAGE_DATA_DIR": str(data_dir),
            "INGEST_SERVER_HOST": "127.0.0.1",
            "INGEST_SERVER_PORT": "0",
            "INGEST_LOGGING_FORMAT": "json",
            **settings,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def spawn_ingest(reg: Registry, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``python -m ingest serve`` with its log (stdout and stderr) on a pipe."""
    return reg.popen(
        [sys.executable, "-m", "ingest", "serve"],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime+stime of a process (all its threads, live and dead) or of one thread."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rusage_cpu(who: int = resource.RUSAGE_SELF) -> float:
    """utime+stime of this process (RUSAGE_SELF) or of its waited-for children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


# --- statistics ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def summary(ms: list[float], percentiles: Iterable[int] = (50, 90, 99)) -> dict[str, Any]:
    """n, the given percentiles, max and mean of millisecond values, rounded to 0.01 ms."""
    if not ms:
        return {"n": 0}
    result: dict[str, Any] = {"n": len(ms)}
    for q in percentiles:
        result[f"p{q}_ms"] = round(percentile(ms, q), 2)
    result["max_ms"] = round(max(ms), 2)
    result["mean_ms"] = round(statistics.fmean(ms), 2)
    return result


# --- the machine and the checkout ------------------------------------------------------------


def git_commit() -> str:
    """The checkout being measured (with '+dirty' for uncommitted changes under ingest/)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "ingest"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine_info(**software: str) -> dict[str, Any]:
    """CPUs, kernel, Python and asyncssh, then ``software`` (name -> version), then the
    ingest commit."""
    import asyncssh

    cpu_model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "asyncssh": asyncssh.__version__,
        **software,
        "ingest_commit": git_commit(),
    }


# --- main ------------------------------------------------------------------------------------


def add_output_options(
    parser: argparse.ArgumentParser, *, keep_tmp_help: str, json_help: str, save_help: str
) -> None:
    """--tmp, --keep-tmp, --json and --save, which :func:`run_main` acts on."""
    parser.add_argument(
        "--tmp",
        type=Path,
        default=None,
        help="parent directory for the temporary files (default: $TMPDIR)",
    )
    parser.add_argument("--keep-tmp", action="store_true", help=keep_tmp_help)
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.add_argument("--save", type=Path, default=None, metavar="FILE", help=save_help)


def run_main(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace, Registry, Path], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    *,
    tmp_prefix: str,
    stopped: str,
    stop_timeout: float = 15,
) -> int:
    """Run ``run(args, registry, work)`` in a fresh temporary directory ``work``, end every
    subprocess and remove ``work`` (unless --keep-tmp) however it ends, and print the
    results: ``render``'s table, or JSON with --json; --save FILE writes the JSON too.
    ``stopped`` names what an interrupt stopped; returns the exit status."""

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    reg = Registry(stop_timeout)
    work = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=args.tmp))
    started = time.monotonic()
    try:
        results = run(args, reg, work)
        results["elapsed_s"] = round(time.monotonic() - started, 1)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; {stopped} stopped and temporary files removed", file=sys.stderr)
        return 130
    finally:
        reg.cleanup()
        if args.keep_tmp:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.save is not None:
        args.save.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    else:
        sys.stdout.write(render(results))
        print(f"\n(finished in {results['elapsed_s']} s)")
    return 0
