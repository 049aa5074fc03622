"""The status files in each district's root: every mistake explained where the district
can read it, with the clients districts use (OpenSSH sftp shows only "Permission
denied")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients import curl, lftp, paramiko_client, put_epoch, sftp_batch, sftp_url
from tests.harness import FAST_EPOCHS, Credentials, Daemon, run_daemon

USERS = b"Email,First Name,Last Name\r\nann@example.org,Ann,Lee\r\nbob@example.org,Bob,Ray\r\n"
STALE_AFTER = 3


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    settings = {**FAST_EPOCHS, "epochs_stale_after": STALE_AFTER}
    with run_daemon(tmp_path_factory.mktemp("status"), **settings) as running:
        yield running


def status(daemon: Daemon, creds: Credentials) -> dict[str, Any]:
    path = daemon.root(creds.name) / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}  # type: ignore[no-any-return]


def wait_status(daemon: Daemon, creds: Credentials, what: str, check: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def ok() -> bool:
        found.update(status(daemon, creds))
        return bool(found) and bool(check(found))

    daemon.wait_until(ok, what)
    return found


def fetch(daemon: Daemon, creds: Credentials, tmp_path: Path, name: str) -> str:
    """The file as the district gets it, with OpenSSH's sftp."""
    sftp_batch(daemon, creds, f"get /{name} {tmp_path / name}")
    return (tmp_path / name).read_text()


