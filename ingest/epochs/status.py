"""What each district can read about itself in its own root: ``/STATUS.txt`` for people,
``/status.json`` for scripts.

OpenSSH's ``sftp`` and curl show "Permission denied" for every refusal, and a nightly job
that forgets ``COMPLETE`` exits 0 while nothing is ever applied: the server's messages
reached only the operators' log. The status files say, one ``get`` away: the server's
time, the last applied upload with its counts, every epoch that is waiting and why, the
epochs that were not applied, and the most recent refusals with their full messages.

The board is kept in memory by the epoch layer and fed by it (and, through the SFTP
events, by the SFTP layer's refusals). A change is written within ``FLUSH_AFTER`` seconds,
both files atomically (a temporary name, then a rename), read-only to the district (the
root is not writable). Sizes are bounded: ``MAX_REFUSALS`` refusals, ``MAX_EPOCHS``
epochs and ``MAX_MESSAGE`` characters a message. After a restart the board starts from
the ledger (the last applied epoch, the epochs held); refusals are not kept.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import deque
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest.atomic import replace_text
from ingest.logging import get_logger
from ingest.text import printable

STATUS_TXT = "STATUS.txt"
STATUS_JSON = "status.json"
FLUSH_AFTER = 0.3  # seconds: changes close together are written once
MAX_REFUSALS = 20
MAX_EPOCHS = 50
MAX_MESSAGE = 500
log = get_logger("ingest.epochs")

# Why an epoch waits, in words a district acts on (scan.judge_epoch's reasons).
WAITING = {
    "no_marker": "no COMPLETE yet: upload an empty file named COMPLETE when all files are in",
    "stale": "no COMPLETE for a long time: it is not processed until COMPLETE is uploaded",
    "files_open": "files are still being uploaded",
    "files_incomplete": "a file was not completely uploaded (the upload was cut off): "
    "upload it again",
    "marker_settling": "COMPLETE came first: waiting a few seconds for the data files",
    "temp_files": "a client's temporary file is still there (.filepart, .part, ...)",
    "settling": "waiting for files written by other means to stay unchanged",
    "received": "received; being processed",
}


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(text: str) -> str:
    text = printable(text)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


@dataclass
class EpochLine:
    name: str
    state: str  # waiting, held, rejected, superseded, failed, stale
    reason: str  # a code
    message: str
    since: str = field(default_factory=utc_now)


@dataclass
class Refusal:
    at: str
    code: str
    path: str
    message: str


@dataclass
class DistrictStatus:
    last_applied: dict[str, Any] | None = None
    epochs: dict[str, EpochLine] = field(default_factory=dict)
    refusals: deque[Refusal] = field(default_factory=lambda: deque(maxlen=MAX_REFUSALS))

    def to_json(self, district: str) -> dict[str, Any]:
        epochs = sorted(self.epochs.values(), key=lambda e: e.name)[-MAX_EPOCHS:]
        return {
            "district": district,
            "server_time": utc_now(),
            "last_applied": self.last_applied,
            "epochs": [asdict(e) for e in epochs],
            "refusals": [asdict(r) for r in reversed(self.refusals)],  # newest first
        }


class StatusBoard:
    """One per server, passed explicitly to whoever feeds it. Event loop only; files are
    written on ``executor``."""

    def __init__(self, districts_dir: Path, executor: Executor) -> None:
        self.districts_dir = districts_dir
        self._executor = executor
        self._status: dict[str, DistrictStatus] = {}
        self._pending: set[str] = set()

    def district(self, district: str) -> DistrictStatus:
        return self._status.setdefault(district, DistrictStatus())

    # --- what happened -------------------------------------------------------------------

    def refused(self, district: str, code: str, path: str, message: str) -> None:
        status = self.district(district)
        status.refusals.append(Refusal(utc_now(), code, _short(path), _short(message)))
        self._changed(district)

    def epoch(self, district: str, name: str, state: str, reason: str, message: str) -> None:
        """An epoch's current standing; the same standing again changes nothing."""
        lines = self.district(district).epochs
        line = lines.get(name)
        if line is not None and (line.state, line.reason) == (state, reason):
            return
        lines[name] = EpochLine(name, state, reason, _short(message))
        self._changed(district)

    def waiting(self, district: str, name: str, reason: str) -> None:
        self.epoch(district, name, "waiting", reason, WAITING.get(reason, reason))

    def applied(self, district: str, name: str, counts: dict[str, int], at: str = "") -> None:
        """The newest applied epoch; what was not applied before it is history now."""
        status = self.district(district)
        status.last_applied = {"epoch": name, "at": at or utc_now(), "counts": dict(counts)}
        for older in [n for n, e in status.epochs.items() if n <= name and e.state != "waiting"]:
            del status.epochs[older]
        status.epochs.pop(name, None)
        self._changed(district)

    def present(self, district: str, names: set[str]) -> None:
        """The epoch folders now in /upload/: a waiting one that is gone is not listed."""
        status = self.district(district)
        gone = [n for n, e in status.epochs.items() if e.state == "waiting" and n not in names]
        for name in gone:
            del status.epochs[name]
        if gone:
            self._changed(district)

    def gone(self, district: str, name: str) -> None:
        """The epoch left /upload/ or the ledger's care: it is no longer listed, unless it
        ended not applied (the district must know)."""
        line = self.district(district).epochs.get(name)
        if line is not None and line.state == "waiting":
            del self.district(district).epochs[name]
            self._changed(district)

    # --- the files ---------------------------------------------------------------------

    def _changed(self, district: str) -> None:
        if district in self._pending:
            return
        self._pending.add(district)
        asyncio.get_running_loop().call_later(FLUSH_AFTER, self._flush, district)

    def _flush(self, district: str) -> None:
        self._pending.discard(district)
        data = self.district(district).to_json(district)
        root = self.districts_dir / district
        try:
            done = asyncio.get_running_loop().run_in_executor(self._executor, _write, root, data)
        except RuntimeError:  # shutting down: the next start writes them afresh
            return
        done.add_done_callback(functools.partial(self._written, district))

    def _written(self, district: str, done: asyncio.Future[None]) -> None:
        error = None if done.cancelled() else done.exception()
        if error is not None:
            log.error("status.write_failed", district=district, error=repr(error))

    def flush_now(self, district: str) -> None:
        """Write at once (startup)."""
        self._flush(district)


