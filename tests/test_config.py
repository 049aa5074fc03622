"""Configuration: defaults, TOML, environment overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def test_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no config/ingest.toml here
    config = load_config(environ={})
    assert config.source == "defaults"
    assert (config.server.host, config.server.port) == ("0.0.0.0", 2222)
    assert config.data_dir == Path("var")
    assert config.host_key_dir == Path("var/keys")
    assert config.database_url == "sqlite:///var/state/ingest.db"
    assert config.logging.format == "auto"


def test_shipped_config_file_matches_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    from_file = load_config(environ={})
    assert from_file.source == str(Path("config/ingest.toml"))
    monkeypatch.chdir(REPO / "tests")
    assert load_config(environ={}) == from_file  # every documented default is the real one


def test_file_then_environment_precedence(tmp_path: Path) -> None:
    path = tmp_path / "ingest.toml"
    path.write_text('[server]\nport = 2022\nmax_connections = 10\n[storage]\ndata_dir = "/srv"\n')
    config = load_config(
        path,
        environ={
            "INGEST_SERVER_PORT": "2300",
            "INGEST_SERVER_HOST_KEY_DIR": "/keys",
            "INGEST_LOGGING_FORMAT": "JSON",
        },
    )
    assert config.server.port == 2300
    assert config.server.max_connections == 10
    assert config.host_key_dir == Path("/keys")
    assert config.database_url == "sqlite:////srv/state/ingest.db"
    assert config.logging.format == "json"
    assert load_config(environ={"INGEST_CONFIG": str(path)}).server.port == 2022


@pytest.mark.parametrize(
    ("toml", "env", "named"),
    [
        ("[server]\nprot = 1\n", {}, "server.prot"),
        ("[sever]\nport = 1\n", {}, "sever"),
        ("[server]\nport = 70000\n", {}, "server.port"),
        ('[server]\nport = "abc"\n', {}, "server.port"),
        ("[server]\nlogin_timeout = -1\n", {}, "server.login_timeout"),
        ('[logging]\nformat = "xml"\n', {}, "logging.format"),
        ("", {"INGEST_SERVER_PORT": "twenty"}, "INGEST_SERVER_PORT"),
        ("", {"INGEST_SERVER_MAXCONN": "1"}, "server.maxconn"),
        ("", {"INGEST_NOPE_X": "1"}, "INGEST_NOPE_X"),
        ("", {"INGEST_DATABASE_URL": "postgresql://x/y"}, "database.url"),
        ("[server\n", {}, "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, toml: str, env: dict[str, str], named: str) -> None:
    path = tmp_path / "ingest.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(path, environ=env)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_a_librarys_repeated_records_are_held_back_with_a_count() -> None:
    """One dropped client once produced 1,464 identical asyncssh warnings."""
    import io
    import json
    import logging

    from ingest.config import LoggingConfig
    from ingest.logging import RepeatFilter, configure_logging, flush_logs, get_logger

    out = io.StringIO()
    configure_logging(LoggingConfig(format="json"), stream=out)
    handler = logging.getLogger().handlers[0]
    for old in [f for f in handler.filters if isinstance(f, RepeatFilter)]:
        handler.removeFilter(old)
    now = [0.0]
    handler.addFilter(RepeatFilter(window=10, clock=lambda: now[0]))
    library, ours = logging.getLogger("asyncssh"), get_logger("ingest.test")
    for _ in range(1_464):
        library.warning("Connection lost while writing")
        ours.warning("test.event")  # never held back
    library.warning("something else")
    now[0] = 10.5  # past the window: the next one passes, with the count
    library.warning("Connection lost while writing")
    flush_logs()  # lines are written by a thread of their own
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    lib = [(r["message"], r.get("repeated")) for r in lines if r["event"] == "lib.log"]
    assert lib == [
        ("Connection lost while writing", None),
        ("something else", None),
        ("Connection lost while writing", 1_463),
    ]
    assert sum(r["event"] == "test.event" for r in lines) == 1_464
