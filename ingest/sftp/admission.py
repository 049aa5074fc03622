"""Who may open an SSH connection: bounds on connections that have not authenticated yet.

Anyone on the internet can open an unauthenticated connection, and each costs a socket,
memory and, once it offers passwords, CPU. They are bounded on their own, apart from the
districts' authenticated connections (``server.max_connections``, checked at login), so a
flood of them can never refuse a district that has logged in:

- at most ``max_unauthenticated`` at once, with random early drop from half of that (as
  OpenSSH's ``MaxStartups``): as the pool fills, a new connection is refused with a rising
  probability, so a flood never holds every slot while others still get through;
- at most ``max_unauthenticated_per_source`` from one address;
- an address that authenticated recently (a district's own) skips the early drop and the
  per-source cap, and has a reserve beyond the full pool: a district the server knows
  gets in while strangers flood it. Known addresses are kept in the state database too
  (``ingest/store/sources.py``), so a restart does not make every district a stranger.

Used on the event loop only.
"""

from __future__ import annotations

import random
import time
from collections import Counter, OrderedDict
from typing import Protocol

TRUSTED_FOR = 30 * 86400  # seconds an address stays known after a successful login
TRUSTED_MAX = 4096  # addresses remembered, least recently used first out
REMEMBER_EVERY = 3600  # seconds between database writes of one address's logins


class KnownSourceList(Protocol):
    """Where known addresses outlive a restart (implemented by
    ``ingest.store.sources.KnownSources``); blocking, for worker threads."""

    def recent(self, since: float, limit: int) -> list[tuple[str, float]]: ...

    def remember(self, address: str, at: float) -> None: ...

    def forget_before(self, before: float) -> None: ...


class Admission:
    def __init__(
        self,
        max_unauthenticated: int,
        per_source: int,
        chance: random.Random | None = None,
    ) -> None:
        self.max_unauthenticated = max_unauthenticated
        self.per_source = per_source
        # Half the pool again for known addresses, beyond the full pool.
        self.reserve = max(1, max_unauthenticated // 2)
        self._chance = chance if chance is not None else random.Random()
        self._by_source: Counter[str] = Counter()
        self._count = 0
        self._trusted: OrderedDict[str, float] = OrderedDict()

    @property
    def unauthenticated(self) -> int:
        return self._count

    def admit(self, source: str) -> str | None:
        """Count a new unauthenticated connection from ``source`` in, or return why not
        (``max_unauthenticated_per_source``, ``max_unauthenticated``)."""
        if self.trusted(source):
            if self._count >= self.max_unauthenticated + self.reserve:
                return "max_unauthenticated"
        else:
            if self._by_source[source] >= self.per_source:
                return "max_unauthenticated_per_source"
            start = self.max_unauthenticated // 2
            if self._count >= self.max_unauthenticated:
                return "max_unauthenticated"
            if self._count >= start:
                drop = (self._count - start + 1) / (self.max_unauthenticated - start + 1)
                if self._chance.random() < drop:
                    return "max_unauthenticated"
        self._by_source[source] += 1
        self._count += 1
        return None

    def leave(self, source: str) -> None:
        """An admitted connection authenticated or went away."""
        self._count -= 1
        self._by_source[source] -= 1
        if self._by_source[source] <= 0:
            del self._by_source[source]

    def load(self, known: list[tuple[str, float]]) -> None:
        """Addresses known from earlier runs: (address, last login), oldest first."""
        for source, seen in known:
            self._remember(source, seen)

    def authenticated(self, source: str) -> bool:
        """Remember ``source`` as a district's address; True when the database should
        be told (first time, or an hour since it last was)."""
        now = time.time()
        seen = self._trusted.get(source)
        self._remember(source, now if seen is None or now - seen >= REMEMBER_EVERY else seen)
        return seen is None or now - seen >= REMEMBER_EVERY

    def trusted(self, source: str) -> bool:
        seen = self._trusted.get(source)
        return seen is not None and time.time() - seen < TRUSTED_FOR

    def _remember(self, source: str, seen: float) -> None:
        self._trusted[source] = seen
        self._trusted.move_to_end(source)
        while len(self._trusted) > TRUSTED_MAX:
            self._trusted.popitem(last=False)
