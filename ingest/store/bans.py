"""Banned client addresses, in the state database so that bans outlive a restart and the
admin CLI (``ingest bans``) and the running daemon share them. Blocking; worker threads.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime

from ingest.store.db import Database


@dataclass(frozen=True)
class Ban:
    source: str  # an address or a network, normalised ("192.0.2.7", "192.0.2.0/24")
    until: float  # seconds since the epoch
    reason: str
    count: int  # bans of this source so far, this one included (longer each time)
    created_at: str

    def covers(self, address: str) -> bool:
        try:
            return ipaddress.ip_address(address) in ipaddress.ip_network(self.source)
        except ValueError:
            return address == self.source

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "until": datetime.fromtimestamp(self.until, UTC).isoformat(timespec="seconds"),
            "reason": self.reason,
            "count": self.count,
            "created_at": self.created_at,
        }


def normalise(source: str) -> str:
    """An address or a network as the ban table keeps it; ValueError when neither."""
    network = ipaddress.ip_network(source.strip(), strict=False)
    single = network.prefixlen == network.max_prefixlen
    return str(network.network_address) if single else str(network)


class BanStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def all(self) -> list[Ban]:
        with self.database.read() as conn:
            rows = conn.execute(
                "SELECT source, until, reason, count, created_at FROM bans ORDER BY source"
            ).fetchall()
        return [
            Ban(r["source"], r["until"], r["reason"], r["count"], r["created_at"]) for r in rows
        ]

    def put(self, ban: Ban) -> None:
        with self.database.connect() as conn:
            conn.execute(
                "INSERT INTO bans (source, until, reason, count, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (source) DO UPDATE SET"
                " until = excluded.until, reason = excluded.reason, count = excluded.count,"
                " created_at = excluded.created_at",
                (ban.source, ban.until, ban.reason, ban.count, ban.created_at),
            )

    def remove(self, source: str) -> bool:
        with self.database.connect() as conn:
            return conn.execute("DELETE FROM bans WHERE source = ?", (source,)).rowcount == 1

    def forget_expired(self, before: float, keep_count_for: float) -> None:
        """Expired bans stay as long as their count matters for the next one's length."""
        with self.database.connect() as conn:
            conn.execute("DELETE FROM bans WHERE until < ?", (before - keep_count_for,))
