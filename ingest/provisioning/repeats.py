"""Finding repeated keys (e-mails, Staff Ids) in one pass, in memory that does not grow
with the file.

A million-row users.csv must not cost a million-entry set (about 64 MB per key kind in
CPython), and sorting a million keys in SQLite cost 0.8 s per key kind
(docs/performance.md). Instead, each key is hashed once as it is seen:

- a Bloom filter (a bitmap, two bits per key) answers "possibly seen before?". Only the
  keys it flags keep their text: the true repeats and a small share of the others (0.1 %
  for the benchmark's 1M rows of 145 bytes, about 1.5 % for rows of 60 bytes, whose file
  gives the bitmap fewer bits per key);
- every key's 64-bit hash and line go, 64Ki at a time, as two packed arrays into a TEMP
  table of the stage's SQLite connection (which spills to disk like the stage's other
  tables). At the end, one read of that table finds the first line of each flagged key.

So the cost per key is a hash, two bit tests and two appends, and the memory is the
bitmap (one bit per 4 bytes of file, at most 16 MiB) plus the flagged keys. A flagged
key is reported as a repeat of the first earlier line with the same 64-bit hash; two
different keys with equal hashes would be taken for a repeat, with a probability of
about (flagged keys x keys) / 2**64: below 1e-9 for a million-row file.
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Collection, Iterable
from typing import NamedTuple

_MIN_BITS_LOG2 = 16
_MAX_BITS_LOG2 = 27  # 16 MiB
_CHUNK = 1 << 16  # keys per row of the spill table


class Repeat(NamedTuple):
    line: int
    key: str
    first_line: int
    tag: str  # what the caller passed with the key (say, the row's e-mail)


class RepeatFinder:
    """One key kind (say, e-mails) of one file, spilling to the TEMP table ``name`` of
    ``conn``. ``size_hint`` is the file's size in bytes: it sizes the bitmap."""

    def __init__(self, conn: sqlite3.Connection, name: str, size_hint: int) -> None:
        log2 = (max(size_hint, 4) // 4).bit_length() - 1
        bits = 1 << min(_MAX_BITS_LOG2, max(_MIN_BITS_LOG2, log2))
        self._mask = bits - 1
        self._bits = bytearray(bits >> 3)
        self._conn = conn
        self._table = f"temp.{name}"
        conn.execute(f"DROP TABLE IF EXISTS {self._table}")
        conn.execute(f"CREATE TABLE {self._table} (hashes BLOB NOT NULL, lines BLOB NOT NULL)")
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
            a = h & mask
            b = (h >> 32) & mask
            if bits[a >> 3] & (1 << (a & 7)) and bits[b >> 3] & (1 << (b & 7)):
                flagged.append((line, key, h, tag))
            else:
                bits[a >> 3] |= 1 << (a & 7)
                bits[b >> 3] |= 1 << (b & 7)
            hashes(h)
            lines(line)
        if len(self._hashes) >= _CHUNK:
            self._spill()

    def _spill(self) -> None:
        if self._hashes:
            self._conn.execute(
                f"INSERT INTO {self._table} VALUES (?, ?)",
                (self._hashes.tobytes(), self._lines.tobytes()),
            )
            self._hashes = array("q")
            self._lines = array("i")

    def repeats(self, ignore: Collection[int] = ()) -> list[Repeat]:
        """The lines whose key an earlier line has, with that earlier line; lines in
        ``ignore`` (rows already skipped) count as absent. Called once, at the end."""
        wanted = {h for _, _, h, _ in self._flagged}
        if not wanted:
            return []
        self._spill()
        first: dict[int, int] = {}
        for hash_bytes, line_bytes in self._conn.execute(
            f"SELECT hashes, lines FROM {self._table} ORDER BY rowid"
        ):
            hashes, lines = array("q"), array("i")
            hashes.frombytes(hash_bytes)
            lines.frombytes(line_bytes)
            for h, line in zip(hashes, lines, strict=True):
                if h in wanted and h not in first and line not in ignore:
                    first[h] = line
        return [
            Repeat(line, key, first[h], tag)
            for line, key, h, tag in self._flagged
            if line not in ignore and first[h] != line
        ]
