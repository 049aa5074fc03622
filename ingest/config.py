"""One typed settings object for the whole daemon.

Sources, lowest precedence first: the embedded defaults below, a TOML file, then
environment variables ``INGEST_<SECTION>_<KEY>``. The same loader serves ``ingest serve``
and every admin command, so the CLI always acts on the state the server uses.

Anything unknown or malformed is a :class:`ConfigError` naming the key: a typo in a
config file must stop the daemon at startup, not be silently ignored.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

DEFAULT_CONFIG_FILE = Path("config/ingest.toml")
ENV_CONFIG_FILE = "INGEST_CONFIG"
ENV_PREFIX = "INGEST_"

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or greater"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a TCP port between 0 and 65535"


def _networks(value: str) -> str | None:
    """A comma-separated list of addresses or CIDR networks (empty: none)."""
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an IP address or network (e.g. 192.0.2.0/24)"
    return None


def _check(validator: typing.Callable[[Any], str | None]) -> dict[str, Any]:
    return {"check": validator}


@dataclass(frozen=True)
class ServerConfig:
    """The SSH/SFTP listener and its limits."""

    host: str = "0.0.0.0"
    port: int = field(default=2222, metadata=_check(_port))
    # None means <data_dir>/keys; resolved by Config.host_key_dir.
    host_key_dir: Path | None = None
    login_timeout: float = field(default=60.0, metadata=_check(_positive))
    # Seconds between SSH keepalives; 0 disables them.
    keepalive_interval: float = field(default=30.0, metadata=_check(_non_negative))
    # Authenticated connections in total; unauthenticated ones have limits of their own.
    max_connections: int = field(default=256, metadata=_check(_positive))
    max_sessions_per_district: int = field(default=16, metadata=_check(_positive))
    max_auth_attempts: int = field(default=6, metadata=_check(_positive))
    # Seconds a failed password attempt waits for its answer (OpenSSH's fail delay): a
    # timer, no CPU; it holds a guesser's connection, slowing a flood to a trickle.
    auth_failure_delay: float = field(default=2.0, metadata=_check(_non_negative))
    # Connections still in key exchange or authentication (random early drop from half).
    max_unauthenticated: int = field(default=64, metadata=_check(_positive))
    max_unauthenticated_per_source: int = field(default=8, metadata=_check(_positive))
    # Seconds a new connection has to finish the key exchange (then login_timeout applies).
    kex_timeout: float = field(default=10.0, metadata=_check(_positive))
    max_channels_per_connection: int = field(default=4, metadata=_check(_positive))
    # Password checks (argon2) of unknown addresses waiting at once; more fail at once.
    max_password_checks_waiting: int = field(default=16, metadata=_check(_positive))
    max_handles_per_session: int = field(default=64, metadata=_check(_positive))
    # Upload bytes received but not yet on disk, all handles of all districts together.
    max_buffered_upload_bytes: int = field(default=32 * 1024**2, metadata=_check(_positive))
    # On SIGTERM, how long running uploads may take to finish before sessions are closed.
    shutdown_grace: float = field(default=30.0, metadata=_check(_non_negative))


@dataclass(frozen=True)
class StorageConfig:
    """Where districts' files, host keys and state live, and what uploads may take."""

    data_dir: Path = Path("./var")
    # Each district's upload/ tree: bytes and files (waiting epochs, _auto.csv files).
    district_quota_bytes: int = field(default=2 * 1024**3, metadata=_check(_positive))
    district_quota_files: int = field(default=1000, metadata=_check(_positive))
    # Below this much free space on the data volume, no upload starts or goes on.
    min_free_bytes: int = field(default=256 * 1024**2, metadata=_check(_non_negative))


@dataclass(frozen=True)
class DatabaseConfig:
    """The state database; empty means SQLite under <data_dir>/state/."""

    url: str = ""


@dataclass(frozen=True)
class LoggingConfig:
    """Log rendering. ``auto`` is console on a TTY and JSON otherwise."""

    format: LogFormat = "auto"
    level: LogLevel = "info"
    # asyncssh's own (stdlib) logger; it is chatty below warning.
    asyncssh_level: LogLevel = "warning"


