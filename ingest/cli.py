"""The ``ingest`` command: run the daemon and administer districts.

Thin by design: each command loads the same Config as the server and calls the layer that
owns the work, so the admin commands act on the live server's state without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import getpass
import json
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest import __version__
from ingest.config import Config, ConfigError, load_config
from ingest.epochs.inventory import processed_report, waiting_epochs
from ingest.epochs.ledger import STATES, Ledger
from ingest.epochs.reports import render_text
from ingest.epochs.status import STATUS_JSON
from ingest.logging import configure_logging, get_logger
from ingest.provisioning.accounts import (
    MODES,
    DistrictSettings,
    export_rows,
    get_settings,
    history,
    set_buildings,
    set_mode,
)
from ingest.provisioning.csvapi import COLUMNS
from ingest.provisioning.guide import refresh_guide
from ingest.provisioning.processor import validation_limits
from ingest.provisioning.validate import read_buildings, validate_path
from ingest.provisioning.validator import build_validator
from ingest.server import Server
from ingest.sftp import load_or_create_host_keys
from ingest.store import Database, DistrictError, DistrictStore
from ingest.store.bans import Ban, BanStore, normalise
from ingest.text import formula_safe, printable

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command killed by it


class CommandError(Exception):
    """A command cannot do what was asked; printed as ``ingest: <message>``."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        handler: Callable[[argparse.Namespace, Config], int] = args.handler
        code = handler(args, config)
        sys.stdout.flush()  # so that a reader that left shows here, not at exit
        return code
    except ConfigError as exc:
        print(f"ingest: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandError, DistrictError) as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # before OSError, which it is
        # `ingest accounts export NAME | head`: the reader left; no traceback. Python
        # flushes stdout again at exit, so point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except sqlite3.Error as exc:  # a read-only or unreadable state database
        print(f"ingest: the state database cannot be used: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # an unreadable config file, an unwritable data directory
        where = f": {exc.filename}" if exc.filename else ""
        print(f"ingest: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingest", description="SFTP ingest daemon for account provisioning."
    )
    parser.add_argument("--version", action="version", version=f"ingest {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file (default: $INGEST_CONFIG, else config/ingest.toml "
        "if present, else built-in defaults)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the daemon in the foreground")
    serve.set_defaults(handler=_serve)

    hostkey = commands.add_parser("hostkey", help="print the host key fingerprints (SHA256)")
    hostkey.set_defaults(handler=_hostkey)

    health = commands.add_parser(
        "healthcheck", help="exit 0 if the SFTP port answers with an SSH banner"
    )
    health.add_argument("--host", help="default: server.host (127.0.0.1 for 0.0.0.0)")
    health.add_argument("--port", type=int, help="default: server.port")
    health.add_argument("--timeout", type=float, default=5.0)
    health.set_defaults(handler=_healthcheck)

    district = commands.add_parser("district", help="manage districts (SFTP accounts)")
    dc = district.add_subparsers(dest="district_command", required=True, metavar="ACTION")

    add = dc.add_parser("add", help="create a district and its upload directories")
    add.add_argument("name")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="PUBKEY_FILE",
        help="OpenSSH public key file (repeatable)",
    )
    add.set_defaults(handler=_district_add)

    passwd = dc.add_parser("passwd", help="set a district's password")
    passwd.add_argument("name")
    passwd.add_argument(
        "--password-stdin",
        action="store_true",
        required=True,
        help="read the password from standard input",
    )
    passwd.set_defaults(handler=_district_passwd)

    add_key = dc.add_parser("add-key", help="authorise an OpenSSH public key")
    add_key.add_argument("name")
    add_key.add_argument("file", metavar="PUBKEY_FILE")
    add_key.set_defaults(handler=_district_add_key)

    remove_key = dc.add_parser("remove-key", help="revoke a public key by fingerprint")
    remove_key.add_argument("name")
    remove_key.add_argument("fingerprint", help="e.g. SHA256:abc... as in `district list`")
    remove_key.set_defaults(handler=_district_remove_key)

    for action, enabled in (("disable", False), ("enable", True)):
        toggle = dc.add_parser(action, help=f"{action} a district's logins")
        toggle.add_argument("name")
        toggle.set_defaults(handler=_district_toggle, enabled=enabled)

    set_mode = dc.add_parser("set-mode", help="how uploads change accounts")
    set_mode.add_argument("name")
    set_mode.add_argument(
        "mode",
        choices=MODES,
        help="upsert: only what the file lists; full-sync: also delete "
        "active accounts absent from the file",
    )
    set_mode.set_defaults(handler=_district_set_mode)
    buildings = dc.add_parser("buildings", help="the district's building list")
    bc = buildings.add_subparsers(dest="buildings_command", required=True, metavar="ACTION")
    bset = bc.add_parser("set", help="building names must match this list (one per line)")
    bset.add_argument("name")
    bset.add_argument("file", type=Path, help="text file, one building name per line")
    bset.set_defaults(handler=_district_buildings_set)
    bclear = bc.add_parser("clear", help="accept any building name")
    bclear.add_argument("name")
    bclear.set_defaults(handler=_district_buildings_clear)

    allow = dc.add_parser("allow", help="where a district may log in from")
    allow.add_argument("name")
    allow.add_argument("sources", nargs="*", metavar="CIDR", help="e.g. 192.0.2.0/24")
    allow.add_argument("--anywhere", action="store_true", help="lift the restriction")
    allow.set_defaults(handler=_district_allow)

    listing = dc.add_parser("list", help="list districts")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=_district_list)
    show = dc.add_parser("show", help="one district: settings, keys, recent epochs, status")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=_district_show)
    validate = commands.add_parser(
        "validate", help="check a users.csv or an epoch directory offline (no state changed)"
    )
    validate.add_argument("path", type=Path, help="users.csv or an epoch directory")
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    building_list = validate.add_mutually_exclusive_group()
    building_list.add_argument(
        "--buildings", type=Path, metavar="FILE", help="a building list, one name a line"
    )
    building_list.add_argument(
        "--district", help="check against this district's building list (as the server does)"
    )
    validate.set_defaults(handler=_validate)
    validator = commands.add_parser(
        "validator", help="the districts' own validator (validate-users.pyz)"
    )
    vc = validator.add_subparsers(dest="validator_command", required=True, metavar="ACTION")
    vbuild = vc.add_parser(
        "build",
        help="write validate-users.pyz with this server's limits: it runs on a stock "
        "Python 3.11+ (every district's root has a copy)",
    )
    vbuild.add_argument("file", type=Path, help="where to write it, e.g. validate-users.pyz")
    vbuild.set_defaults(handler=_validator_build)

    epochs = commands.add_parser("epochs", help="inspect and reprocess epochs")
    ec = epochs.add_subparsers(dest="epochs_command", required=True, metavar="ACTION")
    elist = ec.add_parser("list", help="epochs in the ledger and epochs still waiting")
    elist.add_argument("--district")
    elist.add_argument("--state", choices=[*STATES, "waiting", "stale"])
    elist.add_argument("--json", action="store_true", help="machine-readable output")
    elist.set_defaults(handler=_epochs_list)
    eshow = ec.add_parser("show", help="an epoch's ledger record and report")
    eshow.add_argument("district")
    eshow.add_argument("epoch")
    eshow.add_argument("--json", action="store_true", help="the ledger record as JSON")
    eshow.set_defaults(handler=_epochs_show)
    for action, text in (
        ("approve", "apply a held epoch despite its deletions"),
        ("discard", "reject a held epoch for good"),
    ):
        decide = ec.add_parser(action, help=text)
        decide.add_argument("district")
        decide.add_argument("epoch")
        _add_by(decide)
        decide.set_defaults(handler=_epochs_decide, action=action)

    bans = commands.add_parser("bans", help="client addresses the defender refuses")
    bc2 = bans.add_subparsers(dest="bans_command", required=True, metavar="ACTION")
    blist = bc2.add_parser("list", help="bans in force (and past ones with --all)")
    blist.add_argument("--all", action="store_true", help="also expired bans")
    blist.add_argument("--json", action="store_true", help="machine-readable output")
    blist.set_defaults(handler=_bans_list)
    badd = bc2.add_parser("add", help="ban an address or a network (CIDR)")
    badd.add_argument("source", help="e.g. 192.0.2.7 or 192.0.2.0/24")
    badd.add_argument("--minutes", type=float, default=None, help="default: defender.ban_time")
    badd.add_argument("--reason", default="operator", help="shown in `ingest bans list`")
    badd.set_defaults(handler=_bans_add)
    bremove = bc2.add_parser("remove", help="lift a ban")
    bremove.add_argument("source")
    bremove.set_defaults(handler=_bans_remove)

    accounts = commands.add_parser("accounts", help="a district's provisioned accounts")
    ac = accounts.add_subparsers(dest="accounts_command", required=True, metavar="ACTION")
    export = ac.add_parser("export", help="active accounts, as users.csv (round-trips)")
    export.add_argument("district")
    export.add_argument("--format", choices=["csv", "json"], default="csv")
    export.add_argument(
        "--raw",
        action="store_true",
        help="cells exactly as stored (by default a cell that starts like a spreadsheet "
        "formula, with = + - @, is prefixed with ')",
    )
    export.set_defaults(handler=_accounts_export)
    hist = ac.add_parser("history", help="every change to one account, oldest first")
    hist.add_argument("district")
    hist.add_argument("email")
    hist.set_defaults(handler=_accounts_history)

    for action, text, handler in (
        ("reprocess", "process a finished epoch again (from its archive)", _epochs_reprocess),
        (
            "retire",
            "take a finished epoch (e.g. a bogus name from the future) out of the order",
            _epochs_order,
        ),
        ("force-apply", "apply a superseded epoch although a newer one was applied", _epochs_order),
    ):
        one = ec.add_parser(action, help=text)
        one.add_argument("district")
        one.add_argument("epoch")
        _add_by(one)
        one.set_defaults(handler=handler, action=action)
    return parser


