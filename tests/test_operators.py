"""Operators' commands against the running daemon: they act within a second, warn before a
surprise, and show a district whole."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.harness import FAST_EPOCHS, Credentials, Daemon, run_daemon
from tests.test_provisioning import HEADER, upload

# The reconcile scan is ten minutes away: only the ledger poll can take an action.
SLOW_RECONCILE = {**FAST_EPOCHS, "epochs_reconcile_interval": 600}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with run_daemon(tmp_path_factory.mktemp("operators"), **SLOW_RECONCILE) as running:
        yield running


def held(daemon: Daemon, creds: Credentials, first: str, second: str) -> None:
    """``second`` held: a full sync that would delete 8 of 10 accounts."""
    everyone = "".join(f"p{i}@example.org,P,{i},,,,\r\n" for i in range(10))
    upload(daemon, creds, first, HEADER + everyone)
    daemon.cli("district", "set-mode", creds.name, "full-sync")
    report = upload(daemon, creds, second, HEADER + "p0@example.org,P,0,,,,\r\n")
    assert report["status"] == "held"


def test_an_approval_is_acted_on_within_a_second(daemon: Daemon, district: Credentials) -> None:
    held(daemon, district, "20260601-020000", "20260601-030000")
    said = daemon.cli("epochs", "approve", district.name, "20260601-030000").stdout
    assert "within 0.5 s" in said
    daemon.wait_for("epoch.applied", district=district.name, epoch="20260601-030000", timeout=3)


def test_approving_an_epoch_older_than_the_applied_one_warns(
    daemon: Daemon, district: Credentials
) -> None:
    held(daemon, district, "20260602-020000", "20260602-030000")
    daemon.cli("district", "set-mode", district.name, "upsert")
    upload(daemon, district, "20260602-040000", HEADER + "new@example.org,N,W,,,,\r\n")
    result = daemon.cli("epochs", "approve", district.name, "20260602-030000")
    assert "20260602-040000, was applied" in result.stderr
    assert "ingest epochs force-apply" in result.stderr
    daemon.wait_for("epoch.superseded", district=district.name, epoch="20260602-030000", timeout=3)


def test_district_show_and_list_give_the_whole_picture(
    daemon: Daemon, district: Credentials
) -> None:
    upload(daemon, district, "20260603-020000", HEADER + "a@example.org,A,B,,,,\r\n")
    daemon.cli("district", "set-mode", district.name, "full-sync")
    shown = daemon.cli("district", "show", district.name).stdout
    assert "mode:      full-sync" in shown
    assert "20260603-020000  applied" in shown
    assert "buildings: any name accepted" in shown
    data = json.loads(daemon.cli("district", "show", district.name, "--json").stdout)
    assert data["mode"] == "full-sync" and data["recent_epochs"][-1]["state"] == "applied"
    assert data["status"]["last_applied"]["epoch"] == "20260603-020000"
    listed = daemon.cli("district", "list").stdout
    assert any(
        line.startswith(district.name + "\t") and "\tfull-sync\tany building\t" in line
        for line in listed.splitlines()
    )
    missing = daemon.cli("district", "show", "no-such-district", check=False)
    assert missing.returncode != 0 and "no district" in missing.stderr
