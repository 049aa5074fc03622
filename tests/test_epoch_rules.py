"""The naming contract and readiness rules as pure functions (the e2e tests use them too)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ingest.epochs.names import (
    auto_target,
    epoch_name_for,
    is_misnamed_marker,
    is_temp_name,
    parse_epoch_name,
)
from ingest.epochs.policy import EpochPolicy, EpochRegistry
from ingest.epochs.scan import EpochContents, FileSeen, judge_epoch
from ingest.provisioning.filenames import check_file_names, meant_file
from ingest.sftp import Denied


def test_epoch_names() -> None:
    assert parse_epoch_name("20260131-020000").time_valid  # type: ignore[union-attr]
    odd = parse_epoch_name("20200101-139029")  # the vendor's documentation example
    assert odd is not None and not odd.time_valid
    for bad in ("2026-01-31", "20260131", "20260131-0200", "20260131_020000", "x20260131-020000"):
        assert parse_epoch_name(bad) is None


@pytest.mark.parametrize(
    "name",
    [
        "complete",
        "Complete",
        "COMPLETE.txt",
        "COMPLETE.csv",
        " COMPLETE",
        "COMPLETE ",
        "complete.done",
    ],
)
def test_misnamed_markers(name: str) -> None:
    assert is_misnamed_marker(name)


def test_names_that_are_not_markers_or_are_exact() -> None:
    assert not is_misnamed_marker("COMPLETE")
    assert not is_misnamed_marker("users.csv")
    assert not is_misnamed_marker("completed.csv")


def test_temp_and_auto_names() -> None:
    for temp in ("users.csv.filepart", "users.csv.part", "x.tmp", ".users.csv.swp", "a~"):
        assert is_temp_name(temp)
    assert not is_temp_name("users.csv")
    assert auto_target("users_auto.csv") == "users.csv"
    assert auto_target("staff_auto.csv") == "staff.csv"
    assert auto_target("users.csv") is None


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("Users.csv", "users.csv"),
        ("user.csv", "users.csv"),
        ("users.CSV", "users.csv"),
        ("users.csv.csv", "users.csv"),
        ("users.txt", "users.csv"),
        ("users_auto.csv", "users.csv"),
        ("staff.csv", None),
        ("users.csv", None),
    ],
)
def test_meant_file(name: str, meant: str | None) -> None:
    assert meant_file(name) == meant


def test_file_name_findings() -> None:
    errors, warnings = check_file_names(["Users.csv", "notes.txt"], {"Users.csv": 10})
    assert [e.code for e in errors] == ["file_misnamed"]  # not also file_missing
    assert [w.code for w in warnings] == ["file_unknown"]
    errors, _ = check_file_names(["users.csv"], {"users.csv": 0})
    assert [e.code for e in errors] == ["file_empty"]
    errors, _ = check_file_names([], {})
    assert [e.code for e in errors] == ["file_missing"]


def _seen(name: str, size: int = 10, mtime: float = 0.0) -> FileSeen:
    return FileSeen(name, Path("/e") / name, size, mtime)


def _judge(contents: EpochContents, **kwargs: object) -> str:
    defaults: dict[str, object] = {
        "open_paths": set(),
        "trusted_sizes": {},
        "incomplete": set(),
        "now": 1000.0,
        "quiet_period": 10.0,
        "stale_after": 500.0,
        "marker_settle": 5.0,
    }
    return judge_epoch("20260131-020000", contents, **{**defaults, **kwargs}).reason  # type: ignore[arg-type]


def test_readiness_rules() -> None:
    users, marker = _seen("users.csv", mtime=999.0), _seen("COMPLETE", 0, mtime=999.0)
    fresh = EpochContents(marker, [users], [], [], [], [])
    trusted = {users.path: 10, marker.path: 0}
    assert _judge(fresh, trusted_sizes=trusted) == "ready"
    assert _judge(fresh) == "settling"  # not seen over SFTP: quiet period
    assert _judge(fresh, now=1010.0) == "ready"
    assert _judge(fresh, trusted_sizes={users.path: 5, marker.path: 0}) == "settling"
    assert _judge(fresh, trusted_sizes=trusted, open_paths={users.path}) == "files_open"
    assert _judge(fresh, trusted_sizes=trusted, incomplete={users.path}) == "files_incomplete"
    # Anything being changed in the epoch holds it, even a file not listed yet.
    assert _judge(fresh, trusted_sizes=trusted, open_paths={marker.path.parent / "x"}) == (
        "files_open"
    )
    # COMPLETE alone waits for data files to start (parallel clients send it first)...
    alone = EpochContents(marker, [], [], [], [], [])
    assert _judge(alone, trusted_sizes=trusted) == "marker_settling"
    assert _judge(alone, trusted_sizes=trusted, marker_seen_at=1003.0, now=1007.0) == (
        "marker_settling"  # seen closed later than its mtime says (a client set the time)
    )
    assert _judge(alone, trusted_sizes=trusted, now=1004.5) == "ready"  # then: file_missing
    # ...but an epoch with its data files is not slowed down.
    assert _judge(fresh, trusted_sizes=trusted, marker_settle=60.0) == "ready"
    part = _seen("users.csv.filepart", mtime=999.0)
    with_part = EpochContents(marker, [users], [part], [], [], [])
    assert _judge(with_part, trusted_sizes={**trusted, part.path: 10}) == "temp_files"
    assert _judge(with_part, trusted_sizes=trusted, now=1010.0) == "ready"  # a leftover
    no_marker = EpochContents(None, [users], [], [], [], [])
    assert _judge(no_marker) == "no_marker"
    assert _judge(no_marker, now=2000.0) == "stale"


def test_policy() -> None:
    registry = EpochRegistry()
    registry.known["d"].add("20260101-000000")
    registry.submitted["d"].add("20260102-000000")
    messages: list[object] = []

    class Log:
        def warning(self, *args: object, **kwargs: object) -> None:
            messages.append(kwargs.get("code"))

    policy = EpochPolicy(registry, "refuse", 900, Log())

    def reason(operation: str, path: str) -> str | None:
        try:
            policy.check("d", operation, path)
        except Denied as denial:
            return denial.reason
        return None

    assert reason("mkdir", "/upload/20260103-000000") is None
    assert reason("mkdir", "/upload/foo") == "epoch_name_invalid"
    assert reason("mkdir", "/upload/20260101-000000") == "epoch_duplicate"
    assert reason("mkdir", "/upload/20200101-139029") is None and messages == ["epoch_time_invalid"]
    assert reason("open", "/upload/users.csv") == "epoch_missing"
    assert reason("open", "/upload/users_auto.csv") is None
    assert reason("open", "/upload/users_auto.csv.filepart") is None
    assert reason("rename_target", "/upload/users.csv") == "epoch_missing"
    assert reason("open", "/upload/20260103-000000/Complete") == "marker_misnamed"
    # A report's name: the server's report would overwrite the district's file.
    assert reason("open", "/upload/20260103-000000/changes.csv") == "report_name_reserved"
    assert reason("rename_target", "/upload/20260103-000000/report.json") == (
        "report_name_reserved"
    )
    assert reason("open", "/upload/changes_auto.csv") == "report_name_reserved"
    assert reason("open", "/upload/20260103-000000/users.csv") is None
    assert reason("open", "/upload/20260102-000000/users.csv") == "epoch_submitted"
    assert reason("remove", "/upload/20260102-000000/users.csv") == "epoch_submitted"
    assert reason("rmdir", "/upload/20260102-000000") == "epoch_submitted"
    assert reason("mkdir", "/upload/20260103-000000/sub") == "epoch_subdirectory"
    assert reason("open", "/other/x") is None  # outside /upload/: the chroot decides
    assert reason("mkdir", "/upload/29991231-000000") == "epoch_in_future"
    # A directory arriving by rename is judged like a mkdir; a file never becomes an epoch.
    assert reason("rename_target_dir", "/upload/20260103-000000/sub") == "epoch_subdirectory"
    assert reason("rename_target_dir", "/upload/20260104-000000") is None
    assert reason("rename_target_dir", "/upload/tmp") == "epoch_name_invalid"
    assert reason("rename_target", "/upload/20260104-000000") == "epoch_missing"
    assert reason("rename_target_dir", "/upload/20991231-235959") == "epoch_in_future"
    # Impossible dates are refused; an impossible time on a real date keeps its tolerance.
    for impossible in ("99999999-999999", "20261399-000000", "20250229-120000"):
        assert reason("mkdir", f"/upload/{impossible}") == "epoch_date_invalid"
    # max_clock_skew (15 min here) decides how far ahead of the server's clock a name may be
    now = datetime.now(UTC)
    assert reason("mkdir", f"/upload/{epoch_name_for(now + timedelta(minutes=10))}") is None
    ahead = epoch_name_for(now + timedelta(hours=9))
    with pytest.raises(Denied, match=r"9 h ahead of the server's clock .* local time"):
        policy.check("d", "mkdir", f"/upload/{ahead}")


def test_archive_is_a_private_verified_copy_and_survives_a_crash(tmp_path: Path) -> None:
    import hashlib

    from ingest.epochs.files import ArchiveMismatch, archive
    from ingest.epochs.handoff import FileInfo

    source, target = tmp_path / "epoch", tmp_path / "archive"
    source.mkdir()
    target.mkdir()
    (source / "users.csv").write_bytes(b"x")
    (target / ".users.csv.tmp").write_bytes(b"")  # what a kill -9 can leave behind
    info = FileInfo("users.csv", 1, hashlib.sha256(b"x").hexdigest())
    archive(source, target, [info])
    assert (target / "users.csv").read_bytes() == b"x"
    assert not (target / ".users.csv.tmp").exists()
    # Not a hard link: what happens to the uploaded file does not reach the archive.
    assert (target / "users.csv").stat().st_ino != (source / "users.csv").stat().st_ino
    (source / "users.csv").write_bytes(b"y")
    archive(source, target, [info])  # a restart redoing the claim: verified, kept
    (target / "users.csv").write_bytes(b"z")
    with pytest.raises(ArchiveMismatch) as same_size:
        archive(source, target, [info])
    assert same_size.value.sha256 == hashlib.sha256(b"z").hexdigest()
    (target / "users.csv").write_bytes(b"zz")
    with pytest.raises(ArchiveMismatch) as other_size:
        archive(source, target, [info])
    assert other_size.value.size == 2 and other_size.value.sha256 is None


def test_a_promotion_cut_short_by_a_crash_is_completed_whole(tmp_path: Path) -> None:
    """users_auto.csv and staff_auto.csv arrived together; the server died after moving
    the first into the new epoch. The next start moves the second too: one epoch."""
    from ingest.epochs.files import finish_staged, promote

    upload, staging = tmp_path / "upload", tmp_path / "staging"
    upload.mkdir()
    for name in ("users_auto.csv", "staff_auto.csv"):
        (upload / name).write_bytes(b"x")
    name, _ = promote(
        upload,
        staging,
        [upload / "users_auto.csv", upload / "staff_auto.csv"],
        lambda _: False,
        None,
        timedelta(minutes=15),
    )
    # Rebuild the state a kill -9 after the first move leaves: the epoch back in staging,
    # its manifest beside it, one file moved and the other still in /upload/.
    os.rename(upload / name, staging / name)
    os.rename(staging / name / "staff.csv", upload / "staff_auto.csv")
    (staging / name / "COMPLETE").unlink()
    (staging / f"{name}.sources").write_text('["users_auto.csv", "staff_auto.csv"]')
    assert finish_staged(upload, staging, lambda _: False) == [name]
    assert sorted(p.name for p in (upload / name).iterdir()) == [
        "COMPLETE",
        "staff.csv",
        "users.csv",
    ]
    assert sorted(p.name for p in upload.iterdir()) == [name]
    assert list(staging.iterdir()) == []