def _add_by(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--by",
        type=_operator_name,
        default=None,
        help="who decides, recorded in the epoch's report and history (default: your login name)",
    )


def _operator_name(text: str) -> str:
    name = printable(text.strip())
    if not name or len(name) > 100:
        raise argparse.ArgumentTypeError("give a name of 1 to 100 characters")
    return name


def _who(args: argparse.Namespace) -> str:
    """The operator behind an action: --by, else the login name (SUDO_USER first: the
    person, not root)."""
    if args.by:
        return str(args.by)
    try:
        name = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's arbitrary user)
        name = f"uid {os.getuid()}"
    return printable(name)[:100]


# --- serve -------------------------------------------------------------------------------


def _serve(args: argparse.Namespace, config: Config) -> int:
    configure_logging(config.logging)
    try:
        asyncio.run(Server(config).serve())
    except OSError as exc:
        # Port taken, data_dir not writable, ...: one clear event instead of a traceback.
        get_logger("ingest.server").error(
            "server.failed",
            error=str(exc),
            host=config.server.host,
            port=config.server.port,
            data_dir=str(config.data_dir),
        )
        return 1
    return 0


# --- host keys and health ------------------------------------------------------------------


def _hostkey(args: argparse.Namespace, config: Config) -> int:
    for key in load_or_create_host_keys(config.host_key_dir):
        print(f"{key.fingerprint} {key.algorithm} ({key.path})")
    return 0


