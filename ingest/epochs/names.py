"""The naming contract with districts: epoch directories, markers, temp files, _auto.csv.

Pure functions, no I/O: both the SFTP policy (refuse early) and the detector (decide what
is ready) apply the same rules, and tests can cover every gotcha directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

MARKER = "COMPLETE"
EPOCH_FORMAT = "YYYYMMDD-HHMMSS"
_EPOCH = re.compile(r"^(\d{8})-(\d{6})$")
_AUTO = re.compile(r"^(?P<base>.+)_auto\.csv$")
# Names clients give a file while it is being transferred (WinSCP .filepart, FileZilla and
# curl .part, lftp/rsync temporaries, browsers' .crdownload) and editor/OS leftovers.
_TEMP_SUFFIXES = (".filepart", ".part", ".partial", ".tmp", ".temp", ".crdownload", ".swp", "~")


@dataclass(frozen=True)
class EpochName:
    name: str
    time_valid: bool  # False for a well-shaped but impossible time, e.g. 20200101-139029

    @property
    def timestamp(self) -> datetime | None:
        if not self.time_valid:
            return None
        return datetime.strptime(self.name, "%Y%m%d-%H%M%S").replace(tzinfo=UTC)


def parse_epoch_name(name: str) -> EpochName | None:
    """An epoch directory name, or None when the shape is wrong."""
    if not _EPOCH.fullmatch(name):
        return None
    try:
        datetime.strptime(name, "%Y%m%d-%H%M%S")
    except ValueError:
        return EpochName(name, time_valid=False)
    return EpochName(name, time_valid=True)


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


def is_misnamed_marker(name: str) -> bool:
    """Almost ``COMPLETE``: other case, an extension, surrounding white space."""
    if name == MARKER:
        return False
    core = name.strip().lower()
    stem = core.rsplit(".", 1)[0] if "." in core else core
    return stem.strip() == "complete"
