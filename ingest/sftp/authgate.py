"""Password checks as a CPU budget.

Verifying a password is argon2: deliberately slow (0.1-0.2 s of CPU and 64 MiB here), so
a flood of guesses can keep every core busy, and anyone can send one. The checks run in
their own small thread pool, never on the file I/O threads, and:

- strangers' checks wait in a bounded queue (``max_waiting``); past it an attempt fails
  at once as ``server_busy`` without costing a hash; they run at a lower CPU priority,
  so that a flood of them takes only the CPU the event loop (every district's sessions)
  leaves over;
- an address that logged in successfully before (see ``admission.py``) has a thread of
  its own, so a district the server knows is never queued behind strangers;
- public-key logins only look keys up in the database, on threads of their own: they
  never wait for a hash at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ingest.sftp.writer import lower_thread_priority

T = TypeVar("T")
BUSY = "server_busy"


class AuthGate:
    def __init__(self, max_waiting: int, workers: int = 2) -> None:
        self.max_waiting = max_waiting
        self._strangers = ThreadPoolExecutor(
            workers, thread_name_prefix="auth", initializer=lower_thread_priority
        )
        self._known = ThreadPoolExecutor(1, thread_name_prefix="auth-known")
        self._lookups = ThreadPoolExecutor(2, thread_name_prefix="auth-keys")
        self._waiting = 0  # strangers' checks queued or running

    async def check_password(
        self, verify: Callable[[str, str], str | None], name: str, password: str, known: bool
    ) -> str | None:
        """``verify(name, password)``: None when right, else the failure reason; or
        ``server_busy`` when too many strangers' checks are waiting already."""
        loop = asyncio.get_running_loop()
        if known:
            return await loop.run_in_executor(self._known, verify, name, password)
        if self._waiting >= self.max_waiting:
            return BUSY
        self._waiting += 1
        try:
            return await loop.run_in_executor(self._strangers, verify, name, password)
        finally:
            self._waiting -= 1

    async def look_up(self, fn: Callable[[str], T], name: str) -> T:
        """A quick database read for a key login, apart from the password hashing."""
        return await asyncio.get_running_loop().run_in_executor(self._lookups, fn, name)

    def shutdown(self) -> None:
        for pool in (self._strangers, self._known, self._lookups):
            pool.shutdown(wait=False, cancel_futures=True)