def _write(root: Path, data: dict[str, Any]) -> None:
    if not root.is_dir():
        return
    replace_text(root / STATUS_JSON, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    replace_text(root / STATUS_TXT, render_text(data))


def render_text(data: dict[str, Any]) -> str:
    lines = [
        f"Status of {data['district']}, written by the server at {data['server_time']} (UTC).",
        "It changes within a second of anything the server does with your uploads.",
        "",
    ]
    last = data["last_applied"]
    if last:
        counts = ", ".join(f"{k} {v}" for k, v in last["counts"].items())
        lines += [
            f"Last applied upload: {last['epoch']} (at {last['at']}): {counts}",
            f"  report: /upload-processed/{last['epoch']}/report.txt",
        ]
    else:
        lines.append("Last applied upload: none since the server keeps this file")
    epochs = data["epochs"]
    waiting = [e for e in epochs if e["state"] == "waiting"]
    others = [e for e in epochs if e["state"] != "waiting"]
    lines += ["", f"Waiting, not processed yet ({len(waiting)}):"]
    lines += [f"  /upload/{e['name']}: {e['message']} (since {e['since']})" for e in waiting]
    if not waiting:
        lines.append("  nothing")
    if others:
        lines += ["", f"Not applied ({len(others)}):"]
        lines += [f"  {e['name']}: {e['state']}: {e['message']}" for e in others]
    lines += ["", f"Recent refusals and notices, newest first ({len(data['refusals'])}):"]
    lines += [f"  {r['at']}  {r['path']}  [{r['code']}] {r['message']}" for r in data["refusals"]]
    if not data["refusals"]:
        lines.append("  none")
    return printable("\n".join(lines) + "\n", keep="\n")
