"""An e-mail address is an account's identity: what it may hold.

The address is the key of an account, so two strings that look alike must not become two
accounts, and the string itself reaches reports, exports and terminals. Beyond the shape
``local@domain.tld``, an address:

- is NFC-normalised first (a decomposed ``é`` and a composed one are the same address);
- holds no control, format or unassigned character (ESC, BEL, zero-width spaces, bidi
  overrides, a BOM): they are invisible, or act on the screen that shows them;
- does not start with a spreadsheet formula character (``=``, ``+``, ``-``, ``@``);
- does not mix scripts inside one part (``admin`` written with a Cyrillic ``a``, U+0430,
  beside Latin letters, or fullwidth letters beside plain ones): such a part imitates another
  address. This is an error, not a warning: the row is skipped, so no look-alike
  account is ever made. Addresses wholly in one script (``мария@пример.рф``) are fine.
"""

from __future__ import annotations

import re
import unicodedata

from ingest.text import FORMULA_START, hidden_characters, printable

# The shape, without whitespace or ASCII control characters (the fast path's whole check
# for an ASCII address; other characters are judged by email_problem).
EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s.\x00-\x1f\x7f]{2,}")
MIXED_SCRIPT = "email_mixed_script"
# Scripts that are written together: Japanese mixes kana with Han.
_SAME_SCRIPT = {"HIRAGANA": "HAN", "KATAKANA": "HAN", "CJK": "HAN"}


def normalise(email: str) -> str:
    return email if email.isascii() else unicodedata.normalize("NFC", email)


def email_problem(email: str) -> tuple[str, str] | None:
    """(code, message) when ``email`` (stripped, normalised) cannot be an address."""
    hidden = hidden_characters(email)
    if hidden:
        return (
            "value_invalid",
            f"'{printable(email)}' contains an invisible or control character "
            f"({hidden[0]}); type the address again",
        )
    if email.startswith(FORMULA_START):
        return "value_invalid", f"{email!r} must not start with =, +, - or @"
    if not EMAIL.fullmatch(email):
        return "value_invalid", f"{email!r} is not an e-mail address"
    for part in re.split(r"[@.]", email):
        scripts = sorted({_script(ch) for ch in part if ch.isalpha()})
        if len(scripts) > 1:
            return (
                MIXED_SCRIPT,
                f"{email!r} mixes {' and '.join(s.title() for s in scripts)} letters in "
                f"{part!r}, so it can pass for another address; type it again in one "
                "script",
            )
    return None


def _script(ch: str) -> str:
    word = unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0]
    return _SAME_SCRIPT.get(word, word)