@dataclass(frozen=True)
class EpochsConfig:
    """Detecting finished uploads and handing each epoch to the processor once."""

    # inotify (default) or polling, for NFS/EFS-style shared volumes that inotify misses.
    observer: Literal["inotify", "polling"] = "inotify"
    polling_interval: float = field(default=2.0, metadata=_check(_positive))
    # inotify watches held at most (each district's upload/ and the epoch folders in it);
    # a district that would need more, or that the kernel's limit refuses, is polled.
    max_watches: int = field(default=8192, metadata=_check(_positive))
    # Epoch folders of one district watched at most (each district's tree is small; one
    # that makes folders by the thousand is polled instead).
    max_watches_per_district: int = field(default=64, metadata=_check(_positive))
    # Full scan of every district's upload/ besides the events; also run at startup.
    reconcile_interval: float = field(default=30.0, metadata=_check(_positive))
    # How soon the daemon takes what an operator did to the ledger (approve, discard,
    # reprocess, retire, force-apply): it reads the epochs not yet published this often.
    ledger_poll_interval: float = field(default=0.5, metadata=_check(_positive))
    # Files that did not arrive through our SFTP server must be unchanged this long.
    quiet_period: float = field(default=10.0, metadata=_check(_non_negative))
    # _auto.csv files finishing within this window go into one epoch together.
    auto_settle: float = field(default=5.0, metadata=_check(_non_negative))
    # An epoch with files but no COMPLETE after this long is reported stale (24 h).
    stale_after: float = field(default=86400.0, metadata=_check(_positive))
    # Epoch names more than this many seconds ahead of the server's UTC clock are refused
    # (mkdir, rename): epochs are ordered by name, and one from the future would make
    # every correct upload after it look older (superseded).
    max_clock_skew: float = field(default=900.0, metadata=_check(_non_negative))
    # An epoch whose only file is COMPLETE waits this many seconds for its data files to
    # start (parallel clients send the empty COMPLETE first) before it is judged.
    marker_settle: float = field(default=5.0, metadata=_check(_non_negative))
    # A processed epoch stays in /upload/ (read-only) until the sessions that uploaded it
    # have closed, at most this long, so clients' stat/setstat after close still succeed.
    publish_linger: float = field(default=30.0, metadata=_check(_non_negative))
    # A file put directly into /upload/ that is not *_auto.csv: refuse it, or accept it
    # and report it (it is never processed either way).
    loose_files: Literal["refuse", "report"] = "refuse"
    # What processes a claimed epoch: "provisioning" validates users.csv and applies it
    # to the account store; "filenames" only checks the file names.
    processor: Literal["provisioning", "filenames"] = "provisioning"
    # Where the processor runs: "process" (a child process, so that a large file neither
    # slows other districts' uploads nor grows the daemon's memory) or "thread".
    isolation: Literal["process", "thread"] = "process"
    # With "process": epochs whose files total less than this many bytes are processed in
    # a worker thread all the same: they take milliseconds, which a round trip to the
    # child (and starting it) would multiply. 0 = every epoch in the child.
    isolation_min_bytes: int = field(default=1024 * 1024, metadata=_check(_non_negative))


@dataclass(frozen=True)
class ProvisioningConfig:
    """Validating users.csv and applying it to the account store."""

    max_file_bytes: int = field(default=512 * 1024 * 1024, metadata=_check(_positive))
    max_field_length: int = field(default=1000, metadata=_check(_positive))
    # More bad rows than this share of data rows rejects the whole file.
    max_bad_row_share: float = field(default=0.05, metadata=_check(_non_negative))
    # ...and at least this many bad rows: three bad rows never reject a 40-row file.
    max_bad_rows_min: int = field(default=10, metadata=_check(_non_negative))
    # An epoch that would delete more than this share of the active accounts AND more
    # than deletion_min accounts is held for an operator (ingest epochs approve|discard).
    deletion_share: float = field(default=0.10, metadata=_check(_non_negative))
    deletion_min: int = field(default=5, metadata=_check(_non_negative))


@dataclass(frozen=True)
class DefenderConfig:
    """Per-address scores for what attackers do, and bans (modelled on SFTPGo's defender)."""

    enabled: bool = True
    # An address that reaches this score within observation_time is banned for ban_time.
    threshold: int = field(default=15, metadata=_check(_positive))
    observation_time: float = field(default=1800.0, metadata=_check(_positive))
    ban_time: float = field(default=1800.0, metadata=_check(_positive))
    # Each further ban of the same address lasts this many percent longer than its last.
    ban_time_increment: float = field(default=50.0, metadata=_check(_non_negative))
    score_wrong_credentials: int = field(default=1, metadata=_check(_non_negative))
    score_unknown_district: int = field(default=2, metadata=_check(_non_negative))
    score_limit: int = field(default=3, metadata=_check(_non_negative))
    score_protocol: int = field(default=2, metadata=_check(_non_negative))
    # Comma-separated addresses or CIDR networks: never scored or banned / always refused.
    safe_list: str = field(default="", metadata=_check(_networks))
    block_list: str = field(default="", metadata=_check(_networks))
    # Seconds between reads of the ban table (bans added or lifted with `ingest bans`).
    refresh_interval: float = field(default=5.0, metadata=_check(_positive))


