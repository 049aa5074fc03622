"""The naming contract with districts: epoch directories, markers, temp files, _auto.csv.

Pure functions, no I/O: both the SFTP policy (refuse early) and the detector (decide what
is ready) apply the same rules, and tests can cover every gotcha directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MARKER = "COMPLETE"
UPLOAD = "upload"  # a district's writable folder, where epochs arrive
PROCESSED = "upload-processed"  # where processed epochs and their reports go
EPOCH_FORMAT = "YYYYMMDD-HHMMSS"
_EPOCH = re.compile(r"^(\d{8})-(\d\d)(\d\d)(\d\d)$")
# How a district produces an epoch name: the current time in UTC.
UTC_NAME_COMMANDS = (
    "date -u +%Y%m%d-%H%M%S (Unix), or in PowerShell "
    "(Get-Date).ToUniversalTime().ToString('yyyyMMdd-HHmmss')"
)
_AUTO = re.compile(r"^(?P<base>.+)_auto\.csv$")
# Names clients give a file while it is being transferred (WinSCP .filepart, FileZilla and
# curl .part, lftp/rsync temporaries, browsers' .crdownload) and editor/OS leftovers.
_TEMP_SUFFIXES = (".filepart", ".part", ".partial", ".tmp", ".temp", ".crdownload", ".swp", "~")


@dataclass(frozen=True)
class EpochName:
    name: str
    # False for a well-shaped but impossible time: 20200101-139029 (the vendor's own
    # example, tolerated with a warning) or an impossible date, 20261399-000000 (refused)
    time_valid: bool
    date_valid: bool = True
    latest: datetime | None = None  # see parse_epoch_name

    @property
    def timestamp(self) -> datetime | None:
        return self.latest if self.time_valid else None

    def next_moment(self) -> datetime | None:
        """The earliest moment whose epoch name sorts after this one: a second later, or
        for an impossible time the next day; None when no real moment does."""
        if self.latest is None:
            return None
        if self.time_valid:
            return self.latest + timedelta(seconds=1)
        midnight = self.latest.replace(hour=0, minute=0, second=0)
        return midnight + timedelta(days=1)


def parse_epoch_name(name: str) -> EpochName | None:
    """An epoch directory name, or None when the shape is wrong. ``latest`` is the moment
    it names, or for an impossible time on a real date the latest moment it can mean, each
    field capped (20200101-139029: 13:59:29); None for an impossible date."""
    match = _EPOCH.fullmatch(name)
    if not match:
        return None
    try:
        day = datetime.strptime(match[1], "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        return EpochName(name, time_valid=False, date_valid=False)
    hour, minute, second = (int(match[i]) for i in (2, 3, 4))
    valid = hour < 24 and minute < 60 and second < 60
    latest = day.replace(hour=min(hour, 23), minute=min(minute, 59), second=min(second, 59))
    return EpochName(name, time_valid=valid, latest=latest)


def describe_gap(seconds: float) -> str:
    """A duration as a district reads it: '9 h', '8 h 30 min', '3 days', '45 s'."""
    seconds = abs(seconds)
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 3600:
        hours, rest = divmod(round(seconds / 60), 60)
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds:.0f} s"


def epoch_name_for(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d-%H%M%S")


def is_temp_name(name: str) -> bool:
    """A transfer-in-progress or leftover name that is never processed or promoted."""
    lowered = name.lower()
    return name.startswith(".") or lowered.endswith(_TEMP_SUFFIXES)


def auto_target(name: str) -> str | None:
    """``users_auto.csv`` -> ``users.csv``; None when ``name`` is not an _auto.csv file."""
    match = _AUTO.fullmatch(name)
    return f"{match['base']}.csv" if match else None


def auto_source(name: str) -> str:
    """The name an ``_auto.csv`` upload had before the server made it ``name`` in its
    epoch (``users.csv`` -> ``users_auto.csv``): the inverse of :func:`auto_target`."""
    stem = name[: -len(".csv")] if name.endswith(".csv") else name
    return f"{stem}_auto.csv"


def is_misnamed_marker(name: str) -> bool:
    """Almost ``COMPLETE``: other case, an extension, surrounding white space."""
    if name == MARKER:
        return False
    core = name.strip().lower()
    stem = core.rsplit(".", 1)[0] if "." in core else core
    return stem.strip() == "complete"
