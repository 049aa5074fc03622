"""The defender: per-address scores for what attackers do, and bans.

Modelled on SFTPGo's defender. Each client address collects points for failed logins
(``score_wrong_credentials`` per wrong password; once per connection for offered keys,
since clients commonly try several keys before the right one), names that are no
district (``score_unknown_district``), hitting the per-address limit on unauthenticated
connections (``score_limit``) and connections that never finish their key exchange
(``score_protocol``). An address whose points within ``observation_time`` reach
``threshold`` is banned for ``ban_time``, each further ban of it ``ban_time_increment``
percent longer. A banned address's new connections are refused at once, and its running
unauthenticated ones fail their next attempt without a hash.

Bans are per address, never per district: guessing at a district's name from elsewhere
bans the guesser, not the district. Addresses on ``safe_list`` are never scored or banned;
``block_list`` is refused always. Bans live in the state database (``ingest/store/
bans.py``), so they outlive a restart, and the admin CLI can list, add and remove them:
the daemon reads them again every ``refresh_interval`` seconds. Used on the event loop; database
work runs on a thread of its own, in order.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol

from ingest.config import DefenderConfig
from ingest.store.bans import Ban

FORGET_AFTER = 7 * 86400.0  # an expired ban is kept this long: its count makes the next longer
MAX_BAN = 30 * 86400.0  # no ban lasts longer, however often an address comes back
TRACKED = 10_000  # addresses with points remembered, least recently scored first out

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BanList(Protocol):
    """Where bans are kept (implemented by :class:`ingest.store.bans.BanStore`); blocking."""

    def all(self) -> list[Ban]: ...

    def put(self, ban: Ban) -> None: ...

    def forget_expired(self, before: float, keep_count_for: float) -> None: ...


def networks(text: str) -> list[Network]:
    return [
        ipaddress.ip_network(item, strict=False)
        for item in (part.strip() for part in text.split(","))
        if item
    ]


def address_in(address: str, nets: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in nets)


class Defender:
    def __init__(self, config: DefenderConfig, store: BanList, log: Any) -> None:
        self.config = config
        self.store = store
        self.log = log
        self._safe = networks(config.safe_list)
        self._block = networks(config.block_list)
        self._points: OrderedDict[str, deque[tuple[float, int]]] = OrderedDict()
        self._bans: dict[str, Ban] = {}
        self._lifted: set[str] = set()  # expired bans already announced
        self._writing: set[str] = set()  # bans made here, not yet in the database
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="defender")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(self._pool, self.store.all)
        self._bans = {ban.source: ban for ban in rows}
        now = time.time()
        self._lifted = {source for source, ban in self._bans.items() if ban.until <= now}
        self._task = loop.create_task(self._refresher())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)

    # --- decisions ---------------------------------------------------------------------

    def refusal(self, address: str) -> str | None:
        """``blocked``, ``banned``, or None when ``address`` may connect."""
        if address_in(address, self._block):
            return "blocked"
        if not self.config.enabled or address_in(address, self._safe):
            return None
        now = time.time()
        if any(ban.until > now and ban.covers(address) for ban in self._bans.values()):
            return "banned"
        return None

    def offence(self, address: str, kind: str, reason: str) -> None:
        """Score what ``address`` did: ``kind`` is ``wrong_credentials``,
        ``unknown_district``, ``limit`` or ``protocol`` (its points are the setting
        ``score_<kind>``); ``reason`` says what exactly, for the ban's log line."""
        self.score(address, int(getattr(self.config, f"score_{kind}")), reason)

    def score(self, address: str, points: int, reason: str) -> None:
        if points <= 0 or not self.config.enabled or address_in(address, self._safe):
            return
        if self.refusal(address) is not None:
            return  # already banned: a ban's length does not grow from inside it
        now = time.time()
        window = self._points.setdefault(address, deque())
        self._points.move_to_end(address)
        window.append((now, points))
        while window and window[0][0] < now - self.config.observation_time:
            window.popleft()
        while len(self._points) > TRACKED:
            self._points.popitem(last=False)
        total = sum(p for _, p in window)
        if total >= self.config.threshold:
            del self._points[address]
            self._ban(address, reason, total)

    def _ban(self, address: str, reason: str, total: int) -> None:
        earlier = self._bans.get(address)
        count = earlier.count + 1 if earlier is not None else 1
        duration = min(
            MAX_BAN,
            self.config.ban_time * (1 + self.config.ban_time_increment / 100) ** (count - 1),
        )
        ban = Ban(
            address,
            time.time() + duration,
            reason,
            count,
            datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self._bans[address] = ban
        self._lifted.discard(address)
        self.log.warning(
            "defender.banned",
            source=address,
            reason=reason,
            score=total,
            duration=round(duration),
            count=count,
        )
        self._writing.add(address)
        future = self._pool.submit(self.store.put, ban)

        def written(done: Any) -> None:
            self._writing.discard(address)
            if done.exception() is not None:
                self.log.error(
                    "defender.store_failed", source=address, error=repr(done.exception())
                )

        future.add_done_callback(written)

    # --- the ban table ----------------------------------------------------------------

    async def _refresher(self) -> None:
        loop = asyncio.get_running_loop()
        rounds = 0
        while True:
            await asyncio.sleep(self.config.refresh_interval)
            rounds += 1
            try:
                if rounds * self.config.refresh_interval % 3600 < self.config.refresh_interval:
                    await loop.run_in_executor(
                        self._pool, self.store.forget_expired, time.time(), FORGET_AFTER
                    )
                rows = await loop.run_in_executor(self._pool, self.store.all)
            except Exception as exc:  # the next round retries; bans in memory go on
                self.log.error("defender.store_failed", error=repr(exc))
                continue
            self._merge({ban.source: ban for ban in rows})

    def _merge(self, stored: dict[str, Ban]) -> None:
        now = time.time()
        for source, ban in stored.items():
            known = self._bans.get(source)
            if ban.until > now and (known is None or known.until <= now):
                self.log.warning("defender.banned", source=source, reason=ban.reason, by="operator")
                self._lifted.discard(source)
        for source, ban in self._bans.items():
            if source in self._writing:
                stored.setdefault(source, ban)
            elif source not in stored and ban.until > now:
                self.log.info("defender.unbanned", source=source, reason="operator")
        self._bans = stored
        for source, ban in stored.items():
            if ban.until <= now and source not in self._lifted:
                self._lifted.add(source)
                self.log.info("defender.unbanned", source=source, reason="expired")