@dataclass(frozen=True)
class Config:
    """Every setting of the daemon, resolved and validated."""

    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    epochs: EpochsConfig = field(default_factory=EpochsConfig)
    provisioning: ProvisioningConfig = field(default_factory=ProvisioningConfig)
    defender: DefenderConfig = field(default_factory=DefenderConfig)
    # Where the settings came from, for `server.started`; not a setting itself.
    source: str = field(default="defaults", compare=False)

    @property
    def data_dir(self) -> Path:
        return self.storage.data_dir

    @property
    def host_key_dir(self) -> Path:
        return self.server.host_key_dir or self.data_dir / "keys"

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'state' / 'ingest.db'}"

    @property
    def journal_path(self) -> Path:
        """Server-only: the upload journal (ingest/store/journal.py), a SQLite file of its
        own beside the state, so that an upload never waits for the state's write lock."""
        return self.data_dir / "state" / "uploads.db"

    @property
    def districts_dir(self) -> Path:
        return self.data_dir / "districts"

    @property
    def archive_dir(self) -> Path:
        """Server-only: an immutable copy of every claimed epoch, for processing and audit."""
        return self.data_dir / "archive"

    @property
    def staging_dir(self) -> Path:
        """Server-only: epochs being built from _auto.csv files before they appear."""
        return self.data_dir / "staging"

    @property
    def temp_dir(self) -> Path:
        """Server-only: SQLite's temporary files (an epoch's staged rows beyond the page
        cache). On the data volume, not /tmp: in the container /tmp is a tmpfs, i.e.
        memory, and a large epoch spills hundreds of MB."""
        return self.data_dir / "tmp"


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "storage": StorageConfig,
    "database": DatabaseConfig,
    "logging": LoggingConfig,
    "epochs": EpochsConfig,
    "provisioning": ProvisioningConfig,
    "defender": DefenderConfig,
}


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the Config from defaults, a TOML file and the environment.

    ``path`` wins over ``$INGEST_CONFIG``; when neither is given, ``config/ingest.toml``
    is read if it exists (a repository checkout), else the embedded defaults apply.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    origin: dict[tuple[str, str], str] = {}

    explicit = path if path is not None else env.get(ENV_CONFIG_FILE) or None
    config_file = Path(explicit) if explicit else DEFAULT_CONFIG_FILE
    source = "defaults"
    if explicit or config_file.is_file():
        source = str(config_file)
        for section, values in _read_toml(config_file).items():
            for key, value in values.items():
                raw[section][key] = value
                origin[(section, key)] = f"{section}.{key} in {config_file}"

    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_FILE:
            continue
        section, key = _split_env_name(name)
        raw[section][key] = value
        origin[(section, key)] = f"{section}.{key} (from ${name})"

    sections = {
        name: _build_section(cls, name, raw[name], origin) for name, cls in _SECTIONS.items()
    }
    config = Config(**sections, source=source)
    if config.database_url.split(":", 1)[0] not in ("sqlite",):
        raise ConfigError(
            f"database.url: unsupported scheme in {config.database_url!r}; "
            "this version stores state in SQLite (sqlite:///path/to/ingest.db)"
        )
    return config


def _read_toml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for section, values in document.items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"{section}: unknown section in {path}; known: {', '.join(_SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a table ([{section}]) in {path}")
    return document


def _split_env_name(name: str) -> tuple[str, str]:
    rest = name[len(ENV_PREFIX) :].lower()
    for section in _SECTIONS:
        if rest.startswith(section + "_"):
            return section, rest[len(section) + 1 :]
    raise ConfigError(
        f"${name}: unknown setting; environment overrides look like "
        "INGEST_<SECTION>_<KEY> with SECTION one of " + ", ".join(s.upper() for s in _SECTIONS)
    )


def _build_section(
    cls: type[Any],
    section: str,
    values: dict[str, Any],
    origin: dict[tuple[str, str], str],
) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        where = origin.get((section, key), f"{section}.{key}")
        if key not in fields:
            raise ConfigError(f"{where}: unknown key; known keys: {', '.join(fields)}")
        converted = _convert(value, hints[key], where)
        check = fields[key].metadata.get("check")
        problem = check(converted) if check and converted is not None else None
        if problem:
            raise ConfigError(f"{where}: {problem} (got {value!r})")
        kwargs[key] = converted
    return cls(**kwargs)


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Coerce a TOML value or an environment string to the field's declared type."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value == "" or value is None:
            return None
        return _convert(value, options[0], where)
    if origin is Literal:
        allowed = typing.get_args(hint)
        text = str(value).lower()
        if text not in allowed:
            raise ConfigError(f"{where}: must be one of {', '.join(allowed)} (got {value!r})")
        return text
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: must be true or false (got {value!r})")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: must be a number (got {value!r})")
        try:
            number = hint(value) if not isinstance(value, str) else hint(value.strip())
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: must be {'an integer' if hint is int else 'a number'} (got {value!r})"
            ) from None
        if hint is int and isinstance(value, float) and value != number:
            raise ConfigError(f"{where}: must be an integer (got {value!r})")
        return number
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: must be a non-empty path string (got {value!r})")
        return Path(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string (got {value!r})")
        return value
    raise ConfigError(f"{where}: unsupported setting type {hint!r}")  # pragma: no cover
