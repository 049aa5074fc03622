"""Finding repeated keys (e-mails, Staff Ids) in one pass, with memory bounded by design.

A million-row users.csv must not cost a million-entry set (about 64 MB per key kind in
CPython) and a sort of a million keys in SQLite cost 0.8 s per key kind
(docs/performance.md). Instead, each key is hashed once as it is seen:

- a bitmap (a Bloom filter with one hash function) answers "possibly seen before?". Only
  the keys it flags keep their text: the true repeats plus a few percent of false alarms;
- an array of every key's 64-bit hash and line lets :meth:`RepeatFinder.repeats` find, at
  the end, the first line of each flagged key.

So the cost is two small appends and a bit test per key, and the memory 12 bytes per key
plus a bitmap of 1 bit per 4 bytes of file. A flagged key is reported as a repeat of the
first earlier line with the same 64-bit hash; two different keys with equal hashes would
be taken for a repeat, with a probability of about (flagged keys x keys) / 2**64, below
1e-9 for a million-row file.
"""

from __future__ import annotations

from array import array
from collections.abc import Collection, Iterable
from typing import NamedTuple

_MIN_BITS = 1 << 16


class Repeat(NamedTuple):
    line: int
    key: str
    first_line: int
    tag: str  # what the caller passed with the key (say, the row's e-mail)


class RepeatFinder:
    """One key kind (say, e-mails) of one file. ``size_hint`` is the file's size in
    bytes: the bitmap gets about one bit per 4 bytes (a row is far longer), so that false
    alarms stay at a few percent of the rows."""

    def __init__(self, size_hint: int) -> None:
        bits = max(_MIN_BITS, 1 << (max(size_hint, 1) // 4).bit_length())
        self._mask = bits - 1
        self._bits = bytearray(bits >> 3)
        self._hashes = array("q")
        self._lines = array("i")
        self._flagged: list[tuple[int, str, int, str]] = []  # (line, key, hash, tag)

    def add(self, keyed: Iterable[tuple[int, str, str]]) -> None:
        """(line, key, tag) in file order; empty keys are not keys. The tag is kept for
        the flagged keys, to be returned with a repeat."""
        bits, mask, flagged = self._bits, self._mask, self._flagged
        hashes, lines = self._hashes.append, self._lines.append
        for line, key, tag in keyed:
            if not key:
                continue
            h = hash(key)
            slot = h & mask
            byte = bits[slot >> 3]
            bit = 1 << (slot & 7)
            if byte & bit:
                flagged.append((line, key, h, tag))
            else:
                bits[slot >> 3] = byte | bit
            hashes(h)
            lines(line)

    def repeats(self, ignore: Collection[int] = ()) -> list[Repeat]:
        """The lines whose key an earlier line has, with that earlier line; lines in
        ``ignore`` (rows already skipped) count as absent."""
        wanted = {h for _, _, h, _ in self._flagged}
        if not wanted:
            return []
        first: dict[int, int] = {}
        for h, line in zip(self._hashes, self._lines, strict=True):
            if h in wanted and h not in first and line not in ignore:
                first[h] = line
        return [
            Repeat(line, key, first[h], tag)
            for line, key, h, tag in self._flagged
            if line not in ignore and first[h] != line
        ]
