"""Values from districts' files on their way to a terminal, a spreadsheet or a report.

Anything a district uploads (file names, cell values) may hold control characters (an
ESC sequence rewrites an operator's terminal), invisible format characters (a bidi
override reverses what a name appears to say) or a formula (a spreadsheet runs
``=HYPERLINK(...)``). These helpers make such values inert where they are shown; JSON
output escapes them by itself.
"""

from __future__ import annotations

import unicodedata

# A spreadsheet treats a cell starting with these as a formula (OWASP's list).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_HIDDEN = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))


def formula_safe(value: object) -> str:
    """A spreadsheet cell that shows ``value`` as text: one that would start like a
    formula is prefixed with ``'`` (still readable, never run)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def hidden_characters(text: str) -> list[str]:
    """The control, format (zero-width, bidi, BOM) and unassigned characters in ``text``,
    each as ``U+XXXX NAME``."""
    found = []
    for ch in text:
        category = unicodedata.category(ch)
        if category in _HIDDEN:
            name = unicodedata.name(ch, "CONTROL" if category == "Cc" else "UNASSIGNED")
            found.append(f"U+{ord(ch):04X} {name}")
    return found


def printable(text: str, keep: str = "") -> str:
    r"""``text`` with every control, format or unassigned character written as an escape
    (``\x1b``, ``\u200b``), for terminals and plain-text reports; the characters in
    ``keep`` (a line end, for a whole report) stay as they are."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch in keep or unicodedata.category(ch) not in _HIDDEN else repr(ch)[1:-1]
        for ch in text
    )
