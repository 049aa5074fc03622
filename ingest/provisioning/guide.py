"""What every district finds in its root, read-only, before it uploads anything:
``/README.txt`` (the contract in ten lines), ``/users-template.csv`` (every column, one
example row), ``/validate-users.pyz`` (the server's validation, to run on a stock Python
before uploading) and, when its operator set one, ``/buildings.txt`` (the building names
its users.csv must use). Written when a district is made, when its building list changes
and at every start of the daemon (so that they follow the CSV API as it changes).
"""

from __future__ import annotations

from pathlib import Path

from ingest.atomic import replace_bytes, replace_text
from ingest.provisioning.accounts import get_settings
from ingest.provisioning.csvapi import COLUMNS
from ingest.provisioning.validator import VALIDATOR_PYZ
from ingest.store.db import Database

README_TXT = "README.txt"
TEMPLATE_CSV = "users-template.csv"
BUILDINGS_TXT = "buildings.txt"

README = """\
How to send your staff accounts to this server

1. Make a folder in /upload/ named after the current UTC time, YYYYMMDD-HHMMSS
   (Linux, macOS: date -u +%Y%m%d-%H%M%S;
   PowerShell: (Get-Date).ToUniversalTime().ToString('yyyyMMdd-HHmmss')).
2. Put users.csv in it: UTF-8, comma-separated, the columns of /users-template.csv.
3. Then upload an empty file named exactly COMPLETE into the same folder.
   Your client cannot make folders? Upload /upload/users_auto.csv instead.
4. Seconds later the folder is in /upload-processed/ with report.txt (and errors.csv).
5. /STATUS.txt says what is waiting and why, and the full reason of every refusal.
{buildings}7. Check before you send: python3 validate-users.pyz users.csv (Python 3.11+;
   add --buildings buildings.txt when you have one); it says what the server would do.

Everything else: the district guide (docs/districts.md); ask your operator for it.
"""
EXAMPLE = {
    "Email": "jane.doe@example.org",
    "First Name": "Jane",
    "Last Name": "Doe",
    "Middle Name": "",
    "Staff Id": "1042",
    "Title": "Teacher",
    "Role": "Classroom Teacher",
    "Buildings": "North Elementary",
    "Deleted": "",
}


def write_guide(root: Path, buildings: frozenset[str] | None, validator: bytes) -> None:
    """Blocking: the guide files in the district's ``root`` (which must exist);
    ``validator``: the bytes of validate-users.pyz (built once by the caller)."""
    listed = (
        "6. Building names must be exactly those in /buildings.txt.\n"
        if buildings is not None
        else "6. Building names: any; your operator may set a list (then /buildings.txt).\n"
    )
    replace_text(root / README_TXT, README.format(buildings=listed))
    header = ",".join(COLUMNS)
    example = ",".join(EXAMPLE.get(column, "") for column in COLUMNS)
    # A BOM: Excel opens the template as UTF-8 (and the CSV API accepts one).
    replace_text(root / TEMPLATE_CSV, f"\ufeff{header}\r\n{example}\r\n")
    pyz = root / VALIDATOR_PYZ
    if not pyz.is_file() or pyz.stat().st_size != len(validator) or pyz.read_bytes() != validator:
        replace_bytes(pyz, validator)
    if buildings is None:
        (root / BUILDINGS_TXT).unlink(missing_ok=True)
    else:
        replace_text(root / BUILDINGS_TXT, "".join(f"{b}\n" for b in sorted(buildings)))


def refresh_guide(database: Database, districts_dir: Path, validator: bytes, district: str) -> None:
    """Blocking: the guide files of ``district`` as its settings are now."""
    root = districts_dir / district
    if not root.is_dir():
        return
    with database.read() as conn:
        settings = get_settings(conn, district)
    write_guide(root, settings.buildings, validator)
