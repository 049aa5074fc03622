"""The districts' validator: validate-users.pyz from the district's own root, run by a
bare Python (a fresh venv without the project or any package), agrees with the server on
the same files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients import paramiko_client
from tests.harness import FAST_EPOCHS, Credentials, Daemon, run_daemon

HEADER = b"Email,First Name,Last Name,Buildings\r\n"
GOOD = b"".join(b"u%d@example.org,U,%d,North\r\n" % (i, i) for i in range(20))
# Non-default limits: a validator with the defaults would disagree with this server.
SETTINGS = {**FAST_EPOCHS, "provisioning_max_bad_rows_min": 2}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with run_daemon(tmp_path_factory.mktemp("validator"), **SETTINGS) as running:
        yield running


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with nothing installed: what a district has."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    probe = subprocess.run([python, "-c", "import asyncssh"], capture_output=True, cwd=venv)
    assert probe.returncode != 0  # really bare: not even the project's dependencies
    return python


def upload(daemon: Daemon, creds: Credentials, epoch: str, files: dict[str, bytes]) -> None:
    with paramiko_client(daemon, creds) as client:
        sftp = client.open_sftp()
        sftp.mkdir(f"/upload/{epoch}")
        for name, data in files.items():
            with sftp.open(f"/upload/{epoch}/{name}", "wb") as fh:
                fh.write(data)


def server_report(daemon: Daemon, creds: Credentials, epoch: str) -> dict[str, Any]:
    daemon.wait_for("epoch.published", district=creds.name, epoch=epoch)
    path = daemon.root(creds.name) / "upload-processed" / epoch / "report.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def run_validator(
    python: Path, pyz: Path, cwd: Path, *args: str
) -> tuple[int, dict[str, Any], str]:
    """(exit status, --json output, text output) of the district's validator."""
    as_json = subprocess.run(
        [python, str(pyz), "--json", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )
    assert as_json.returncode in (0, 1), as_json.stderr
    text = subprocess.run(
        [python, str(pyz), *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )
    assert text.returncode == as_json.returncode
    return as_json.returncode, json.loads(as_json.stdout), text.stdout


def test_the_validator_in_every_root_agrees_with_the_server(
    daemon: Daemon, district: Credentials, bare_python: Path, tmp_path: Path
) -> None:
    names = tmp_path / "names.txt"
    names.write_text("North\nSouth\n")
    daemon.cli("district", "buildings", "set", district.name, str(names))
    # The district's own copy, fetched as the district does.
    pyz, buildings = tmp_path / "validate-users.pyz", tmp_path / "buildings.txt"
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        sftp.get("/validate-users.pyz", str(pyz))
        sftp.get("/buildings.txt", str(buildings))
        with pytest.raises(OSError):
            sftp.open("/validate-users.pyz", "wb")  # read-only
    assert "validate-users.pyz" in (daemon.root(district.name) / "README.txt").read_text()

    cases: dict[str, dict[str, bytes]] = {
        # A bad e-mail and an unknown building: 2 bad rows of 22 (9 %) reach this
        # server's minimum of 2 (the default is 10): rejected, too_many_bad_rows.
        "20260501-010000": {
            "users.csv": HEADER + GOOD + b"bad@,B,1,North\r\nx@example.org,X,1,Nrth\r\n"
        },
        # One bad row only: applied, 1 skipped.
        "20260501-020000": {"users.csv": HEADER + GOOD + b"x@example.org,X,1,Nrth\r\n"},
        # A misnamed file whose content has a mistake too: both reported.
        "20260501-030000": {"Users.csv": HEADER + GOOD + b"bad@,B,1,North\r\n"},
        "20260501-040000": {"users.csv": HEADER + GOOD},
    }
    for epoch, files in cases.items():
        local = tmp_path / epoch
        local.mkdir()
        for name, data in {**files, "COMPLETE": b""}.items():
            (local / name).write_bytes(data)
        upload(daemon, district, epoch, {**files, "COMPLETE": b""})
        report = server_report(daemon, district, epoch)
        status, found, text = run_validator(
            bare_python, pyz, tmp_path, "--buildings", str(buildings), str(local)
        )
        assert found["verdict"] == report["status"], (epoch, found, report)
        assert status == (0 if report["status"] == "applied" else 1)
        assert sorted(e["code"] for e in found["errors"]) == sorted(
            e["code"] for e in report["errors"]
        ), epoch
        assert found["counts"]["rows"] == report["counts"]["rows"]
        assert found["counts"]["skipped"] == report["counts"]["skipped"]
        if report["status"] == "applied":
            valid = report["counts"]["rows"] - report["counts"]["skipped"]
            skipped = report["counts"]["skipped"]
            assert f"would be applied: {valid} rows, {skipped} skipped" in text
        else:
            assert "would be REJECTED" in text

    # Without COMPLETE the server waits; so does the validator's verdict.
    waiting = tmp_path / "20260501-050000"
    waiting.mkdir()
    (waiting / "users.csv").write_bytes(HEADER + GOOD)
    (waiting / "complete.txt").write_bytes(b"")
    (waiting / "users.csv.filepart").write_bytes(b"")
    status, found, text = run_validator(bare_python, pyz, tmp_path, str(waiting))
    assert status == 1 and found["verdict"] == "waiting"
    assert {e["code"] for e in found["errors"]} == {"marker_missing", "marker_misnamed"}
    assert [w["code"] for w in found["warnings"]] == ["temp_file_ignored"]
    # With COMPLETE too, the server still refuses complete.txt at upload: a script that
    # stops at the first error never sends COMPLETE, so the epoch would wait.
    (waiting / "COMPLETE").write_bytes(b"")
    status, found, text = run_validator(bare_python, pyz, tmp_path, str(waiting))
    assert status == 1 and found["verdict"] == "waiting"
    assert [e["code"] for e in found["errors"]] == ["marker_misnamed"]
    assert "would WAIT" in text


def test_the_validator_can_be_built_by_an_operator(
    daemon: Daemon, bare_python: Path, tmp_path: Path
) -> None:
    pyz = tmp_path / "v.pyz"
    said = daemon.cli("validator", "build", str(pyz)).stdout
    assert "python3" in said
    creds = daemon.add_district()
    root = daemon.root(creds.name) / "validate-users.pyz"
    daemon.wait_until(root.exists, "the new district's validator")
    assert pyz.read_bytes() == root.read_bytes()  # same code, same limits, same bytes
    users = tmp_path / "users.csv"
    escape = b"\x1b[31mann@example.org,Ann,Lee,North\r\nbel\x07@example.org,B,L,North\r\n"
    users.write_bytes(HEADER + escape)
    status, found, text = run_validator(bare_python, pyz, tmp_path, str(users))
    assert status == 1 and found["verdict"] == "rejected"  # 2 bad rows: this server's limit
    assert "\x1b" not in text and "\x07" not in text  # values never reach a terminal raw


def test_operators_validate_against_a_districts_building_list(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    names = tmp_path / "names.txt"
    names.write_text("North\n")
    daemon.cli("district", "buildings", "set", district.name, str(names))
    users = tmp_path / "users.csv"
    users.write_bytes(HEADER + GOOD + b"x@example.org,X,1,Nrth\r\n")
    plain = daemon.cli("validate", str(users))
    assert plain.returncode == 0 and "would be applied: 21 rows, 0 skipped" in plain.stdout
    checked = daemon.cli("validate", "--district", district.name, str(users))
    assert checked.returncode == 0 and "would be applied: 20 rows, 1 skipped" in checked.stdout
    assert "did you mean 'North'?" in checked.stdout

    typo = daemon.cli("validate", "--district", "no-such-district", str(users), check=False)
    assert typo.returncode != 0 and "no-such-district" in typo.stderr
