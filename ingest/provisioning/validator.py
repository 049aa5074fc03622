"""The district's validator: ``validate-users.pyz``, a zipapp of the server's own
validation code that runs on a stock Python 3.11+ with nothing installed (Windows, Linux,
macOS). The daemon builds it at start with its configured limits and offers it read-only
in every district's root; ``ingest validator build FILE`` builds one for anyone else.

It holds exactly the modules below, all standard library only (a test runs it in a bare
venv): when the validation code imports another module, add it here.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import asdict
from pathlib import Path

import ingest
from ingest.provisioning.csvapi import Limits

VALIDATOR_PYZ = "validate-users.pyz"
MODULES = (
    "__init__.py",
    "text.py",
    "epochs/__init__.py",
    "epochs/handoff.py",
    "epochs/names.py",
    "epochs/reports.py",
    "provisioning/__init__.py",
    "provisioning/accounts.py",
    "provisioning/csvapi.py",
    "provisioning/filenames.py",
    "provisioning/identity.py",
    "provisioning/repeats.py",
    "provisioning/staging.py",
    "provisioning/validate.py",
)
# Written for any Python 3: an older one gets a sentence, not a SyntaxError.
_MAIN = """\
import sys

if sys.version_info < (3, 11):
    sys.exit("validate-users needs Python 3.11 or newer; this is " + sys.version.split()[0])

from ingest.provisioning.csvapi import Limits
from ingest.provisioning.validate import main

LIMITS = Limits(**{limits!r})  # the server's own (ingest {version})
sys.exit(main(limits=LIMITS))
"""
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the same code and limits give the same bytes


def build_validator(limits: Limits) -> bytes:
    """The zipapp's bytes, reproducible: the daemon rewrites a district's copy only when
    the code or the limits changed."""
    package = Path(ingest.__file__).parent
    out = io.BytesIO()
    out.write(b"#!/usr/bin/env python3\n")  # as zipapp writes it: before the archive
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:

        def add(name: str, text: str) -> None:
            info = zipfile.ZipInfo(name, _FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, text)

        main = _MAIN.format(limits=asdict(limits), version=ingest.__version__)
        add("__main__.py", main)
        for module in MODULES:
            add(f"ingest/{module}", (package / module).read_text(encoding="utf-8"))
    return out.getvalue()
