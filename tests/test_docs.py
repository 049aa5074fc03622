"""Documentation that is an interface must match the code: log events, README commands."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _logged_events() -> set[str]:
    pattern = re.compile(r"\.(?:debug|info|warning|error)\(\s*\"([a-z_]+\.[a-z_]+)\"")
    return {
        m for path in (REPO / "ingest").rglob("*.py") for m in pattern.findall(path.read_text())
    }


def test_every_log_event_is_documented() -> None:
    events = _logged_events()
    assert len(events) >= 15  # the pattern really finds the events
    documented = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", (REPO / "docs/logging.md").read_text()))
    assert events - documented == set()


def test_readme_commands_exist(capsys) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from ingest.cli import _parser

    readme = (REPO / "README.md").read_text()
    commands = set(re.findall(r"`ingest ((?:district )?[a-z-]+)", readme))
    assert {"serve", "hostkey", "district add", "district list"} <= commands
    for command in commands:
        with pytest.raises(SystemExit) as exited:  # --help exits 0 only for a real command
            _parser().parse_args([*command.split(), "--help"])
        assert exited.value.code == 0, command
