"""Districts: their SFTP credentials, enabled flag and on-disk root.

Passwords are kept only as argon2id hashes; public keys as OpenSSH lines identified by their
SHA256 fingerprint, the same string ``ssh-keygen -lf`` prints, so an operator can remove a
key by what the district tells them.
"""

from __future__ import annotations

import ipaddress
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncssh
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ingest.store.db import Database

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{1,62}$")
MIN_PASSWORD_LENGTH = 12
MIN_RSA_BITS = 2048

UPLOAD_DIR = "upload"
PROCESSED_DIR = "upload-processed"

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verifying against this when a district is unknown keeps the time of a failed login
# independent of whether the name exists.
_DUMMY_HASH = _hasher.hash("not a real password, only for constant-time failures")


class DistrictError(Exception):
    """An admin operation on districts cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class DistrictKey:
    fingerprint: str
    algorithm: str
    public_key: str
    comment: str
    added_at: str


@dataclass(frozen=True)
class District:
    name: str
    enabled: bool
    has_password: bool
    keys: tuple[DistrictKey, ...]
    created_at: str
    updated_at: str
    allowed_sources: tuple[str, ...] = ()  # networks it may log in from; () = anywhere


def validate_district_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise DistrictError(
            f"invalid district name {name!r}: use 2-63 characters, lower-case letters, digits, "
            "'-' or '_', starting with a letter or digit (it is also the SFTP username)"
        )
    return name


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise DistrictError(f"password too short: use at least {MIN_PASSWORD_LENGTH} characters")
    if password != password.strip() or "\n" in password:
        raise DistrictError("password must not start or end with white space or contain newlines")
    return _hasher.hash(password)


def parse_public_key(text: str) -> tuple[asyncssh.SSHKey, str]:
    """Parse one OpenSSH public key line; refuse key types too weak to accept."""
    try:
        key = asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise DistrictError(
            f"not an OpenSSH public key ({exc}); expected a line like "
            "'ssh-ed25519 AAAAC3Nza... comment' as in id_ed25519.pub"
        ) from None
    algorithm = key.get_algorithm()
    if algorithm == "ssh-dss":
        raise DistrictError("DSA keys are not accepted; generate one with ssh-keygen -t ed25519")
    if algorithm == "ssh-rsa":
        bits = getattr(key.pyca_key, "key_size", 0)
        if bits < MIN_RSA_BITS:
            raise DistrictError(
                f"RSA key of {bits} bits is too weak; use at least {MIN_RSA_BITS} bits or ed25519"
            )
    return key, algorithm


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class DistrictStore:
    """Admin operations and credential checks for districts; all methods block."""

    def __init__(self, db: Database, districts_dir: Path) -> None:
        self.db = db
        self.districts_dir = districts_dir

    def root(self, name: str) -> Path:
        return self.districts_dir / name

    def add(self, name: str, password: str | None = None, keys: tuple[str, ...] = ()) -> District:
        validate_district_name(name)
        password_hash = hash_password(password) if password is not None else None
        parsed = [parse_public_key(text) for text in keys]
        now = _now()
        with self.db.connect() as conn:
            if conn.execute("SELECT 1 FROM districts WHERE name = ?", (name,)).fetchone():
                raise DistrictError(f"district {name!r} already exists")
            conn.execute(
                "INSERT INTO districts (name, password_hash, enabled, created_at, updated_at)"
                " VALUES (?, ?, 1, ?, ?)",
                (name, password_hash, now, now),
            )
            for key, algorithm in parsed:
                self._insert_key(conn, name, key, algorithm, now)
            self._make_dirs(name)
        return self.require(name)

    def _make_dirs(self, name: str) -> None:
        root = self.root(name)
        # The root itself is never writable by the district (the SFTP policy enforces it);
        # these modes keep other local users out as well.
        for path in (root, root / UPLOAD_DIR, root / PROCESSED_DIR):
            path.mkdir(mode=0o750, parents=True, exist_ok=True)

    def _insert_key(
        self, conn: sqlite3.Connection, name: str, key: asyncssh.SSHKey, algorithm: str, now: str
    ) -> str:
        fingerprint = key.get_fingerprint("sha256")
        line = key.export_public_key("openssh").decode("ascii").strip()
        comment = key.get_comment() or ""
        exists = conn.execute(
            "SELECT 1 FROM district_keys WHERE district = ? AND fingerprint = ?",
            (name, fingerprint),
        ).fetchone()
        if exists:
            raise DistrictError(f"key {fingerprint} is already registered for {name!r}")
        conn.execute(
            "INSERT INTO district_keys (district, fingerprint, algorithm, public_key, comment,"
            " added_at) VALUES (?, ?, ?, ?, ?, ?)",
            (name, fingerprint, algorithm, line, comment, now),
        )
        return str(fingerprint)

    def set_password(self, name: str, password: str) -> None:
        password_hash = hash_password(password)
        with self.db.connect() as conn:
            self._require_row(conn, name)
            conn.execute(
                "UPDATE districts SET password_hash = ?, updated_at = ? WHERE name = ?",
                (password_hash, _now(), name),
            )

    def add_key(self, name: str, key_text: str) -> str:
        key, algorithm = parse_public_key(key_text)
        with self.db.connect() as conn:
            self._require_row(conn, name)
            fingerprint = self._insert_key(conn, name, key, algorithm, _now())
            conn.execute("UPDATE districts SET updated_at = ? WHERE name = ?", (_now(), name))
        return fingerprint

    def remove_key(self, name: str, fingerprint: str) -> None:
        with self.db.connect() as conn:
            self._require_row(conn, name)
            removed = conn.execute(
                "DELETE FROM district_keys WHERE district = ? AND fingerprint = ?",
                (name, fingerprint),
            ).rowcount
            if not removed:
                raise DistrictError(
                    f"district {name!r} has no key {fingerprint}; "
                    f"see `ingest district list` for its fingerprints"
                )
            conn.execute("UPDATE districts SET updated_at = ? WHERE name = ?", (_now(), name))

    def set_enabled(self, name: str, enabled: bool) -> None:
        with self.db.connect() as conn:
            self._require_row(conn, name)
            conn.execute(
                "UPDATE districts SET enabled = ?, updated_at = ? WHERE name = ?",
                (int(enabled), _now(), name),
            )

    def set_allowed_sources(self, name: str, sources: list[str]) -> tuple[str, ...]:
        """Where the district may log in from (CIDR networks or addresses); [] = anywhere."""
        networks = []
        for source in sources:
            try:
                networks.append(str(ipaddress.ip_network(source.strip(), strict=False)))
            except ValueError:
                raise DistrictError(
                    f"{source!r} is not an IP address or network (e.g. 192.0.2.0/24)"
                ) from None
        with self.db.connect() as conn:
            self._require_row(conn, name)
            conn.execute(
                "UPDATE districts SET allowed_sources = ?, updated_at = ? WHERE name = ?",
                (",".join(networks), _now(), name),
            )
        return tuple(networks)

    def get(self, name: str) -> District | None:
        with self.db.read() as conn:
            row = conn.execute("SELECT * FROM districts WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            return self._district(conn, row)

    def require(self, name: str) -> District:
        district = self.get(name)
        if district is None:
            raise DistrictError(f"no district named {name!r}; see `ingest district list`")
        return district

    def list_all(self) -> list[District]:
        with self.db.read() as conn:
            rows = conn.execute("SELECT * FROM districts ORDER BY name").fetchall()
            return [self._district(conn, row) for row in rows]

    def _district(self, conn: sqlite3.Connection, row: sqlite3.Row) -> District:
        keys = conn.execute(
            "SELECT fingerprint, algorithm, public_key, comment, added_at FROM district_keys"
            " WHERE district = ? ORDER BY added_at, fingerprint",
            (row["name"],),
        ).fetchall()
        return District(
            name=row["name"],
            enabled=bool(row["enabled"]),
            has_password=row["password_hash"] is not None,
            keys=tuple(DistrictKey(**dict(k)) for k in keys),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            allowed_sources=_split(row["allowed_sources"]),
        )

    def _require_row(self, conn: sqlite3.Connection, name: str) -> None:
        if not conn.execute("SELECT 1 FROM districts WHERE name = ?", (name,)).fetchone():
            raise DistrictError(f"no district named {name!r}; see `ingest district list`")

    # --- used by the SFTP server on every login (from a worker thread) ---

    def check_password(self, name: str, password: str) -> str | None:
        """None when the password is right for an enabled district, else the failure reason."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT password_hash, enabled FROM districts WHERE name = ?", (name,)
            ).fetchone()
        stored = row["password_hash"] if row is not None else None
        try:
            _hasher.verify(stored or _DUMMY_HASH, password)
            matched = stored is not None
        except (VerificationError, InvalidHashError):
            matched = False
        if row is None:
            return "unknown_district"
        if stored is None:
            return "password_not_set"
        if not matched:
            return "wrong_password"
        if not row["enabled"]:
            return "district_disabled"
        return None

    def allowed_sources(self, name: str) -> tuple[str, ...]:
        """The networks the district may log in from; () for anywhere (or no district)."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT allowed_sources FROM districts WHERE name = ?", (name,)
            ).fetchone()
        return _split(row["allowed_sources"]) if row is not None else ()

    def authorized_keys(self, name: str) -> tuple[bool, list[str]]:
        """(district exists and is enabled, its public key lines)."""
        with self.db.read() as conn:
            row = conn.execute("SELECT enabled FROM districts WHERE name = ?", (name,)).fetchone()
            if row is None:
                return False, []
            keys = conn.execute(
                "SELECT public_key FROM district_keys WHERE district = ?", (name,)
            ).fetchall()
        return bool(row["enabled"]), [k["public_key"] for k in keys]


def _split(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)
