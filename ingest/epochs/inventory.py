"""What operators ask about epochs: the ledger plus epochs still waiting on disk."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ingest.config import Config
from ingest.epochs.ledger import Ledger
from ingest.epochs.names import parse_epoch_name
from ingest.epochs.scan import read_epoch


def waiting_epochs(
    config: Config, ledger: Ledger, district: str | None = None
) -> list[dict[str, Any]]:
    """Epoch directories in /upload/ that the ledger does not know yet: ``waiting`` for
    COMPLETE or for their files to settle, or ``stale`` (no COMPLETE for too long)."""
    found = []
    root = config.districts_dir
    names = (
        [district]
        if district
        else sorted(p.name for p in root.iterdir() if p.is_dir())
        if root.is_dir()
        else []
    )
    now = time.time()
    for name in names:
        known = ledger.known_names(name)
        upload = root / name / "upload"
        epochs = sorted(p for p in upload.iterdir() if p.is_dir()) if upload.is_dir() else []
        for epoch_dir in epochs:
            if epoch_dir.name in known or parse_epoch_name(epoch_dir.name) is None:
                continue
            contents = read_epoch(epoch_dir)
            if not contents.files and contents.marker is None:
                continue
            newest = max((f.mtime for f in contents.files), default=now)
            stale = contents.marker is None and now - newest >= config.epochs.stale_after
            found.append(
                {
                    "district": name,
                    "epoch": epoch_dir.name,
                    "state": "stale" if stale else "waiting",
                    "marker": contents.marker is not None,
                    "files": [f.name for f in contents.files],
                    "code": "marker_missing" if stale else None,
                }
            )
    return found


def processed_report(config: Config, district: str, epoch: str) -> Path:
    return config.districts_dir / district / "upload-processed" / epoch / "report.txt"