def _healthcheck(args: argparse.Namespace, config: Config) -> int:
    host = args.host or config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    port = args.port or config.server.port
    try:
        with socket.create_connection((host, port), timeout=args.timeout) as sock:
            sock.settimeout(args.timeout)
            banner = sock.recv(256)
    except OSError as exc:
        raise CommandError(f"unhealthy: cannot connect to {host}:{port}: {exc}") from None
    if not banner.startswith(b"SSH-2.0-"):
        raise CommandError(f"unhealthy: {host}:{port} did not answer with an SSH banner")
    print(f"healthy: {banner.decode('ascii', 'replace').strip()} on {host}:{port}")
    return 0


# --- districts -------------------------------------------------------------------------------


def _store(config: Config) -> DistrictStore:
    return DistrictStore(_database(config), config.districts_dir)


def _read_password() -> str:
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Repeat password: "):
            raise CommandError("passwords do not match")
        return first
    text = sys.stdin.read()
    # One trailing newline is what `echo` and here-strings add; it is not the password.
    return text[:-1] if text.endswith("\n") else text


def _read_keys(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read public key file {path}: {exc}") from None
    keys = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not keys:
        raise CommandError(f"{path} holds no public key")
    return keys


def _district_add(args: argparse.Namespace, config: Config) -> int:
    password = _read_password() if args.password_stdin else None
    keys = tuple(line for path in args.key for line in _read_keys(path))
    store = _store(config)
    district = store.add(args.name, password, keys)
    _refresh_guide(store, config, district.name)  # README.txt, template, validator
    print(f"added district {district.name}: root {config.districts_dir / district.name}")
    for key in district.keys:
        print(f"  key {key.fingerprint} {key.algorithm} {key.comment}".rstrip())
    if not district.has_password and not district.keys:
        print("  note: no password or key yet; it cannot log in until you add one", file=sys.stderr)
    return 0


def _district_passwd(args: argparse.Namespace, config: Config) -> int:
    _store(config).set_password(args.name, _read_password())
    print(f"password updated for {args.name}")
    return 0


def _district_add_key(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    for line in _read_keys(args.file):
        print(f"added key {store.add_key(args.name, line)} to {args.name}")
    return 0


def _district_remove_key(args: argparse.Namespace, config: Config) -> int:
    _store(config).remove_key(args.name, args.fingerprint)
    print(f"removed key {args.fingerprint} from {args.name}")
    return 0


def _district_toggle(args: argparse.Namespace, config: Config) -> int:
    _store(config).set_enabled(args.name, args.enabled)
    print(f"{'enabled' if args.enabled else 'disabled'} {args.name}")
    return 0


def _validate(args: argparse.Namespace, config: Config) -> int:
    buildings = None
    try:
        if args.buildings:
            buildings = read_buildings(args.buildings)
        elif args.district:
            store = _store(config)
            store.require(args.district)  # a typo must not check against no list at all
            with store.db.read() as conn:
                buildings = get_settings(conn, args.district).buildings
        result = validate_path(args.path, validation_limits(config.provisioning), buildings)
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(printable(str(exc))) from None
    print(json.dumps(result.to_json(), indent=2) if args.json else result.render(), end="")
    return 0 if result.verdict == "applied" else 1


def _refresh_guide(store: DistrictStore, config: Config, district: str) -> None:
    validator = build_validator(validation_limits(config.provisioning))
    refresh_guide(store.db, config.districts_dir, validator, district)


def _validator_build(args: argparse.Namespace, config: Config) -> int:
    pyz = build_validator(validation_limits(config.provisioning))
    try:
        args.file.write_bytes(pyz)
    except OSError as exc:
        raise CommandError(str(exc)) from None
    print(f"wrote {args.file} ({len(pyz)} bytes); run it with: python3 {args.file} users.csv")
    return 0


def _ledger(config: Config) -> Ledger:
    return Ledger(_database(config))


def _epochs_list(args: argparse.Namespace, config: Config) -> int:
    ledger = _ledger(config)
    rows = [r.to_json() for r in ledger.list_epochs(args.district)]
    rows += waiting_epochs(config, ledger, args.district)
    if args.state:
        rows = [r for r in rows if r["state"] == args.state]
    rows.sort(key=lambda r: (r["district"], r["epoch"]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no epochs")
    for row in rows:
        outcome = row.get("outcome") or {}
        detail = outcome.get("message") or ("" if row.get("marker", True) else "no COMPLETE yet")
        print(f"{row['district']}\t{row['epoch']}\t{row['state']}\t{detail}".rstrip())
    return 0


def _epochs_show(args: argparse.Namespace, config: Config) -> int:
    ledger = _ledger(config)
    record = ledger.get(args.district, args.epoch)
    if record is None:
        return _show_waiting(args, config, ledger)
    if args.json:
        print(json.dumps(record.to_json(), indent=2))
        return 0
    published = processed_report(config, args.district, args.epoch)
    text = (
        published.read_text()
        if record.published_at and published.is_file()
        else render_text(record)
    )
    print(printable(text, keep="\n"), end="")  # reports published before were not escaped
    print(
        f"\nledger: state={record.state} attempts={record.attempts} "
        f"published_at={record.published_at}"
        + (f" retired_at={record.retired_at}" if record.retired_at else "")
        + (f" forced_at={record.forced_at}" if record.forced_at else "")
    )
    for action in record.actions:
        print(printable(f"operator: {action.describe()}"))
    return 0


def _show_waiting(args: argparse.Namespace, config: Config, ledger: Ledger) -> int:
    """An epoch still in /upload/, not received yet: what is there, and why it waits (as
    the district's status file says)."""
    waiting = [w for w in waiting_epochs(config, ledger, args.district) if w["epoch"] == args.epoch]
    if not waiting:
        raise CommandError(
            f"no epoch {args.epoch} for {args.district} in the ledger or waiting in /upload/; "
            "see `ingest epochs list`"
        )
    found = waiting[0]
    status_file = config.districts_dir / args.district / STATUS_JSON
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    line = next((e for e in status.get("epochs", []) if e["name"] == args.epoch), None)
    if line is not None:
        found = {**found, "reason": line["reason"], "message": line["message"]}
    if args.json:
        print(json.dumps(found, indent=2, ensure_ascii=False))
        return 0
    lines = [
        f"{args.district}/{args.epoch}: {found['state']}, not received yet",
        f"COMPLETE: {'yes' if found['marker'] else 'no'}",
        "files: " + (", ".join(found["files"]) or "none"),
    ]
    if "message" in found:
        lines.append(f"why it waits: {found['message']} ({found['reason']})")
    print(printable("\n".join(lines), keep="\n"))
    return 0


def _epochs_reprocess(args: argparse.Namespace, config: Config) -> int:
    ledger = _ledger(config)
    record = ledger.get(args.district, args.epoch)
    if record is None:
        raise CommandError(f"no epoch {args.epoch} for {args.district} in the ledger")
    if not ledger.requeue(args.district, args.epoch, _who(args)):
        raise CommandError(
            f"epoch {args.epoch} is {record.state}: only a finished epoch can be reprocessed"
        )
    print(
        f"queued {args.district}/{args.epoch} for reprocessing; the running server picks "
        f"it up within {config.epochs.ledger_poll_interval:g} s"
    )
    return 0


def _epochs_decide(args: argparse.Namespace, config: Config) -> int:
    ledger = _ledger(config)
    decide = ledger.approve if args.action == "approve" else ledger.discard
    if not decide(args.district, args.epoch, _who(args)):
        record = ledger.get(args.district, args.epoch)
        state = record.state if record else "not in the ledger"
        raise CommandError(
            f"epoch {args.epoch} of {args.district} is {state}: only a held "
            "epoch can be approved or discarded"
        )
    verb = "approved; it will be applied" if args.action == "approve" else "discarded"
    print(f"{args.district}/{args.epoch} {verb} within {config.epochs.ledger_poll_interval:g} s")
    newest = ledger.last_applied(args.district) if args.action == "approve" else None
    if newest is not None and newest.name > args.epoch:
        print(
            f"warning: a newer epoch, {newest.name}, was applied (at {newest.finished_at}) "
            f"while this one was held: {args.epoch} will be superseded by it, not applied. "
            f"To apply it over the newer one anyway: ingest epochs force-apply "
            f"{args.district} {args.epoch}",
            file=sys.stderr,
        )
    return 0


def _epochs_order(args: argparse.Namespace, config: Config) -> int:
    ledger = _ledger(config)
    record = ledger.get(args.district, args.epoch)
    if record is None:
        raise CommandError(f"no epoch {args.epoch} for {args.district} in the ledger")
    when = f"within {config.epochs.ledger_poll_interval:g} s"
    if args.action == "retire":
        if not ledger.retire(args.district, args.epoch, _who(args)):
            raise CommandError(
                f"epoch {args.epoch} is {record.state}"
                f"{', already retired' if record.retired_at else ''}: only a finished epoch "
                "can be retired"
            )
        print(
            f"{args.district}/{args.epoch} retired: it no longer counts as the newest epoch "
            f"(its accounts are unchanged; its report says so {when}). Epochs it superseded "
            f"can now be reprocessed: ingest epochs reprocess {args.district} EPOCH"
        )
        return 0
    if not ledger.force(args.district, args.epoch, _who(args)):
        raise CommandError(
            f"epoch {args.epoch} is {record.state}: only a superseded epoch can be force-applied"
        )
    print(
        f"{args.district}/{args.epoch} will be applied {when}, although a newer epoch was "
        "applied before it: accounts go back to this snapshot"
    )
    return 0


def _ban_source(text: str) -> str:
    try:
        return normalise(text)
    except ValueError:
        raise CommandError(
            f"{text!r} is not an IP address or network (e.g. 192.0.2.7 or 192.0.2.0/24)"
        ) from None


def _bans_list(args: argparse.Namespace, config: Config) -> int:
    now = time.time()
    bans = [b for b in BanStore(_database(config)).all() if args.all or b.until > now]
    if args.json:
        print(json.dumps([b.to_json() for b in bans], indent=2))
        return 0
    if not bans:
        print("no bans")
    for ban in bans:
        state = f"until {ban.to_json()['until']}" if ban.until > now else "expired"
        print(f"{ban.source}\t{state}\t{ban.reason}\t(ban {ban.count})")
    return 0


def _bans_add(args: argparse.Namespace, config: Config) -> int:
    source = _ban_source(args.source)
    minutes = args.minutes if args.minutes is not None else config.defender.ban_time / 60
    if minutes <= 0:
        raise CommandError("--minutes must be more than 0")
    store = BanStore(_database(config))
    earlier = next((b for b in store.all() if b.source == source), None)
    ban = Ban(
        source,
        time.time() + minutes * 60,
        args.reason,
        earlier.count + 1 if earlier else 1,
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
    store.put(ban)
    print(
        f"banned {source} until {ban.to_json()['until']}; the running server applies it "
        "within a few seconds"
    )
    return 0


def _bans_remove(args: argparse.Namespace, config: Config) -> int:
    source = _ban_source(args.source)
    if not BanStore(_database(config)).remove(source):
        raise CommandError(f"{source} is not banned; see `ingest bans list --all`")
    print(f"lifted the ban on {source}; the running server applies it within a few seconds")
    return 0


def _database(config: Config) -> Database:
    database = Database(config.database_url)
    database.migrate(config.districts_dir)
    return database


def _district_set_mode(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    store.require(args.name)
    with store.db.connect() as conn:
        set_mode(conn, args.name, args.mode)
    print(f"{args.name}: mode {args.mode}")
    return 0


def _district_buildings_set(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    store.require(args.name)
    try:
        names = [line.strip() for line in args.file.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {args.file}: {exc}") from None
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise CommandError(f"{args.file} lists no buildings")
    with store.db.connect() as conn:
        set_buildings(conn, args.name, names)
    _refresh_guide(store, config, args.name)  # /buildings.txt
    print(f"{args.name}: {len(set(names))} buildings")
    return 0


def _district_buildings_clear(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    store.require(args.name)
    with store.db.connect() as conn:
        set_buildings(conn, args.name, None)
    _refresh_guide(store, config, args.name)
    print(f"{args.name}: any building name is accepted")
    return 0


def _accounts_export(args: argparse.Namespace, config: Config) -> int:
    _store(config).require(args.district)
    with _database(config).read() as conn:
        rows = list(export_rows(conn, args.district))
    if args.format == "json":
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    writer = csv.DictWriter(sys.stdout, fieldnames=list(COLUMNS), lineterminator="\r\n")
    writer.writeheader()
    if not args.raw:
        rows = [{k: formula_safe(v) for k, v in row.items()} for row in rows]
    writer.writerows(rows)
    return 0


def _accounts_history(args: argparse.Namespace, config: Config) -> int:
    _store(config).require(args.district)
    with _database(config).read() as conn:
        changes = history(conn, args.district, args.email)
    if not changes:
        raise CommandError(f"no account {args.email} in {args.district}")
    print(json.dumps(changes, indent=2, ensure_ascii=False))
    return 0


def _district_allow(args: argparse.Namespace, config: Config) -> int:
    if bool(args.sources) == args.anywhere:
        raise CommandError("give the networks the district logs in from, or --anywhere")
    allowed = _store(config).set_allowed_sources(args.name, args.sources)
    where = ", ".join(allowed) if allowed else "anywhere"
    print(f"{args.name} may log in from {where}, from its next login on")
    return 0


def _district_list(args: argparse.Namespace, config: Config) -> int:
    districts = _store(config).list_all()
    with _database(config).read() as conn:
        settings = {d.name: get_settings(conn, d.name) for d in districts}
    if args.json:
        print(
            json.dumps(
                [{**asdict(d), **_settings_json(settings[d.name])} for d in districts], indent=2
            )
        )
        return 0
    if not districts:
        print("no districts; add one with `ingest district add NAME --password-stdin`")
    for d in districts:
        auth = ", ".join(
            filter(None, ["password" if d.has_password else "", f"{len(d.keys)} key(s)"])
        )
        where = "from " + ", ".join(d.allowed_sources) if d.allowed_sources else ""
        state = "enabled" if d.enabled else "DISABLED"
        listed = settings[d.name].buildings
        buildings = "any building" if listed is None else f"{len(listed)} buildings"
        print(f"{d.name}\t{state}\t{settings[d.name].mode}\t{buildings}\t{auth}\t{where}".rstrip())
        for key in d.keys:
            print(f"\t{key.fingerprint} {key.algorithm} {key.comment}".rstrip())
    return 0


def _settings_json(settings: DistrictSettings) -> dict[str, Any]:
    buildings = sorted(settings.buildings) if settings.buildings is not None else None
    return {"mode": settings.mode, "buildings": buildings}


def _district_show(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    district = store.require(args.name)
    with _database(config).read() as conn:
        settings = get_settings(conn, args.name)
    epochs = _ledger(config).list_epochs(args.name)[-10:]
    status_file = config.districts_dir / args.name / STATUS_JSON
    status = json.loads(status_file.read_text()) if status_file.is_file() else None
    if args.json:
        print(
            json.dumps(
                {
                    **asdict(district),
                    **_settings_json(settings),
                    "recent_epochs": [
                        {"epoch": e.name, "state": e.state, "finished_at": e.finished_at}
                        for e in epochs
                    ],
                    "status": status,
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0
    buildings = (
        "any name accepted"
        if settings.buildings is None
        else f"{len(settings.buildings)}: "
        + ", ".join(sorted(settings.buildings)[:10])
        + (" ..." if len(settings.buildings) > 10 else "")
    )
    lines = [
        f"district:  {district.name} ({'enabled' if district.enabled else 'DISABLED'})",
        f"mode:      {settings.mode}",
        f"buildings: {buildings}",
        f"password:  {'set' if district.has_password else 'none'}",
        "logins from: " + (", ".join(district.allowed_sources) or "anywhere"),
        f"keys ({len(district.keys)}):",
        *(f"  {k.fingerprint} {k.algorithm} {k.comment}".rstrip() for k in district.keys),
        f"recent epochs ({len(epochs)}):",
        *(f"  {e.name}  {e.state}  {e.finished_at or ''}".rstrip() for e in epochs),
    ]
    if status is not None:
        lines.append("status (as the district reads it in /STATUS.txt):")
        lines += [f"  waiting: {e['name']} {e['reason']}" for e in status["epochs"]]
        lines += [f"  refused: {r['at']} {r['path']} [{r['code']}]" for r in status["refusals"][:5]]
    print(printable("\n".join(lines), keep="\n"))
    return 0