def test_a_refused_put_is_explained_in_the_districts_folder(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    (tmp_path / "users.csv").write_bytes(USERS)
    result = sftp_batch(
        daemon, district, "put users.csv /upload/users.csv", check=False, cwd=tmp_path
    )
    assert result.returncode != 0  # OpenSSH's sftp says "Permission denied", nothing more
    found = wait_status(
        daemon,
        district,
        "the refusal in status.json",
        lambda s: any(r["path"] == "/upload/users.csv" for r in s["refusals"]),
    )
    refusal = found["refusals"][0]
    assert refusal["code"] == "epoch_missing"
    assert "users_auto.csv" in refusal["message"]  # what to do instead
    text = fetch(daemon, district, tmp_path, "STATUS.txt")
    assert "/upload/users.csv" in text and "[epoch_missing]" in text
    assert refusal["message"][:40] in text


def test_an_epoch_without_complete_says_so_and_then_goes_stale(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    epoch = "20260501-020000"
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        sftp.mkdir(f"/upload/{epoch}")
        with sftp.open(f"/upload/{epoch}/users.csv", "wb") as fh:
            fh.write(USERS)
    found = wait_status(
        daemon,
        district,
        "the epoch waiting for COMPLETE",
        lambda s: [(e["name"], e["reason"]) for e in s["epochs"]] == [(epoch, "no_marker")],
    )
    assert "upload an empty file named COMPLETE" in found["epochs"][0]["message"]
    shown = daemon.cli("epochs", "show", district.name, epoch).stdout  # operators see it too
    assert "not received yet" in shown and "COMPLETE: no" in shown
    assert "why it waits: no COMPLETE yet" in shown
    wait_status(  # past stale_after
        daemon,
        district,
        "the epoch stale",
        lambda s: [(e["name"], e["reason"]) for e in s["epochs"]] == [(epoch, "stale")],
    )
    assert f"/upload/{epoch}: no COMPLETE for a long time" in fetch(
        daemon, district, tmp_path, "STATUS.txt"
    )


def test_the_last_applied_upload_and_one_not_applied_are_shown(
    daemon: Daemon, district: Credentials
) -> None:
    for epoch, data in (
        ("20260502-020000", USERS),
        ("20260502-030000", b"Mail,First,Last\r\nx,y,z\r\n"),  # rejected: no Email column
    ):
        put_epoch(daemon, district, epoch, data)
        daemon.wait_for("epoch.published", district=district.name, epoch=epoch)
    found = wait_status(
        daemon,
        district,
        "the outcomes",
        lambda s: s["last_applied"] and any(e["state"] == "rejected" for e in s["epochs"]),
    )
    assert found["last_applied"]["epoch"] == "20260502-020000"
    assert found["last_applied"]["counts"]["created"] == 2
    (rejected,) = [e for e in found["epochs"] if e["state"] == "rejected"]
    assert rejected["name"] == "20260502-030000"
    assert "/upload-processed/20260502-030000/report.txt" in rejected["message"]


def test_a_cut_off_file_is_explained(daemon: Daemon, district: Credentials) -> None:
    epoch = "20260503-020000"
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        sftp.mkdir(f"/upload/{epoch}")
        handle = sftp.open(f"/upload/{epoch}/users.csv", "wb")
        handle.write(USERS[:20])
        handle.flush()
        daemon.wait_for("upload.started", district=district.name)
        transport = client.get_transport()
        assert transport is not None
        transport.close()  # gone mid-file
    daemon.wait_for("upload.aborted", district=district.name)
    with (
        paramiko_client(daemon, district) as client,
        client.open_sftp().open(f"/upload/{epoch}/COMPLETE", "wb"),
    ):
        pass
    found = wait_status(
        daemon,
        district,
        "the cut-off file",
        lambda s: any(e["reason"] == "files_incomplete" for e in s["epochs"]),
    )
    assert any(r["code"] == "upload_incomplete" for r in found["refusals"])


def test_the_status_files_are_read_only_to_the_district(
    daemon: Daemon, district: Credentials
) -> None:
    with paramiko_client(daemon, district) as client:
        sftp = client.open_sftp()
        daemon.wait_until(lambda: "STATUS.txt" in sftp.listdir("/"), "the status files")
        with pytest.raises(OSError):
            sftp.open("/STATUS.txt", "wb")
        with pytest.raises(OSError):
            sftp.remove("/status.json")


def test_every_district_finds_the_contract_a_template_and_its_buildings(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    root = daemon.root(district.name)
    daemon.wait_until(lambda: (root / "users-template.csv").exists(), "the guide files")
    readme = fetch(daemon, district, tmp_path, "README.txt")
    assert "COMPLETE" in readme and "date -u +%Y%m%d-%H%M%S" in readme
    assert "/STATUS.txt" in readme and "users_auto.csv" in readme
    template = tmp_path / "users-template.csv"
    fetch(daemon, district, tmp_path, "users-template.csv")
    assert template.read_bytes().startswith(b"\xef\xbb\xbfEmail,First Name,Last Name")
    assert daemon.cli("validate", str(template)).returncode == 0  # the server's own check
    assert not (root / "buildings.txt").exists()
    names = tmp_path / "buildings-list.txt"
    names.write_text("North Elementary\nSouth High\n")
    daemon.cli("district", "buildings", "set", district.name, str(names))
    listed = fetch(daemon, district, tmp_path, "buildings.txt")
    assert listed.splitlines() == ["North Elementary", "South High"]
    assert "exactly those in /buildings.txt" in (root / "README.txt").read_text()
    daemon.cli("district", "buildings", "clear", district.name)
    assert not (root / "buildings.txt").exists()


def test_a_second_auto_file_never_silently_replaces_the_first(tmp_path: Path) -> None:
    """Inside the settle window a second users_auto.csv is refused with a message (the
    first was never processed nor reported before); once the first is an epoch, the
    second goes through and becomes one of its own."""
    settings = {**FAST_EPOCHS, "epochs_auto_settle": 4}
    first = USERS
    second = USERS + b"cyd@example.org,Cyd,Moe\r\n"
    with run_daemon(tmp_path, **settings) as daemon:
        creds = daemon.add_district()
        with paramiko_client(daemon, creds) as client:
            sftp = client.open_sftp()
            with sftp.open("/upload/users_auto.csv", "wb") as fh:
                fh.write(first)
            with pytest.raises(PermissionError, match="waiting to become an epoch"):
                sftp.open("/upload/users_auto.csv", "wb")
        found = wait_status(
            daemon,
            creds,
            "the refusal explained",
            lambda s: any(r["code"] == "auto_waiting" for r in s["refusals"]),
        )
        assert any("neither is lost" in r["message"] for r in found["refusals"])
        promoted = daemon.wait_for("epoch.promoted", district=creds.name)
        with (
            paramiko_client(daemon, creds) as client,
            client.open_sftp().open("/upload/users_auto.csv", "wb") as fh,
        ):
            fh.write(second)
        again = daemon.wait_for("epoch.promoted", district=creds.name, count=2)
        assert again["epoch"] > promoted["epoch"]
        for epoch, data in ((promoted["epoch"], first), (again["epoch"], second)):
            daemon.wait_for("epoch.published", district=creds.name, epoch=epoch)
            processed = daemon.root(creds.name) / "upload-processed" / epoch / "users.csv"
            assert processed.read_bytes() == data


def test_a_script_finds_its_auto_result_by_sha256_in_the_index(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    import hashlib

    data = USERS + b"dee@example.org,Dee,Fox\r\n"
    (tmp_path / "users_auto.csv").write_bytes(data)
    sftp_batch(daemon, district, "put users_auto.csv /upload/users_auto.csv", cwd=tmp_path)
    promoted = daemon.wait_for("epoch.promoted", district=district.name)
    daemon.wait_for("epoch.published", district=district.name, epoch=promoted["epoch"])
    index = json.loads(fetch(daemon, district, tmp_path, "index.json"))
    digest = hashlib.sha256(data).hexdigest()
    (mine,) = [e for e in index["epochs"] if any(f["sha256"] == digest for f in e["files"])]
    assert mine["epoch"] == promoted["epoch"] and mine["origin"] == "auto"
    assert mine["status"] == "applied" and mine["counts"]["created"] == 3
    assert mine["report"] == f"/upload-processed/{promoted['epoch']}/report.json"


def guide_script(name: str, **values: str) -> str:
    """The guide's script ``name`` (the first fenced block after the paragraph that starts
    with it), with its settings replaced by ``values``: the docs are what is tested."""
    import re

    guide = (Path(__file__).parent.parent / "docs" / "districts.md").read_text()
    start = guide.index(f"`{name}` (")
    script = guide[guide.index("```sh\n", start) + len("```sh\n") :]
    script = script[: script.index("```\n")]
    for key, value in values.items():
        script, found = re.subn(rf"^{key}=.*$", f"{key}='{value}'", script, flags=re.M)
        assert found == 1, key
    return script


def test_the_guides_auto_script_finds_its_own_result(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    """upload-auto.sh from docs/districts.md, run by sh with OpenSSH's sftp: its own
    result, not the previous night's result of the same file, nor a report of another."""
    import hashlib
    import re
    import subprocess

    users = tmp_path / "users.csv"
    script = tmp_path / "upload-auto.sh"
    script.write_text(
        guide_script(
            "upload-auto.sh",
            HOST="127.0.0.1",
            PORT=str(daemon.port),
            DISTRICT=district.name,
            KEY=str(district.key_path),
            KNOWN_HOSTS=str(daemon.known_hosts()),
            CSV=str(users),
            WAIT="1",
        )
    )

    def run(data: bytes) -> tuple[int, str]:
        users.write_bytes(data)
        done = subprocess.run(
            ["sh", str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        epoch = re.search(r"epoch (\d{8}-\d{6})", done.stdout)
        assert epoch is not None, done.stdout + done.stderr
        # The report printed is the one of the epoch made from this very file.
        index = json.loads((daemon.root(district.name) / "index.json").read_text())
        digest = hashlib.sha256(data).hexdigest()
        [entry] = [e for e in index["epochs"] if e["epoch"] == epoch[1]]
        assert [f["sha256"] for f in entry["files"]] == [digest]
        assert entry["files"][0]["uploaded_as"] == "users_auto.csv"
        return done.returncode, epoch[1]

    status, first = run(USERS)
    assert status == 0
    status, again = run(USERS)  # the same file the next night: a result of its own
    assert status == 0 and again > first
    status, rejected = run(b"Email,First Name\r\nann@example.org,Ann\r\n")
    assert status == 1 and rejected > again


def test_curl_users_read_why_their_puts_were_refused(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    """curl says only that the upload failed; the status file, fetched with curl too,
    says why and what to do."""
    (tmp_path / "users.csv").write_bytes(USERS)
    (tmp_path / "empty").write_bytes(b"")
    refused = curl(
        daemon,
        district,
        "-T",
        str(tmp_path / "users.csv"),
        sftp_url(daemon, "/upload/users.csv"),
        check=False,
    )
    assert refused.returncode != 0
    epoch = "20260504-020000"
    curl(  # the data, then a marker named like a Windows file
        daemon,
        district,
        "--ftp-create-dirs",
        "-T",
        str(tmp_path / "users.csv"),
        sftp_url(daemon, f"/upload/{epoch}/users.csv"),
    )
    misnamed = curl(
        daemon,
        district,
        "-T",
        str(tmp_path / "empty"),
        sftp_url(daemon, f"/upload/{epoch}/Complete.txt"),
        check=False,
    )
    assert misnamed.returncode != 0

    def explained(text: str) -> bool:
        return (
            "[epoch_missing]" in text
            and "[marker_misnamed]" in text
            and f"/upload/{epoch}: no COMPLETE yet" in text  # and the epoch waits
        )

    daemon.wait_until(
        lambda: explained((daemon.root(district.name) / "STATUS.txt").read_text()),
        "both refusals and the waiting epoch in STATUS.txt",
    )
    text = curl(daemon, district, sftp_url(daemon, "/STATUS.txt")).stdout
    assert explained(text)
    assert "name it exactly COMPLETE" in text and "users_auto.csv" in text


def test_lftp_users_see_a_forgotten_complete_go_stale(
    daemon: Daemon, district: Credentials, tmp_path: Path
) -> None:
    """The nightly script forgot COMPLETE: the epoch is listed as waiting at once, and as
    stale past epochs.stale_after (shortened here), in the files lftp reads."""
    epoch = "20260505-020000"
    (tmp_path / "users.csv").write_bytes(USERS)
    lftp(
        daemon,
        district,
        f"mkdir /upload/{epoch}; put users.csv -o /upload/{epoch}/users.csv",
        cwd=tmp_path,
    )
    wait_status(
        daemon,
        district,
        "the epoch waiting",
        lambda s: [(e["name"], e["reason"]) for e in s["epochs"]] == [(epoch, "no_marker")],
    )
    wait_status(  # past stale_after
        daemon,
        district,
        "the epoch stale",
        lambda s: [(e["name"], e["reason"]) for e in s["epochs"]] == [(epoch, "stale")],
    )
    listed = lftp(daemon, district, "cat /STATUS.txt; cat /status.json").stdout
    assert f"/upload/{epoch}: no COMPLETE for a long time" in listed
    assert '"reason": "stale"' in listed
